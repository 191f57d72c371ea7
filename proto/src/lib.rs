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

/// Encoded `FileDescriptorSet` of every service, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("defenseclaw_descriptor");

/// Where the daemon's socket lives when nothing overrides it. Shared by the daemon
/// and the CLI so both agree without configuration.
pub mod paths {
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    /// Socket path of the system-wide daemon (the shipped systemd unit).
    pub const SYSTEM_SOCKET: &str = "/run/defenseclaw/defenseclawd.sock";
    /// File name of the socket inside its runtime directory.
    pub const SOCKET_NAME: &str = "defenseclawd.sock";

    /// The effective uid of this process, read without `unsafe`: `/proc/self` is
    /// owned by it.
    pub fn current_uid() -> Option<u32> {
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }

    /// The default socket: `$RUNTIME_DIRECTORY` (set by systemd), else
    /// `$XDG_RUNTIME_DIR/defenseclaw/`, else the system path for root, else a
    /// per-uid directory under the temp dir.
    pub fn default_socket_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
            // systemd may pass several directories separated by ':'; ours is the first.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            return PathBuf::from(first).join(SOCKET_NAME);
        }
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("defenseclaw").join(SOCKET_NAME);
        }
        match current_uid() {
            Some(0) => PathBuf::from(SYSTEM_SOCKET),
            Some(uid) => std::env::temp_dir()
                .join(format!("defenseclaw-{uid}"))
                .join(SOCKET_NAME),
            None => PathBuf::from(SYSTEM_SOCKET),
        }
    }
}
