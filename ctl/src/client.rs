//! Connecting to the daemon's Unix socket.

use std::path::{Path, PathBuf};

use defenseclaw_proto::v1::control_client::ControlClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::exit::{Failure, UNREACHABLE};

/// The socket to use: `--socket`/`DEFENSECLAW_SOCKET`, else the per-user
/// default, else the system daemon's socket when only that one exists.
pub fn resolve_socket(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let default = defenseclaw_proto::paths::default_socket_path();
    let system = Path::new(defenseclaw_proto::paths::SYSTEM_SOCKET);
    if !default.exists() && system.exists() {
        return system.to_owned();
    }
    default
}

/// Connects, or explains how to start the daemon.
pub async fn connect(socket: &Path) -> Result<ControlClient<Channel>, Failure> {
    let path = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://defenseclawd.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| unreachable(socket, &e))?;
    Ok(ControlClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn unreachable(socket: &Path, err: &dyn std::error::Error) -> Failure {
    let mut cause = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
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
