//! Connecting to the daemon's Unix socket.

use std::path::{Path, PathBuf};

use defenseclaw_proto::v1::control_client::ControlClient;
use hyper_util::rt::TokioIo;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
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

async fn channel(socket: &Path) -> Result<Channel, Failure> {
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
    Ok(channel)
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
