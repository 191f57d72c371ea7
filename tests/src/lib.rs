//! Shared test support: gRPC clients over Unix sockets, waiting helpers, and
//! (in submodules) the test daemon builder, request builders, the real
//! protocol peers the integration tests run against and an OTLP/HTTP receiver.

pub mod daemon;
pub mod faulty;
pub mod idp;
pub mod impostor;
pub mod openclaw;
pub mod otlp;
pub mod python;
pub mod requests;
pub mod rsyslog;

use std::path::{Path, PathBuf};
use std::time::Duration;

use defenseclaw_proto::v1::control_client::ControlClient;
use tonic::transport::{Channel, Endpoint};

/// Connects a gRPC channel to a Unix socket (the shared connector).
pub async fn uds_channel(path: &Path) -> anyhow::Result<Channel> {
    uds_channel_with(path, |endpoint| endpoint).await
}

/// Connects a gRPC channel to a Unix socket with `configure`d endpoint
/// settings (flow-control windows, timeouts).
pub async fn uds_channel_with(
    path: &Path,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> anyhow::Result<Channel> {
    let endpoint = configure(defenseclaw_common::uds::endpoint());
    Ok(defenseclaw_common::uds::connect_with(endpoint, path, |_| Ok(())).await?)
}

/// A control-plane client on `path`.
pub async fn control_client(path: &Path) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(uds_channel(path).await?))
}

/// Polls `probe` until it returns `Some`, or fails after `deadline` with `what`
/// in the message. For readiness, never for asserting speed.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workspace root (for locating test peers and fixtures).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
