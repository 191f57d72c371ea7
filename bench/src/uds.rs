//! Dialling a Unix socket with tonic, through the connector `defenseclawctl` uses.

use std::path::Path;

use anyhow::Context;
use tonic::transport::Channel;

/// One HTTP/2 connection to the socket at `path`.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    defenseclaw_common::uds::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))
}

/// `n` separate connections to the socket at `path`.
pub async fn channels(path: &Path, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(channel(path).await?);
    }
    Ok(out)
}
