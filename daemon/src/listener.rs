//! The Unix socket: adopt one passed by systemd, or bind our own safely.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be bound. Each message names the path and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The socket passed by systemd could not be adopted.
    #[error("{what}: {source}")]
    Systemd {
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The socket's directory could not be created.
    #[error("cannot create socket directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Someone other than root, the daemon or the service user could replace
    /// the socket or its directory.
    #[error("refusing to bind {}: {reason}", path.display())]
    Untrusted {
        /// The socket path.
        path: PathBuf,
        /// Which directory is unsafe, and why.
        reason: String,
    },
    /// A live daemon answers on the path.
    #[error("another daemon is already answering on {}; stop it first or choose another --socket", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Whether a socket file is in use could not be told.
    #[error("cannot tell whether {} is in use: {source}", path.display())]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file operation on the socket path failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`bind`, `inspect`, `remove stale socket`).
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket's mode could not be set.
    #[error("cannot set mode {mode:o} on {}: {source}", path.display())]
    Mode {
        /// The mode asked for.
        mode: u32,
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

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
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, BindError> {
    if let Some(std_listener) = activated_socket().map_err(|source| BindError::Systemd {
        what: "reading systemd sockets",
        source,
    })? {
        std_listener
            .set_nonblocking(true)
            .map_err(|source| BindError::Systemd {
                what: "systemd socket",
                source,
            })?;
        let local = std_listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| path.to_owned());
        let listener =
            UnixListener::from_std(std_listener).map_err(|source| BindError::Systemd {
                what: "systemd socket",
                source,
            })?;
        tracing::info!(socket = %local.display(), "using the socket passed by systemd");
        return Ok(BoundSocket {
            listener,
            path: local,
            owned: None,
        });
    }
    bind_path(path, mode)
}

/// Binds `path` with `mode` (never a systemd socket): the same checks as
/// [`bind`] — a trusted directory chain, no live listener, only a stale
/// socket replaced.
pub fn bind_path(path: &Path, mode: u32) -> Result<BoundSocket, BindError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|source| BindError::CreateDir {
                dir: parent.to_owned(),
                source,
            })?;
    }
    // Nobody but root, us or the service user may be able to replace the socket
    // (or its directory) clients trust: the same rule the CLI applies.
    defenseclaw_common::paths::check_socket_dir(path, &defenseclaw_common::paths::trusted_uids())
        .map_err(|e| BindError::Untrusted {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(BindError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing a stale socket nothing answers on");
                    std::fs::remove_file(path).map_err(|source| BindError::Io {
                        action: "remove stale socket",
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(BindError::Probe {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BindError::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Io {
        action: "bind",
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BindError::Mode {
            mode,
            path: path.to_owned(),
            source,
        }
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| BindError::Io {
        action: "inspect",
        path: path.to_owned(),
        source,
    })?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        owned: Some((meta.dev(), meta.ino())),
    })
}
