//! The `syslog` sink: RFC 5424 messages over TCP with octet-counted framing
//! (RFC 6587). Structured data carries `seq`, `hash` and `host_id`; the MSG
//! is the exported JSON object.
//!
//! Plain TCP syslog has no acknowledgement: a write that succeeded only put
//! the bytes into socket buffers, and a receiver that stalls, or reads part of
//! them and resets the connection, has not taken them. So [`SyslogSink::send`]
//! only writes; what was written counts as delivered once
//! [`SyslogSink::confirm`] has closed the connection in order: our end of
//! stream after the data, then the receiver's end of stream back with no
//! reset, which a receiver such as rsyslog sends only after reading
//! everything before ours. Until then the runner keeps its cursor; after any
//! failure it resends from the cursor (receivers deduplicate by
//! `(host_id, seq)`). What this cannot see is a receiver that read the bytes
//! into its own memory and lost them there (RELP's application-level
//! acknowledgement would); nor a peer that closed on its own while our data
//! was still in flight and whose end of stream arrives before its reset.

use std::time::Duration;

use serde_json::Value;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to the receiver, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Stream for T {}

/// Structured-data id (the documentation enterprise number of RFC 5612).
pub const SD_ID: &str = "defenseclaw@32473";
/// Largest single message sent; a bigger record is cut to a stub with its chain fields.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A TCP syslog connection, opened on demand.
#[derive(Debug)]
pub struct SyslogSink {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    facility: u8,
    timeout: Duration,
    hostname: String,
    /// Open connection; what was written to it is not confirmed yet.
    conn: Option<Box<dyn Stream>>,
}

impl SyslogSink {
    /// A sink for `host:port`.
    pub fn new(
        host: String,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        facility: u8,
        timeout: Duration,
    ) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "-".to_owned());
        Self {
            host,
            port,
            tls,
            facility,
            timeout,
            hostname,
            conn: None,
        }
    }

    /// Writes `records` (entry objects or head records) as one write; they
    /// are delivered only once [`Self::confirm`] succeeds. Fails, without
    /// writing, when the open connection was closed by the receiver: what was
    /// written to it since the last confirmation may be lost.
    pub async fn send(&mut self, records: &[Value]) -> Result<(), String> {
        let mut buf = Vec::new();
        for r in records {
            let msg = self.message(r);
            buf.extend_from_slice(format!("{} ", msg.len()).as_bytes());
            buf.extend_from_slice(msg.as_bytes());
        }
        if let Some(conn) = self.conn.as_mut()
            && !alive(conn)
        {
            self.conn = None;
            return Err(format!(
                "{}:{} closed the connection; resending what it did not confirm",
                self.host, self.port
            ));
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        let write = async {
            conn.write_all(&buf).await?;
            conn.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(format!("writing to {}:{}: {e}", self.host, self.port))
            }
            Err(_) => {
                self.conn = None;
                Err(format!("writing to {}:{} timed out", self.host, self.port))
            }
        }
    }

    /// Confirms everything written since the connection opened by closing it
    /// in order: our end of stream (TLS close_notify first), then waiting for
    /// the receiver's. A reset, a receiver that had already closed, or no
    /// answer within the timeout is an error: nothing is confirmed.
    pub async fn confirm(&mut self) -> Result<(), String> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        if !alive(&mut conn) {
            return Err(format!(
                "{}:{} closed the connection before confirming what it was sent",
                self.host, self.port
            ));
        }
        let close = async {
            conn.shutdown().await?;
            let mut buf = [0u8; 512];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    // Receivers send nothing on this protocol; ignored.
                    Ok(_) => {}
                    // A TLS receiver's TCP end of stream without close_notify:
                    // still its answer to ours (a reset is an error instead).
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(self.timeout, close).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "{}:{} did not confirm what it was sent: {e}",
                self.host, self.port
            )),
            Err(_) => Err(format!(
                "{}:{} did not read what it was sent within {}s",
                self.host,
                self.port,
                self.timeout.as_secs()
            )),
        }
    }

    /// Opens a new connection (`&mut`: the sink is `Send`, not `Sync`).
    async fn connect(&mut self) -> Result<Box<dyn Stream>, String> {
        let (host, port) = (self.host.clone(), self.port);
        let tls = self.tls.clone();
        let connect = async move {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let Some(config) = tls else {
                return Ok::<Box<dyn Stream>, String>(Box::new(tcp));
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            Ok(Box::new(stream))
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("connecting to {}:{} timed out", self.host, self.port))?
    }

    /// One RFC 5424 message.
    fn message(&self, record: &Value) -> String {
        let is_head = record.get("type").and_then(Value::as_str) == Some("head");
        let severity = match record.get("severity").and_then(Value::as_str) {
            Some("CRITICAL") => 2,
            Some("HIGH") => 3,
            Some("MEDIUM") => 4,
            Some("LOW") => 5,
            _ => 6,
        };
        let pri = u32::from(self.facility) * 8 + severity;
        let ts = record
            .get("ts")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or("-");
        let seq = record.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let hash = record.get("hash").and_then(Value::as_str).unwrap_or("");
        let host_id = record.get("host_id").and_then(Value::as_str).unwrap_or("");
        let mut msg = record.to_string();
        if msg.len() > MAX_MESSAGE_BYTES {
            msg = serde_json::json!({
                "seq": seq,
                "hash": hash,
                "prev_hash": record.get("prev_hash"),
                "host_id": host_id,
                "truncated": true,
            })
            .to_string();
        }
        format!(
            "<{pri}>1 {ts} {} defenseclawd {} {} [{SD_ID} seq=\"{seq}\" hash=\"{}\" host_id=\"{}\"] {msg}",
            self.hostname,
            std::process::id(),
            if is_head { "head" } else { "audit" },
            sd_escape(hash),
            sd_escape(host_id),
        )
    }
}

/// Whether an open connection is still up: the receiver sends nothing on
/// this protocol, so readable EOF, data or an error means it is gone. (TLS
/// records such as session tickets are consumed by the TLS layer.)
fn alive(conn: &mut Box<dyn Stream>) -> bool {
    let mut probe = [0u8; 256];
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let read = conn.read(&mut probe);
    let mut read = std::pin::pin!(read);
    matches!(read.as_mut().poll(&mut cx), std::task::Poll::Pending)
}

/// Escapes `"`, `\` and `]` in an SD-PARAM value (RFC 5424 §6.3.3).
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_rfc5424_with_chain_fields_in_structured_data() {
        let sink = SyslogSink::new("h".into(), 1, None, 13, Duration::from_secs(1));
        let m = sink.message(&serde_json::json!({
            "seq": 7, "hash": "ab", "host_id": "h\"1", "ts": "2026-01-01T00:00:00.000000Z",
            "severity": "HIGH", "action": "block"
        }));
        assert!(m.starts_with("<107>1 2026-01-01T00:00:00.000000Z "), "{m}");
        assert!(m.contains(" defenseclawd "));
        assert!(m.contains("[defenseclaw@32473 seq=\"7\" hash=\"ab\" host_id=\"h\\\"1\"] {"));
        assert!(m.ends_with('}'));
    }
}
