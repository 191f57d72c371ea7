//! The `/metrics` endpoint: a minimal HTTP/1.1 responder on a loopback TCP
//! address or a Unix socket. `GET /metrics` only; the request head is read
//! up to [`MAX_REQUEST_BYTES`] within [`IO_TIMEOUT`], every answer closes
//! the connection, and at most `[metrics] max_scrapers` are served at once
//! (a connection beyond them is closed at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::config::MetricsListen;
use crate::listener::{self, SocketCleanup};

/// The most a request head may take; a longer one is answered 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Reading the request and writing the answer each get this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound endpoint.
#[derive(Debug)]
pub enum Endpoint {
    /// Loopback TCP.
    Tcp(TcpListener),
    /// A Unix socket (bound with the control socket's checks and mode).
    Unix(UnixListener),
}

/// A bound endpoint and what the daemon keeps of it.
#[derive(Debug)]
pub struct Bound {
    /// The listener.
    pub endpoint: Endpoint,
    /// The TCP address bound (port 0 resolved), for tests and the log.
    pub tcp_addr: Option<std::net::SocketAddr>,
    /// The Unix socket's path, to protect and remove.
    pub unix_path: Option<std::path::PathBuf>,
    /// Removes the Unix socket at shutdown.
    pub cleanup: Option<SocketCleanup>,
}

/// Binds `[metrics] listen` (already checked to be loopback or a Unix path);
/// a Unix socket gets the control socket's checks and `mode`.
pub async fn bind(listen: &MetricsListen, mode: u32) -> Result<Bound, String> {
    match listen {
        MetricsListen::Tcp(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("[metrics] listen {addr}: {e}"))?;
            let tcp_addr = l.local_addr().ok();
            Ok(Bound {
                endpoint: Endpoint::Tcp(l),
                tcp_addr,
                unix_path: None,
                cleanup: None,
            })
        }
        MetricsListen::Unix(path) => {
            let bound = listener::bind_path(path, mode)
                .map_err(|e| format!("[metrics] listen unix:{}: {e}", path.display()))?;
            let cleanup = listener::BoundSocket::cleanup_token(&bound.path, bound.owned_id());
            Ok(Bound {
                unix_path: Some(bound.path.clone()),
                endpoint: Endpoint::Unix(bound.listener),
                tcp_addr: None,
                cleanup: Some(cleanup),
            })
        }
    }
}

/// Serves `metrics` on `endpoint` until `cancel`.
pub fn spawn(
    endpoint: Endpoint,
    metrics: Arc<Metrics>,
    max_scrapers: usize,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let permits = Arc::new(Semaphore::new(max_scrapers));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = accept(&endpoint) => a,
            };
            let conn = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Beyond the cap: dropped (closed) at once, nothing queued.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!("metrics endpoint: scrape refused, {max_scrapers} already served");
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match conn {
                    Conn::Tcp(s) => answer(s, &metrics).await,
                    Conn::Unix(s) => answer(s, &metrics).await,
                }
            });
        }
    })
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(endpoint: &Endpoint) -> std::io::Result<Conn> {
    Ok(match endpoint {
        Endpoint::Tcp(l) => Conn::Tcp(l.accept().await?.0),
        Endpoint::Unix(l) => Conn::Unix(l.accept().await?.0),
    })
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
    TooLarge,
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, metrics: &Metrics) {
    let ask = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(ask)) => ask,
        // Silent or broken: nothing to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    let (status, content_type, body) = match ask {
        Ask::Metrics => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        Ask::NotFound => ("404 Not Found", "text/plain", "only /metrics\n".into()),
        Ask::BadMethod => (
            "405 Method Not Allowed\r\nAllow: GET",
            "text/plain",
            "only GET\n".into(),
        ),
        Ask::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
        Ask::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, write).await {
        tracing::debug!(error = %e, "metrics endpoint: scraper too slow");
    }
}

/// Reads until the end of the request head (or the cap) and classifies it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Ask> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            return Ok(classify(buf.get(..end).unwrap_or_default()));
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Ok(Ask::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn classify(head: &[u8]) -> Ask {
    let Ok(head) = std::str::from_utf8(head) else {
        return Ask::Bad;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Bad;
    }
    if method != "GET" {
        return Ask::BadMethod;
    }
    // Prometheus sends no query; one is ignored rather than refused.
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Ask::Metrics
    } else {
        Ask::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(classify(b"GET /metrics HTTP/1.1\r\nHost: x"), Ask::Metrics);
        assert_eq!(classify(b"GET /metrics?x=1 HTTP/1.0"), Ask::Metrics);
        assert_eq!(classify(b"POST /metrics HTTP/1.1"), Ask::BadMethod);
        assert_eq!(classify(b"HEAD /metrics HTTP/1.1"), Ask::BadMethod);
        assert_eq!(classify(b"GET / HTTP/1.1"), Ask::NotFound);
        assert_eq!(classify(b"GET /metrics/../x HTTP/1.1"), Ask::NotFound);
        assert_eq!(classify(b"GET /metrics"), Ask::Bad);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Ask::Bad);
        assert_eq!(classify(&[0xff, 0xfe]), Ask::Bad);
    }
}
