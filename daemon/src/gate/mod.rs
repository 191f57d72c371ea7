//! The gate socket: the adapter the OpenClaw gate plugin asks before every
//! tool call. Decode, check the peer, one governance call
//! ([`Governance::decide_tool_call`]), encode.
//!
//! Wire: newline-delimited JSON on a Unix socket beside the control socket
//! (`gate.sock`), one persistent connection per gateway process, requests
//! answered out of order by `id`:
//!
//! ```text
//! → {"id":7,"op":"decide","plugin_version":"0.1.0","call":{"tool":"exec","params":{"command":"ls"},
//!     "agentId":"main","sessionKey":"agent:main:main","sessionId":"…","runId":"…","toolCallId":"call_1",
//!     "mcp":{"server":"github","tool":"create_issue"}}}
//! ← {"id":7,"ok":true,"decision":"allow"|"deny"|"ask","reason":"…","rule":"…",
//!     "code":"DC-…","title":"…","description":"…","timeout_ms":315000}
//! → {"id":8,"op":"ping"}            ← {"id":8,"ok":true,"pong":true}
//! ← {"id":null|<id>,"ok":false,"error":"…"}   (malformed frame, busy, refused peer)
//! ```
//!
//! Bounds: peers whose uid is not allowed get one error line and are closed;
//! at most `gate_max_connections` connections (one more gets an error line);
//! at most `gate_max_in_flight` undecided requests per connection (more are
//! answered `busy` at once); a line longer than `gate_max_frame_bytes` is
//! answered with an error and the connection closed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::NewEntry;
use crate::audit_coalesce::{key, peer_uid};
use crate::governance::Governance;
use crate::governance::gate_calls::{GateAnswer, GatePeer};
use crate::governance::tool_gate::ToolCall;
use crate::model::Actor;
use crate::openclaw::OpenClawSettings;

/// File name of the gate socket beside the control socket.
pub const GATE_SOCKET_NAME: &str = "gate.sock";
/// How long a refusal line may take to write.
const REFUSE_WRITE: Duration = Duration::from_secs(1);

/// The gate socket's path: `[openclaw] gate_socket`, else `gate.sock` in the
/// control socket's directory.
pub fn socket_path(settings: &OpenClawSettings, control_socket: &Path) -> PathBuf {
    settings.gate_socket.clone().unwrap_or_else(|| {
        control_socket.parent().map_or_else(
            || PathBuf::from(GATE_SOCKET_NAME),
            |d| d.join(GATE_SOCKET_NAME),
        )
    })
}

/// The bounds of the gate socket.
#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Undecided requests per connection.
    pub max_in_flight: usize,
    /// Longest request line.
    pub max_frame_bytes: usize,
    /// Uids allowed to connect (root, the daemon, the gateway's user).
    pub allowed_uids: Vec<u32>,
}

impl GateLimits {
    /// From `[openclaw]`: root, the daemon's own uid and `gateway_uid` may connect.
    pub fn from_settings(s: &OpenClawSettings) -> Self {
        let mut allowed_uids = vec![0];
        allowed_uids.extend(defenseclaw_common::paths::current_uid());
        allowed_uids.extend(s.gateway_uid);
        allowed_uids.sort_unstable();
        allowed_uids.dedup();
        Self {
            max_connections: s.gate_max_connections.max(1),
            max_in_flight: s.gate_max_in_flight.max(1),
            max_frame_bytes: s.gate_max_frame_bytes.max(1024),
            allowed_uids,
        }
    }
}

/// Serves the gate socket until `cancel`.
pub fn spawn(
    listener: UnixListener,
    gov: Governance,
    limits: GateLimits,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(listener, gov, Arc::new(limits), cancel))
}

async fn accept_loop(
    listener: UnixListener,
    gov: Governance,
    limits: Arc<GateLimits>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "gate socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = stream.peer_cred().ok();
        let uid = cred.as_ref().map(|c| c.uid());
        let pid = cred
            .as_ref()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        if !uid.is_some_and(|u| limits.allowed_uids.contains(&u)) {
            let why = format!(
                "peer {} may not use the DefenseClaw gate socket",
                uid.map_or_else(|| "of unknown uid".to_owned(), |u| format!("uid {u}"))
            );
            audit_refused(&gov, uid, pid, &why).await;
            tokio::spawn(refuse(stream, why));
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let why = format!(
                "too many gate connections ([openclaw] gate_max_connections = {})",
                limits.max_connections
            );
            audit_refused(&gov, uid, pid, &why).await;
            tokio::spawn(refuse(stream, why));
            continue;
        };
        let gov = gov.clone();
        let limits = limits.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            connection(
                stream,
                gov,
                limits,
                GatePeer {
                    uid,
                    pid,
                    plugin_version: None,
                },
                cancel,
            )
            .await;
            drop(slot);
        });
    }
}

async fn audit_refused(gov: &Governance, uid: Option<u32>, pid: Option<u32>, why: &str) {
    let entry = NewEntry {
        action: "gate-refused".into(),
        target: None,
        severity: None,
        outcome: "refused".into(),
        reason: why.to_owned(),
        details: json!({"peer_uid": uid, "peer_pid": pid}),
        actor: Actor {
            id: uid.map_or_else(|| "uid:unknown".to_owned(), |u| format!("uid:{u}")),
            name: "gate-peer".into(),
            auth_method: "local".into(),
            uid,
            gid: None,
            pid,
            email: None,
            issuer: None,
            client_id: None,
        },
    };
    gov.audit_refusal(key(&["gate-refused", &peer_uid(uid), why]), entry)
        .await;
}

async fn refuse(mut stream: UnixStream, why: String) {
    let line = error_line(&Value::Null, &why);
    let _ = tokio::time::timeout(REFUSE_WRITE, async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Closing with unread input resets the connection, which can discard
        // the refusal before the peer reads it: take what it sent (bounded).
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn error_line(id: &Value, error: &str) -> String {
    let mut s = json!({"id": id, "ok": false, "error": error}).to_string();
    s.push('\n');
    s
}

fn answer_line(id: &Value, a: &GateAnswer) -> String {
    let mut v =
        json!({"id": id, "ok": true, "decision": a.decision, "reason": a.reason, "rule": a.rule});
    if let (Some(ask), Value::Object(m)) = (&a.ask, &mut v) {
        m.insert("code".into(), json!(ask.code));
        m.insert("title".into(), json!(ask.title));
        m.insert("description".into(), json!(ask.description));
        m.insert("timeout_ms".into(), json!(ask.timeout_ms));
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

enum Frame {
    Line,
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line into `buf`, never holding more than `max` bytes.
async fn read_frame<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Frame> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Frame::Eof);
        }
        if let Some(i) = avail.iter().position(|b| *b == b'\n') {
            if buf.len() + i > max {
                return Ok(Frame::TooLong);
            }
            buf.extend_from_slice(&avail[..i]);
            r.consume(i + 1);
            return Ok(Frame::Line);
        }
        let n = avail.len();
        if buf.len() + n > max {
            return Ok(Frame::TooLong);
        }
        buf.extend_from_slice(avail);
        r.consume(n);
    }
}

/// An id the plugin can match: a string or a number; anything else is null.
fn request_id(v: &Value) -> Value {
    match &v["id"] {
        Value::String(s) if s.len() <= 128 => Value::String(s.clone()),
        Value::Number(n) => Value::Number(n.clone()),
        _ => Value::Null,
    }
}

async fn connection(
    stream: UnixStream,
    gov: Governance,
    limits: Arc<GateLimits>,
    mut peer: GatePeer,
    cancel: CancellationToken,
) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<String>(limits.max_in_flight + 8);
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if wr.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut reader = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => break,
            f = read_frame(&mut reader, limits.max_frame_bytes, &mut buf) => f,
        };
        match frame {
            Ok(Frame::Line) => {}
            Ok(Frame::Eof) | Err(_) => break,
            Ok(Frame::TooLong) => {
                let why = format!(
                    "frame larger than {} bytes ([openclaw] gate_max_frame_bytes); closing",
                    limits.max_frame_bytes
                );
                let _ = tx.send(error_line(&Value::Null, &why)).await;
                break;
            }
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value = match serde_json::from_slice(&buf) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                let _ = tx
                    .send(error_line(
                        &Value::Null,
                        "malformed frame: expected one JSON object per line",
                    ))
                    .await;
                continue;
            }
        };
        let id = request_id(&v);
        match v["op"].as_str() {
            Some("ping") => {
                let _ = tx
                    .send(format!("{}\n", json!({"id": id, "ok": true, "pong": true})))
                    .await;
            }
            Some("decide") => {
                if let Some(ver) = v["plugin_version"].as_str().filter(|s| s.len() <= 64) {
                    peer.plugin_version = Some(ver.to_owned());
                }
                let call = match ToolCall::from_plugin(&v["call"]) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(error_line(&id, &format!("bad call: {e}"))).await;
                        continue;
                    }
                };
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    let why = format!(
                        "busy: {} calls of this connection are undecided ([openclaw] gate_max_in_flight)",
                        limits.max_in_flight
                    );
                    let _ = tx.send(error_line(&id, &why)).await;
                    continue;
                };
                let gov = gov.clone();
                let tx = tx.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let answer = gov.decide_tool_call(call, peer).await;
                    let _ = tx.send(answer_line(&id, &answer)).await;
                    drop(permit);
                });
            }
            _ => {
                let _ = tx
                    .send(error_line(
                        &id,
                        "unknown op (expected \"decide\" or \"ping\")",
                    ))
                    .await;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded() {
        let data = b"{\"a\":1}\n\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut r, 16, &mut buf).await.unwrap(),
            Frame::Line
        ));
        assert_eq!(buf, b"{\"a\":1}");
        assert!(matches!(
            read_frame(&mut r, 16, &mut buf).await.unwrap(),
            Frame::Line
        ));
        assert!(buf.is_empty());
        assert!(matches!(
            read_frame(&mut r, 16, &mut buf).await.unwrap(),
            Frame::TooLong
        ));
        assert!(buf.len() <= 16);
    }

    /// The shipped plugin is versioned with the binaries and its config schema
    /// has exactly the keys `openclaw setup` writes.
    #[test]
    fn shipped_plugin_matches_the_release() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/openclaw-plugin");
        let read = |f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
        };
        let pkg = read("package.json");
        assert_eq!(pkg["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(pkg["type"], "module");
        assert_eq!(pkg["openclaw"]["extensions"], json!(["./index.mjs"]));
        assert!(pkg.get("dependencies").is_none(), "no npm dependencies");
        let manifest = read("openclaw.plugin.json");
        assert_eq!(manifest["id"], crate::governance::tool_gate::GATE_PLUGIN_ID);
        assert_eq!(manifest["activation"]["onStartup"], true);
        let schema = &manifest["configSchema"];
        assert_eq!(schema["additionalProperties"], false);
        let mut keys: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["decisionTimeoutMs", "onDaemonUnreachable", "socketPath"]
        );
        assert_eq!(
            schema["properties"]["onDaemonUnreachable"]["default"],
            "deny"
        );
        let src = std::fs::read_to_string(dir.join("index.mjs")).unwrap();
        for line in src.lines().filter(|l| l.starts_with("import ")) {
            assert!(line.contains("\"node:"), "only Node built-ins: {line}");
        }
    }

    #[test]
    fn ids_are_echoed_only_when_simple() {
        assert_eq!(request_id(&json!({"id": 7})), json!(7));
        assert_eq!(request_id(&json!({"id": "a"})), json!("a"));
        assert_eq!(request_id(&json!({"id": {"x": 1}})), Value::Null);
        assert_eq!(request_id(&json!({})), Value::Null);
    }
}
