//! Generates the Rust protobuf messages and grpcio clients/servers from `proto/`, without `protoc`.
//!
//! `protobuf-codegen-pure` 2.28 silently drops `service` blocks, so the files are parsed with the
//! rust-protobuf 3 pure parser, each descriptor is re-encoded and decoded as a protobuf 2.28
//! `FileDescriptorProto`, and the 2.28 code generators (messages and grpcio services) run on those.

use std::path::{Path, PathBuf};
use std::{env, fs};

use protobuf::Message as _;
use protobuf3::Message as _;

/// The `.proto` files we generate code for, relative to `proto/`.
const PROTO_FILES: &[&str] = &[
    "openmatch/messages.proto",
    "openmatch/backend.proto",
    "allocation/allocation.proto",
];

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto");

    let descriptors = parse_descriptors(Path::new("proto"));
    let files: Vec<String> = PROTO_FILES.iter().map(|f| f.to_string()).collect();

    let customize = protobuf_codegen::Customize::default();
    let mut generated = protobuf_codegen::gen(&descriptors, &files, &customize);
    generated.extend(grpcio_compiler::codegen::gen(&descriptors, &files));

    let mut mod_rs = String::new();
    for result in &generated {
        fs::write(out_dir.join(&result.name), &result.content).expect("write generated file");
        let module = result.name.trim_end_matches(".rs");
        // `#[path]` rather than `include!`: generated files start with inner attributes.
        let path = out_dir.join(&result.name);
        mod_rs.push_str(&format!("#[path = {path:?}]\npub mod {module};\n"));
    }
    fs::write(out_dir.join("mod.rs"), mod_rs).expect("write mod.rs");
}

/// Parses and type-checks `PROTO_FILES` (and their imports) into protobuf 2.28 descriptors.
fn parse_descriptors(include: &Path) -> Vec<protobuf::descriptor::FileDescriptorProto> {
    let inputs: Vec<PathBuf> = PROTO_FILES.iter().map(|f| include.join(f)).collect();
    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(include)
        .inputs(&inputs)
        .parse_and_typecheck()
        .expect("parse proto files");
    parsed
        .file_descriptors
        .iter()
        .map(|v3| {
            let bytes = v3.write_to_bytes().expect("encode v3 descriptor");
            protobuf::descriptor::FileDescriptorProto::parse_from_bytes(&bytes)
                .expect("decode descriptor as protobuf 2.28")
        })
        .collect()
}
