//! A tonic channel over the daemon's Unix socket: the one connector the CLI, the
//! testkit and the benchmarks dial with, so they all talk to the daemon the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The URI tonic requires. It is never resolved: the connector dials the socket.
pub const PLACEHOLDER_URI: &str = "http://defenseclawd.local";

/// An endpoint for [`connect_with`], to adjust (timeouts, flow-control windows)
/// before connecting.
pub fn endpoint() -> Endpoint {
    Endpoint::from_static(PLACEHOLDER_URI)
}

/// One HTTP/2 connection to the socket at `path`, with default settings.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    connect_with(endpoint(), path, |_| Ok(())).await
}

/// One HTTP/2 connection to the socket at `path` through `endpoint`'s settings.
///
/// `admit` sees every stream the connector opens (the first and each reconnect)
/// before any byte is sent, and may refuse it, e.g. after checking the peer's
/// credentials; its error is the connection's error.
pub async fn connect_with<F>(
    endpoint: Endpoint,
    path: &Path,
    admit: F,
) -> Result<Channel, tonic::transport::Error>
where
    F: Fn(&UnixStream) -> std::io::Result<()> + Send + Sync + 'static,
{
    let path: Arc<PathBuf> = Arc::new(path.to_owned());
    let admit = Arc::new(admit);
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            let admit = admit.clone();
            async move {
                let stream = UnixStream::connect(path.as_path()).await?;
                admit(&stream)?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(connect(&tmp.path().join("absent.sock")).await.is_err());
    }

    #[tokio::test]
    async fn admit_sees_the_stream_and_can_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let refused = connect_with(endpoint(), &path, |stream| {
            assert!(stream.peer_cred().is_ok());
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not this one",
            ))
        })
        .await;
        let err = refused.unwrap_err();
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(chain.contains("not this one"), "{chain}");
        accept.await.unwrap().unwrap();
    }
}
