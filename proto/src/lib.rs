//! Wire types for the defenseclawd control plane. Generated code, its codec,
//! and the descriptor set for server reflection.

pub use tonic;

pub mod codec;

/// `defenseclaw.v1`: the control service.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("defenseclaw.v1");
}

/// `defenseclaw.bench.v1`: the bare echo service used as the benchmark baseline.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod bench {
    tonic::include_proto!("defenseclaw.bench.v1");
}

// `delegate_control!`: the `Control` dispatch, generated from the proto by build.rs.
include!(concat!(env!("OUT_DIR"), "/control_delegate.rs"));

/// Encoded `FileDescriptorSet` of every service, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("defenseclaw_descriptor");
