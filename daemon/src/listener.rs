//! The Unix socket: adopt one passed by systemd, or bind our own safely.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// A listening socket and what to clean up after it.
#[derive(Debug)]
pub struct BoundSocket {
    /// The bound listener the server accepts on.
    pub listener: UnixListener,
    /// Path clients connect to.
    pub path: PathBuf,
    /// (dev, inode) of a socket file we created and must remove at exit.
    owned: Option<(u64, u64)>,
}

impl BoundSocket {
    /// (dev, inode) of the socket file we created, if any.
    pub fn owned_id(&self) -> Option<(u64, u64)> {
        self.owned
    }

    /// What removes the socket file at exit, detached from the listener.
    pub fn cleanup_token(path: &Path, owned: Option<(u64, u64)>) -> SocketCleanup {
        SocketCleanup {
            path: path.to_owned(),
            owned,
        }
    }
}

/// Removes our socket file at exit, but only if it is still the one we created.
#[derive(Debug)]
pub struct SocketCleanup {
    path: PathBuf,
    owned: Option<(u64, u64)>,
}

impl SocketCleanup {
    /// Removes the file if it is still ours.
    pub fn run(&self) {
        let Some((dev, ino)) = self.owned else { return };
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == dev
            && meta.ino() == ino
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket");
        }
    }
}

/// Takes the socket systemd passed (socket activation), if any.
#[allow(unsafe_code)]
fn activated_socket() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    use std::os::fd::FromRawFd;
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    // SAFETY: systemd hands fds starting at 3 to the process named by LISTEN_PID
    // (checked by `listen_fds`); nothing else in this process owns fd 3, and it
    // is adopted exactly once, here.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    Ok(Some(listener))
}

/// Adopts a systemd socket or binds `path` with `mode`. Refuses when a live
/// daemon answers on `path` or when `path` is something other than a socket;
/// removes a stale socket that nothing answers on.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, String> {
    if let Some(std_listener) =
        activated_socket().map_err(|e| format!("reading systemd sockets: {e}"))?
    {
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("systemd socket: {e}"))?;
        let local = std_listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| path.to_owned());
        let listener =
            UnixListener::from_std(std_listener).map_err(|e| format!("systemd socket: {e}"))?;
        tracing::info!(socket = %local.display(), "using the socket passed by systemd");
        return Ok(BoundSocket {
            listener,
            path: local,
            owned: None,
        });
    }

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| format!("cannot create socket directory {}: {e}", parent.display()))?;
    }
    // Nobody but root, us or the service user may be able to replace the socket
    // (or its directory) clients trust: the same rule the CLI applies.
    defenseclaw_proto::paths::check_socket_dir(path, &defenseclaw_proto::paths::trusted_uids())
        .map_err(|e| format!("refusing to bind {}: {e}", path.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "another daemon is already answering on {}; stop it first or choose another --socket",
                        path.display()
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing a stale socket nothing answers on");
                    std::fs::remove_file(path).map_err(|e| {
                        format!("cannot remove stale socket {}: {e}", path.display())
                    })?;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot tell whether {} is in use: {e}",
                        path.display()
                    ));
                }
            }
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        owned: Some((meta.dev(), meta.ino())),
    })
}
