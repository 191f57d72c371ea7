//! Generates the gRPC code. protoc comes from `protoc-bin-vendored` (or `$PROTOC`),
//! so a fresh machine needs no system package.
//!
//! Besides tonic's code it writes `delegate_control!`, the `Control` trait
//! implementation that forwards each RPC to the adapter function of the same
//! name. It is read from the descriptor set, so adding an RPC touches the proto,
//! one adapter and the governance call behind it, never a dispatch table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_types::FileDescriptorSet;

const PROTO_FILES: &[&str] = &[
    "proto/defenseclaw/v1/control.proto",
    "proto/defenseclaw/bench/v1/echo.proto",
];

/// The service whose dispatch is generated, and the package its types live in.
const DELEGATED_PACKAGE: &str = "defenseclaw.v1";
const DELEGATED_SERVICE: &str = "Control";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()
            .map_err(|e| format!("no vendored protoc for this platform (set PROTOC): {e}"))?,
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("defenseclaw_descriptor.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, PROTO_FILES, &["proto"])
        .map_err(|e| format!("compiling {PROTO_FILES:?}: {e}"))?;
    write_delegation(&descriptor_path, &out_dir.join("control_delegate.rs"))?;
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}

/// Writes the `delegate_control!` macro for [`DELEGATED_SERVICE`].
fn write_delegation(descriptor_path: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let set = FileDescriptorSet::decode(std::fs::read(descriptor_path)?.as_slice())?;
    let service = set
        .file
        .iter()
        .filter(|file| file.package() == DELEGATED_PACKAGE)
        .flat_map(|file| file.service.iter())
        .find(|service| service.name() == DELEGATED_SERVICE)
        .ok_or_else(|| {
            format!("service {DELEGATED_PACKAGE}.{DELEGATED_SERVICE} not in the descriptor set")
        })?;

    let mut methods = String::new();
    for method in &service.method {
        if method.client_streaming() {
            return Err(format!(
                "{}: client streaming has no generated dispatch",
                method.name()
            )
            .into());
        }
        let rpc = snake_case(method.name());
        let input = rust_type(method.input_type())?;
        let output = rust_type(method.output_type())?;
        let reply = if method.server_streaming() {
            let stream = format!("{}Stream", method.name());
            writeln!(methods, "            type {stream} = $stream<{output}>;")?;
            format!("Self::{stream}")
        } else {
            output
        };
        writeln!(
            methods,
            "            async fn {rpc}(&self, request: $crate::tonic::Request<{input}>) \
             -> ::std::result::Result<$crate::tonic::Response<{reply}>, $crate::tonic::Status> {{\n                \
             $adapters::{rpc}(self, request).await\n            }}"
        )?;
    }

    let code = format!(
        "/// Implements `v1::control_server::Control` for `$service` by forwarding each RPC to\n\
         /// `$adapters::<rpc name>(&service, request)`, an `async fn` returning the RPC's\n\
         /// result; server streams are `$stream<Item>`. Generated from the proto, so a\n\
         /// missing adapter is a compile error naming it.\n\
         #[macro_export]\n\
         macro_rules! delegate_control {{\n    \
             ($service:ty, $stream:ident, $adapters:ident) => {{\n        \
                 #[$crate::tonic::async_trait]\n        \
                 impl $crate::v1::control_server::Control for $service {{\n\
         {methods}        }}\n    \
             }};\n\
         }}\n"
    );
    std::fs::write(out, code)?;
    Ok(())
}

/// `.defenseclaw.v1.StatusReply` → `$crate::v1::StatusReply`.
fn rust_type(proto_type: &str) -> Result<String, String> {
    let prefix = format!(".{DELEGATED_PACKAGE}.");
    match proto_type.strip_prefix(&prefix) {
        Some(name) if !name.contains('.') => Ok(format!("$crate::v1::{name}")),
        _ => Err(format!(
            "{proto_type}: RPC types must be top-level messages of {DELEGATED_PACKAGE}"
        )),
    }
}

/// `ListOpenClawApprovals` → `list_open_claw_approvals`, as tonic names trait methods.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
