//! Connecting to the daemon's Unix socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use defenseclaw_common::{paths, uds};
use defenseclaw_proto::v1::control_client::ControlClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::exit::{Failure, PERMISSION_DENIED, UNREACHABLE};

/// The socket to use: `--socket`/`DEFENSECLAW_SOCKET`, else the per-user
/// default, else the system daemon's socket when only that one exists.
pub fn resolve_socket(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let default = paths::default_socket_path();
    let system = Path::new(paths::SYSTEM_SOCKET);
    if !default.exists() && system.exists() {
        return system.to_owned();
    }
    default
}

/// Adds `authorization: Bearer …` to every call when a token is known.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(***)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// From a token (`None`: send nothing).
    pub fn new(token: Option<&str>) -> Result<Self, Failure> {
        match token {
            None => Ok(Self(None)),
            Some(t) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {t}").parse().map_err(|_| {
                        Failure::new(
                            crate::exit::USAGE,
                            "the bearer token contains invalid characters",
                        )
                    })?;
                value.set_sensitive(true);
                Ok(Self(Some(value)))
            }
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The client type every command uses.
pub type Client = ControlClient<InterceptedService<Channel, Bearer>>;

/// Connects with a bearer token, or explains how to start the daemon.
pub async fn connect_with(socket: &Path, bearer: Bearer) -> Result<Client, Failure> {
    let channel = channel(socket).await?;
    Ok(
        ControlClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// Connects, or explains how to start the daemon.
pub async fn connect(socket: &Path) -> Result<ControlClient<Channel>, Failure> {
    Ok(ControlClient::new(channel(socket).await?).max_decoding_message_size(64 * 1024 * 1024))
}

/// Connects only to a daemon it can trust: the socket's directory chain passes
/// [`paths::check_socket_dir`], and the process listening on it (its peer
/// credentials) is root, the caller or the daemon's service user. Both checks
/// run before any request, so no token, and no login issuer taken from the
/// reply, is ever exchanged with another user's listener. Every (re)connect
/// goes through the connector, so nothing skips the peer check.
async fn channel(socket: &Path) -> Result<Channel, Failure> {
    let trusted = paths::trusted_uids();
    match paths::check_socket_dir(socket, &trusted) {
        Ok(()) => {}
        Err(paths::CheckError::Unsafe(bad)) => {
            return Err(Failure::new(
                PERMISSION_DENIED,
                format!(
                    "refusing to use the socket {}: its directory {bad}; another user could impersonate defenseclawd there (set {} if the daemon runs as another service user)",
                    socket.display(),
                    paths::DAEMON_UID_ENV,
                ),
            ));
        }
        // A missing directory is a daemon that is not running: say so below.
        Err(paths::CheckError::Io(..)) => {}
    }
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let refusal = refused.clone();
    let path = socket.to_owned();
    // The peer check is CLI policy; the connector runs it on every (re)connect.
    let admit = move |stream: &tokio::net::UnixStream| {
        let server = stream.peer_cred()?.uid();
        if trusted.contains(&server) {
            return Ok(());
        }
        let message = format!(
            "refusing to talk to {}: it is served by {}, not by root, you or the daemon's service user (set {} if the daemon runs as another user); another user may be impersonating defenseclawd",
            path.display(),
            paths::describe_uid(server),
            paths::DAEMON_UID_ENV,
        );
        *refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            message,
        ))
    };
    let connected = uds::connect_with(uds::endpoint(), socket, admit).await;
    connected.map_err(|e| {
        match refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(message) => Failure::new(PERMISSION_DENIED, message),
            None => unreachable(socket, &e),
        }
    })
}

/// The socket exists but this user may not connect: say whose it is and what
/// would let them in, instead of suggesting the daemon is down.
fn socket_permission_denied(socket: &Path) -> Failure {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = match std::fs::metadata(socket) {
        Ok(meta) => format!(
            "it is owned by {} and group {} with mode {:04o}",
            paths::describe_uid(meta.uid()),
            meta.gid(),
            meta.permissions().mode() & 0o7777
        ),
        Err(e) => format!("it cannot be inspected ({e})"),
    };
    Failure::new(
        PERMISSION_DENIED,
        format!(
            "permission denied on the socket {}: {owner}. Run as the daemon's user, join the \
             socket's group (the packaged daemon uses group `defenseclaw`), or point --socket / \
             DEFENSECLAW_SOCKET at a socket you may use.",
            socket.display()
        ),
    )
}

fn unreachable(socket: &Path, err: &(dyn std::error::Error + 'static)) -> Failure {
    let mut cause = err.to_string();
    let mut denied = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        cause = s.to_string();
        denied |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
        source = s.source();
    }
    if denied {
        return socket_permission_denied(socket);
    }
    Failure::new(
        UNREACHABLE,
        format!(
            "cannot reach defenseclawd at {} ({cause}).\n\
             Is it running? Start it with `defenseclawd` (or `systemctl start defenseclawd`), \
             or point --socket / DEFENSECLAW_SOCKET at its socket.",
            socket.display()
        ),
    )
}
