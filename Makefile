# agones-openmatch-director — build, test and lint.
# Everything builds in the release profile: the gRPC C core (grpcio-sys) takes ~10 minutes per
# profile, so tests and the binary share one build. Set CARGO_TARGET_DIR to keep builds elsewhere.

CARGO ?= cargo

.PHONY: all build test lint fmt clean

all: build

## build: the director binary (target/release/director)
build:
	$(CARGO) build --release --locked --bin director

## test: unit tests and end-to-end tests against the in-process doubles
test:
	$(CARGO) test --release --locked

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

## fmt: format the code
fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
