# agones-openmatch-director — build, test, ship.
# Everything builds in the release profile: the gRPC C core (grpcio-sys) takes ~10 minutes per
# profile and target, so tests and the binary share one build. Set CARGO_TARGET_DIR to keep builds
# outside the checkout.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

# The gRPC C core needs cmake and a C++ compiler. A machine without cmake gets the cmake wheel from
# PyPI in .tools/ (git-ignored, no root needed); its bin directory comes first on every recipe's PATH.
TOOLS_DIR := $(CURDIR)/.tools
CMAKE_VERSION := 3.31.10
export PATH := $(TOOLS_DIR)/cmake/cmake/data/bin:$(PATH)

# Static binary: x86_64 musl, built by zig's clang (C, C++, musl and libc++ in one PyPI wheel),
# because Debian has no musl C++ toolchain for the gRPC C core. Versions verified together:
MUSL_TARGET := x86_64-unknown-linux-musl
CARGO_ZIGBUILD_VERSION := 0.24.1
ZIGLANG_VERSION := 0.14.1
STATIC_BIN := $(TARGET_DIR)/$(MUSL_TARGET)/dist/director
# -D_LARGEFILE64_SOURCE: abseil (gRPC 1.56) uses off64_t, which musl >= 1.2.4 only declares with it.
export CFLAGS_x86_64_unknown_linux_musl := -D_LARGEFILE64_SOURCE
# -Wno-missing-template-arg-list-after-template-kw: clang >= 19 rejects a construct in gRPC 1.56.
export CXXFLAGS_x86_64_unknown_linux_musl := -D_LARGEFILE64_SOURCE -Wno-missing-template-arg-list-after-template-kw

# Image: $(REGISTRY)/$(IMAGE):$(TAG), REGISTRY optional.
REGISTRY ?=
IMAGE ?= agones-openmatch-director
TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_REF := $(if $(REGISTRY),$(REGISTRY)/)$(IMAGE):$(TAG)

.PHONY: all tools build test fuzz lint fmt demo bench soak deps check-static-deps static image push deploy image-test validate clean

all: build

## tools: check for what compiling the gRPC C core needs; fetch cmake into .tools/ if missing
tools:
	@command -v c++ >/dev/null || { echo "make: no C++ compiler (c++) for the gRPC C core; install one, e.g. 'apt-get install g++'" >&2; exit 1; }
	@command -v cmake >/dev/null || { \
		echo "make: cmake not found; installing the cmake $(CMAKE_VERSION) wheel from PyPI into .tools/"; \
		python3 -m pip install --quiet --disable-pip-version-check --target $(TOOLS_DIR)/cmake cmake==$(CMAKE_VERSION) || \
		{ echo "make: could not install cmake with 'python3 -m pip'; install it, e.g. 'apt-get install cmake'" >&2; exit 1; }; }

## build: the director binary for this machine ($(TARGET_DIR)/release/director)
build: tools
	$(CARGO) build --release --locked --bin director

## test: unit tests and end-to-end tests against the in-process doubles
test: tools
	$(CARGO) test --release --locked

## fuzz: the property tests of every parser of outside input, with many more cases than `make test`
FUZZ_CASES ?= 20000
fuzz: tools
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked --lib fuzz::

## lint: formatting and clippy (the simulator included), warnings are errors
lint: tools
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets --all-features -- -D warnings

# The simulator is a separate binary (feature "sim"), never part of `director`.
SIM := $(TARGET_DIR)/release/sim
DEMO_ARGS ?=
BENCH_ARGS ?=

## demo: the Director end to end on this machine against a simulated Open Match and Agones
##       (Ctrl-C to stop; e.g. make demo DEMO_ARGS="--duration 30 --fleet 5 --error-rate 0.1")
demo: tools
	$(CARGO) build --release --locked --features sim --bin sim --bin director
	$(SIM) demo $(DEMO_ARGS)

## bench: the benchmark scenarios; a Markdown table, and target/bench/results.json
bench: tools
	$(CARGO) build --release --locked --features sim --bin sim --bin director
	$(SIM) bench $(BENCH_ARGS)

## soak: the shipped static binary (built by `make static`) for SOAK_MINUTES (default 10) under
##       random faults, then SIGTERM; fails on a lost or doubly assigned match, RSS growth over 10 %,
##       a slow probe or a late exit. SOAK_DIRECTOR soaks another build, e.g. this machine's:
##       make soak SOAK_DIRECTOR=$(TARGET_DIR)/release/director
SOAK_MINUTES ?= 10
SOAK_DIRECTOR ?= dist/director
soak: tools
	$(if $(filter dist/director,$(SOAK_DIRECTOR)),$(MAKE) static)
	$(CARGO) build --release --locked --features sim --bin sim --bin director
	$(SIM) soak --minutes $(SOAK_MINUTES) --director $(abspath $(SOAK_DIRECTOR))

## fmt: format the code
fmt:
	$(CARGO) fmt

## deps: install what `make static` needs (Debian packages, the Rust musl target, zig via PyPI)
deps:
	command -v file >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq file; }
	rustup target add $(MUSL_TARGET)
	python3 -m pip install --quiet cargo-zigbuild==$(CARGO_ZIGBUILD_VERSION) ziglang==$(ZIGLANG_VERSION)
	if command -v pyenv >/dev/null; then pyenv rehash; fi

## check-static-deps: name whatever `make static` would miss, and stop
check-static-deps:
	@missing=""; \
	command -v file >/dev/null || missing="$$missing file"; \
	rustup target list --installed | grep -qx $(MUSL_TARGET) || missing="$$missing rust-target:$(MUSL_TARGET)"; \
	command -v cargo-zigbuild >/dev/null || missing="$$missing cargo-zigbuild==$(CARGO_ZIGBUILD_VERSION)"; \
	python3 -m ziglang version >/dev/null 2>&1 || missing="$$missing ziglang==$(ZIGLANG_VERSION)"; \
	if [ -n "$$missing" ]; then echo "make static needs:$$missing — run 'make deps' to install them" >&2; exit 1; fi

## static: the fully static, stripped musl binary, copied to dist/director
static: tools check-static-deps
	$(CARGO) zigbuild --profile dist --locked --target $(MUSL_TARGET) --bin director
	mkdir -p dist
	cp $(STATIC_BIN) dist/director
	file dist/director | grep -q 'statically linked' || { file dist/director; echo "dist/director is not static" >&2; exit 1; }
	@echo "dist/director: $$(du -k dist/director | cut -f1) KiB, static, stripped"

## image: the FROM-scratch image $(IMAGE_REF)
image: static
	docker build -f Dockerfile.scratch --build-arg VERSION=$(TAG) -t $(IMAGE_REF) .

## push: push $(IMAGE_REF)
push:
	docker push $(IMAGE_REF)

## deploy: apply director.yaml with the image set to $(IMAGE_REF)
deploy:
	sed 's|image: agones-openmatch-director:latest|image: $(IMAGE_REF)|' director.yaml | kubectl apply -f -

## image-test: run the image end to end against the in-process doubles (needs Docker)
image-test: tools
	DIRECTOR_IMAGE=$(IMAGE_REF) $(CARGO) test --release --locked --test e2e image:: -- --ignored --test-threads 1

## validate: director.yaml against the Kubernetes schemas (strict), Dockerfile.scratch with hadolint
validate:
	kubernetes-validate --strict director.yaml
	hadolint Dockerfile.scratch

clean:
	$(CARGO) clean
	rm -rf dist
