//! Generates the gRPC code. protoc comes from `protoc-bin-vendored` (or `$PROTOC`),
//! so a fresh machine needs no system package.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "proto/defenseclaw/v1/control.proto",
    "proto/defenseclaw/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()
            .map_err(|e| format!("no vendored protoc for this platform (set PROTOC): {e}"))?,
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(out_dir.join("defenseclaw_descriptor.bin"))
        .compile_with_config(config, PROTO_FILES, &["proto"])
        .map_err(|e| format!("compiling {PROTO_FILES:?}: {e}"))?;
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
