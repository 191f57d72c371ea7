//! Dialling a Unix socket with tonic, the same way `defenseclawctl` does.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// One HTTP/2 connection to the socket at `path`.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://defenseclaw-bench.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .with_context(|| format!("connecting to {shown}"))
}

/// `n` separate connections to the socket at `path`.
pub async fn channels(path: &Path, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(path).await?);
    }
    Ok(out)
}
