//! Dialing and the signed handshake: connect (checking who owns a loopback
//! listener before anything is sent), answer `connect.challenge` with a signed
//! `connect`, read `hello-ok`, and classify a refusal into how the attempt ended.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::endpoint::Endpoint;
use super::rpc::RpcError;
use crate::openclaw::device::{DeviceIdentity, SignInput};
use crate::openclaw::redact::truncate;
use crate::openclaw::settings::{GatewayToken, OpenClawSettings, REQUESTED_SCOPES};
use crate::openclaw::state::{Shared, now_ms};

/// The gateway's WebSocket, plain (loopback) or TLS.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The write half of [`Ws`] the frame loop sends on.
pub(super) type Sink = SplitSink<Ws, Message>;

// Who the monitor says it is in `connect`, and the protocol range it speaks.
const CLIENT_ID: &str = "gateway-client";
const CLIENT_MODE: &str = "backend";
const ROLE: &str = "operator";
const CAPS: [&str; 2] = ["tool-events", "approvals"];
const MIN_PROTOCOL: u64 = 3;
const MAX_PROTOCOL: u64 = 4;

/// What every connection attempt needs: settings, credentials and where to
/// report status; the policy and host stay with the engine.
pub(super) struct Conn {
    pub(super) settings: OpenClawSettings,
    pub(super) token: Option<GatewayToken>,
    pub(super) endpoint: Endpoint,
    pub(super) device: DeviceIdentity,
    pub(super) shared: Arc<Shared>,
}

/// How a connection attempt/session ended.
#[derive(Debug)]
pub(super) enum End {
    Cancelled,
    /// Connection closed/failed after or during a session.
    Closed {
        connected: bool,
        error: String,
        restart_after: Option<Duration>,
    },
    /// Startup not finished (`UNAVAILABLE`).
    Unavailable {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Credentials/pairing/device proof refused.
    AuthFailed {
        error: String,
    },
    /// Something that will not fix itself quickly (protocol mismatch): retry slowly.
    Rejected {
        error: String,
    },
    /// The listener is not the gateway we trust with the token: nothing sent.
    Untrusted {
        error: String,
    },
}

/// What `hello-ok` said about the session: protocol, version, scopes, tick.
pub(super) struct Hello {
    pub(super) protocol: u64,
    pub(super) version: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) missing: Vec<String>,
    pub(super) tick_ms: u64,
}

pub(super) async fn handshake(conn: &Conn) -> Result<(Ws, Hello), End> {
    let max = conn.settings.max_frame_bytes.max(64 * 1024);
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let url = conn.endpoint.url.as_str();
    let fail = |error: String| End::Closed {
        connected: false,
        error,
        restart_after: None,
    };
    let dialed = match (&conn.endpoint.connector, conn.endpoint.plain) {
        (Some(c), _) => {
            conn.shared.set_gateway_check("tls-pin");
            tokio_tungstenite::connect_async_tls_with_config(url, Some(cfg), false, Some(c.clone()))
                .await
        }
        (None, false) => {
            conn.shared.set_gateway_check("tls");
            tokio_tungstenite::connect_async_with_config(url, Some(cfg), false).await
        }
        (None, true) => {
            let tcp = dial_trusted_loopback(conn).await?;
            tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), Some(cfg))
                .await
        }
    };
    let (mut ws, _) = dialed.map_err(|e| fail(format!("connect to {url}: {e}")))?;

    // 1. connect.challenge
    let challenge = loop {
        match next_json(&mut ws).await {
            Ok(v) if v["type"] == "event" && v["event"] == "connect.challenge" => break v,
            Ok(_) => continue,
            Err(e) => return Err(fail(format!("before connect.challenge: {e}"))),
        }
    };
    let payload = &challenge["payload"];
    let nonce = payload["nonce"]
        .as_str()
        .filter(|n| !n.is_empty() && n.len() <= 512);
    let Some(nonce) = nonce else {
        return Err(fail("connect.challenge without a valid nonce".into()));
    };
    let signed_at = payload["ts"].as_i64().unwrap_or_else(now_ms);

    // 2. signed connect
    let token = conn.token.as_ref().map(GatewayToken::expose).unwrap_or("");
    let platform = std::env::consts::OS;
    let signature = conn.device.sign_v3(&SignInput {
        client_id: CLIENT_ID,
        client_mode: CLIENT_MODE,
        role: ROLE,
        scopes: &REQUESTED_SCOPES,
        signed_at_ms: signed_at,
        token,
        nonce,
        platform,
        device_family: "",
    });
    let mut params = json!({
        "minProtocol": MIN_PROTOCOL,
        "maxProtocol": MAX_PROTOCOL,
        "client": {
            "id": CLIENT_ID,
            "version": env!("CARGO_PKG_VERSION"),
            "platform": platform,
            "mode": CLIENT_MODE,
            "displayName": "defenseclawd",
        },
        "role": ROLE,
        "scopes": REQUESTED_SCOPES,
        "caps": CAPS,
        "device": {
            "id": conn.device.id,
            "publicKey": conn.device.public_key,
            "signature": signature,
            "signedAt": signed_at,
            "nonce": nonce,
        },
        "locale": "en-US",
        "userAgent": concat!("defenseclawd/", env!("CARGO_PKG_VERSION")),
    });
    if !token.is_empty() {
        params["auth"] = json!({ "token": token });
    }
    let frame = json!({"type": "req", "id": "connect", "method": "connect", "params": params});
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| fail(format!("sending connect: {e}")))?;

    // 3. hello-ok
    let res = loop {
        match next_json(&mut ws).await {
            Ok(v) if v["type"] == "res" && v["id"] == "connect" => break v,
            Ok(_) => continue,
            Err(e) => return Err(fail(format!("waiting for hello-ok: {e}"))),
        }
    };
    if res["ok"] != true {
        return Err(classify_connect_error(&res["error"]));
    }
    let hello = &res["payload"];
    if hello["type"] != "hello-ok" {
        return Err(fail("connect response is not hello-ok".into()));
    }
    let protocol = hello["protocol"].as_u64().unwrap_or(0);
    if !(MIN_PROTOCOL..=MAX_PROTOCOL).contains(&protocol) {
        return Err(End::Rejected {
            error: format!(
                "gateway negotiated protocol {protocol}; defenseclawd supports {MIN_PROTOCOL}..{MAX_PROTOCOL}"
            ),
        });
    }
    let scopes: Vec<String> = hello["auth"]["scopes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let admin = scopes.iter().any(|s| s == "operator.admin");
    let missing = REQUESTED_SCOPES
        .iter()
        .filter(|r| {
            let granted = scopes.iter().any(|s| s == *r);
            let implied = admin && **r != "operator.admin";
            !(granted || implied)
        })
        .map(|s| (*s).to_owned())
        .collect();
    Ok((
        ws,
        Hello {
            protocol,
            version: hello["server"]["version"].as_str().map(str::to_owned),
            scopes,
            missing,
            tick_ms: hello["policy"]["tickIntervalMs"]
                .as_u64()
                .filter(|t| *t > 0)
                .unwrap_or(30_000),
        },
    ))
}

/// How often the server side of a fresh loopback connection is looked up
/// before giving up: the kernel lists it once the handshake completes, which
/// can trail `connect()` returning by a moment.
const PEER_LOOKUPS: u32 = 50;

/// Dials a `ws://` (loopback) gateway and returns the stream only when the
/// socket that accepted it belongs to an expected uid (`gateway_uid`, else the
/// daemon's own; root always). Nothing is written before the check, so a
/// squatter on the port never sees the handshake, let alone the token. The
/// outcome goes to `status` (`gateway_check`).
async fn dial_trusted_loopback(conn: &Conn) -> Result<TcpStream, End> {
    let refused = |why: String| {
        conn.shared.set_gateway_check(&format!("refused: {why}"));
        End::Untrusted {
            error: format!("gateway token withheld: {why}"),
        }
    };
    let url = url::Url::parse(&conn.endpoint.url).map_err(|e| refused(format!("url: {e}")))?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| End::Closed {
            connected: false,
            error: format!("connect to {}: {e}", conn.endpoint.url),
            restart_after: None,
        })?;
    let (local, server) = match (tcp.local_addr(), tcp.peer_addr()) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) | (_, Err(e)) => return Err(refused(format!("socket addresses: {e}"))),
    };
    if !server.ip().is_loopback() && !server.ip().to_canonical().is_loopback() {
        return Err(refused(format!("{server} is not a loopback address")));
    }
    let expected = conn
        .settings
        .gateway_uid
        .or_else(defenseclaw_common::paths::current_uid);
    let mut owner = None;
    for _ in 0..PEER_LOOKUPS {
        // The tables can be megabytes on a busy host: read them off the workers.
        owner =
            tokio::task::spawn_blocking(move || crate::openclaw::peer::server_uid(local, server))
                .await
                .map_err(|e| refused(format!("reading the socket tables: {e}")))?
                .map_err(|e| refused(format!("cannot read the socket tables: {e}")))?;
        if owner.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(owner) = owner else {
        return Err(refused(format!(
            "no owner found for the listener on {server}"
        )));
    };
    let expected_text = expected.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
    if owner != 0 && Some(owner) != expected {
        return Err(refused(format!(
            "listener uid {owner}, expected {expected_text}"
        )));
    }
    conn.shared.set_gateway_check(&format!("peer-uid {owner}"));
    Ok(tcp)
}

/// Next text frame as JSON (pre-hello); errors on close, non-JSON or binary.
async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            None => return Err("connection closed".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|_| "malformed (non-JSON) frame".to_owned());
            }
            Some(Ok(Message::Binary(_))) => return Err("unexpected binary frame".into()),
            Some(Ok(Message::Close(f))) => {
                return Err(match f {
                    Some(f) => format!(
                        "closed by gateway ({}: {})",
                        u16::from(f.code),
                        truncate(f.reason.as_str(), 120)
                    ),
                    None => "closed by gateway".into(),
                });
            }
            Some(Ok(_)) => continue,
        }
    }
}

fn classify_connect_error(e: &Value) -> End {
    let err = RpcError::from_error(e);
    let text = format!("connect refused: {err}");
    let RpcError::Gateway {
        code,
        detail,
        message,
        retry_after_ms,
    } = &err
    else {
        return End::Closed {
            connected: false,
            error: text,
            restart_after: None,
        };
    };
    let d = detail.as_deref().unwrap_or("");
    if code == "UNAVAILABLE" {
        return End::Unavailable {
            error: text,
            retry_after: retry_after_ms.map(Duration::from_millis),
        };
    }
    if d.starts_with("AUTH_")
        || d.starts_with("DEVICE_AUTH_")
        || d.starts_with("PAIRING_")
        || d.starts_with("device-")
        || d.contains("token")
        || code == "FORBIDDEN"
        || message.starts_with("unauthorized")
        || message.contains("pairing required")
    {
        return End::AuthFailed { error: text };
    }
    if d == "PROTOCOL_MISMATCH" || message.contains("protocol mismatch") {
        return End::Rejected { error: text };
    }
    End::Closed {
        connected: false,
        error: text,
        restart_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_classified() {
        let auth = classify_connect_error(
            &json!({"code": "INVALID_REQUEST", "message": "unauthorized: gateway token mismatch", "details": {"code": "AUTH_TOKEN_MISMATCH"}}),
        );
        assert!(matches!(auth, End::AuthFailed { .. }));
        let nonce = classify_connect_error(
            &json!({"code": "INVALID_REQUEST", "message": "x", "details": {"code": "DEVICE_AUTH_NONCE_MISMATCH"}}),
        );
        assert!(matches!(nonce, End::AuthFailed { .. }));
        let un = classify_connect_error(
            &json!({"code": "UNAVAILABLE", "message": "gateway starting", "retryAfterMs": 1500}),
        );
        assert!(
            matches!(un, End::Unavailable { retry_after: Some(d), .. } if d == Duration::from_millis(1500))
        );
        let proto = classify_connect_error(
            &json!({"code": "INVALID_REQUEST", "message": "protocol mismatch", "details": {"code": "PROTOCOL_MISMATCH"}}),
        );
        assert!(matches!(proto, End::Rejected { .. }));
    }
}
