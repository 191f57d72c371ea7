//! The gateway connection: dial, signed handshake, frame loop, keepalive,
//! reconnect with backoff, RPC correlation, reconciliation after connect.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::device::{DeviceIdentity, SignInput};
use super::engine::{Engine, SkillInfo, ToolFrame, Verdict, audit_writer};
use super::policy::Policy;
use super::redact::{redact_text, truncate};
use super::{
    ApprovalKind, GatewayState, GatewayToken, Host, HostVerdict, MonitorAudit, OpenClawError,
    OpenClawSettings, REQUESTED_SCOPES, Shared, TargetKind, tls,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;

pub(crate) const CLIENT_ID: &str = "gateway-client";
pub(crate) const CLIENT_MODE: &str = "backend";
pub(crate) const ROLE: &str = "operator";
pub(crate) const CAPS: [&str; 2] = ["tool-events", "approvals"];
pub(crate) const MIN_PROTOCOL: u64 = 3;
pub(crate) const MAX_PROTOCOL: u64 = 4;
const ALREADY_RESOLVED: &str = "APPROVAL_ALREADY_RESOLVED";
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// Events the monitor acts on; others only update `last_event_at`.
const RELEVANT_EVENTS: [&str; 8] = [
    "exec.approval.requested",
    "exec.approval.resolved",
    "plugin.approval.requested",
    "plugin.approval.resolved",
    "session.tool",
    "skills.changed",
    "config.changed",
    "shutdown",
];

/// Just the kind of a frame.
#[derive(serde::Deserialize)]
struct FrameHead<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
}

/// The validated gateway endpoint.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    connector: Option<Connector>,
    /// `ws://`: the listener's owner is checked before the token is sent.
    plain: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

impl Endpoint {
    /// `ws://` only for loopback hosts; no credentials in the URL; a pin needs `wss://`.
    pub(crate) fn parse(s: &OpenClawSettings) -> Result<Self, OpenClawError> {
        let url =
            url::Url::parse(&s.url).map_err(|e| OpenClawError::Config(format!("url: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OpenClawError::Config(
                "url must not contain credentials".into(),
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| OpenClawError::Config("url has no host".into()))?;
        let connector = match url.scheme() {
            "ws" => {
                if !is_loopback(&host) {
                    return Err(OpenClawError::Config(format!(
                        "ws:// is only allowed for loopback hosts (got {host}); use wss://"
                    )));
                }
                if s.tls_pin_sha256.is_some() {
                    return Err(OpenClawError::Config(
                        "tls_pin_sha256 requires a wss:// url".into(),
                    ));
                }
                None
            }
            "wss" => match &s.tls_pin_sha256 {
                Some(pin) => Some(tls::pinned_connector(tls::parse_pin(pin)?)?),
                None => None,
            },
            other => {
                return Err(OpenClawError::Config(format!(
                    "url scheme must be ws or wss, not {other}"
                )));
            }
        };
        Ok(Self {
            plain: url.scheme() == "ws",
            url: url.to_string(),
            connector,
        })
    }
}

/// Everything the connection task needs.
pub(crate) struct Context<H> {
    settings: OpenClawSettings,
    token: Option<GatewayToken>,
    endpoint: Endpoint,
    policy: Policy,
    device: DeviceIdentity,
    host: Arc<H>,
    shared: Arc<Shared>,
}

impl<H: Host> Context<H> {
    pub(crate) fn new(
        settings: OpenClawSettings,
        token: Option<GatewayToken>,
        endpoint: Endpoint,
        policy: Policy,
        device: DeviceIdentity,
        host: Arc<H>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            settings,
            token,
            endpoint,
            policy,
            device,
            host,
            shared,
        }
    }
}

struct Conn {
    settings: OpenClawSettings,
    token: Option<GatewayToken>,
    endpoint: Endpoint,
    device: DeviceIdentity,
    shared: Arc<Shared>,
}

/// Error of one RPC.
#[derive(Debug, Clone)]
pub(crate) enum RpcError {
    Timeout,
    Disconnected,
    Gateway {
        code: String,
        detail: Option<String>,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl RpcError {
    fn from_error(e: &Value) -> Self {
        let details = &e["details"];
        let detail = details["code"]
            .as_str()
            .or_else(|| details["reason"].as_str())
            .or_else(|| details["authReason"].as_str())
            .map(str::to_owned);
        let retry_after_ms = e["retryAfterMs"]
            .as_u64()
            .or_else(|| details["retryAfterMs"].as_u64());
        Self::Gateway {
            code: e["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
            detail,
            message: truncate(&redact_text(e["message"].as_str().unwrap_or("")), 300),
            retry_after_ms,
        }
    }

    fn reason_is(&self, what: &str) -> bool {
        matches!(self, RpcError::Gateway { detail: Some(d), .. } if d == what)
            || matches!(self, RpcError::Gateway { message, .. } if message.contains("already resolved") && what == ALREADY_RESOLVED)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Timeout => f.write_str("request timed out"),
            RpcError::Disconnected => f.write_str("gateway disconnected"),
            RpcError::Gateway {
                code,
                detail,
                message,
                ..
            } => match detail {
                Some(d) => write!(f, "{code} ({d}): {message}"),
                None => write!(f, "{code}: {message}"),
            },
        }
    }
}

struct Cmd {
    method: String,
    params: Value,
    expect_final: bool,
    reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// Client side of the connection loop for background tasks.
#[derive(Clone)]
pub(crate) struct Rpc {
    tx: mpsc::Sender<Cmd>,
    timeout: Duration,
}

impl Rpc {
    pub(crate) async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.call_inner(method, params, false).await
    }

    /// A request that gets an `accepted` response first and the result later.
    #[allow(dead_code)]
    pub(crate) async fn call_two_phase(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        self.call_inner(method, params, true).await
    }

    async fn call_inner(
        &self,
        method: &str,
        params: Value,
        expect_final: bool,
    ) -> Result<Value, RpcError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd {
            method: method.to_owned(),
            params,
            expect_final,
            reply,
        };
        self.tx
            .send(cmd)
            .await
            .map_err(|_| RpcError::Disconnected)?;
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RpcError::Disconnected),
            Err(_) => Err(RpcError::Timeout),
        }
    }
}

enum Pending {
    Call {
        reply: oneshot::Sender<Result<Value, RpcError>>,
        expect_final: bool,
        deadline: Instant,
    },
    Resolve {
        approval_id: String,
        kind: ApprovalKind,
        deadline: Instant,
    },
}

/// How a connection attempt/session ended.
#[derive(Debug)]
enum End {
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

struct Hello {
    protocol: u64,
    version: Option<String>,
    scopes: Vec<String>,
    missing: Vec<String>,
    tick_ms: u64,
}

struct Triggers {
    skills: Notify,
    config: Notify,
}

fn backoff_delay(s: &OpenClawSettings, attempt: u32) -> Duration {
    let max_ms = s.backoff_max_secs.saturating_mul(1000).max(1);
    let base = s
        .backoff_initial_ms
        .max(1)
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms);
    // Equal jitter: [base/2, base].
    let half = base / 2;
    let jitter = if half > 0 {
        rand::random_range(0..=half)
    } else {
        0
    };
    Duration::from_millis(half + jitter)
}

/// The connection task: connect, serve, back off, repeat until cancelled;
/// then drain the audit queue.
pub(crate) async fn run<H: Host>(ctx: Context<H>, cancel: CancellationToken) {
    let Context {
        settings,
        token,
        endpoint,
        policy,
        device,
        host,
        shared,
    } = ctx;
    let (audit_tx, audit_rx) = mpsc::channel(settings.audit_queue_capacity.max(16));
    let writer = tokio::spawn(audit_writer(host.clone(), audit_rx));
    let engine = Arc::new(Engine::new(policy, host, shared.clone(), audit_tx));
    let conn = Conn {
        settings,
        token,
        endpoint,
        device,
        shared: shared.clone(),
    };
    let mut attempt: u32 = 0;
    // The last refusal to trust the listener, audited and logged once per change.
    let mut last_refusal: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        shared.set_state(GatewayState::Connecting);
        let end = session(&conn, &engine, &cancel).await;
        if !matches!(end, End::Untrusted { .. }) {
            last_refusal = None;
        }
        let s = &conn.settings;
        let (state, error, delay) = match end {
            End::Cancelled => break,
            End::Closed {
                connected,
                error,
                restart_after,
            } => {
                if connected {
                    attempt = 0;
                }
                let d = restart_after.unwrap_or_else(|| backoff_delay(s, attempt));
                attempt = attempt.saturating_add(1);
                (GatewayState::Backoff, error, d)
            }
            End::Unavailable { error, retry_after } => {
                let d = retry_after.unwrap_or_else(|| backoff_delay(s, attempt));
                attempt = attempt.saturating_add(1);
                (
                    GatewayState::Backoff,
                    error,
                    d.min(Duration::from_secs(s.backoff_max_secs.max(1))),
                )
            }
            End::AuthFailed { error } => {
                engine
                    .audit(MonitorAudit {
                        action: "openclaw.connection".into(),
                        target: None,
                        outcome: "auth_failed".into(),
                        reason: error.clone(),
                        details: json!({ "url": conn.endpoint.url, "retry_in_secs": s.auth_retry_secs }),
                    })
                    .await;
                (
                    GatewayState::AuthFailed,
                    error,
                    Duration::from_secs(s.auth_retry_secs.max(1)),
                )
            }
            End::Rejected { error } => (
                GatewayState::Backoff,
                error,
                Duration::from_secs(s.auth_retry_secs.max(1)),
            ),
            End::Untrusted { error } => {
                let d = backoff_delay(s, attempt);
                attempt = attempt.saturating_add(1);
                if last_refusal.as_deref() != Some(error.as_str()) {
                    tracing::error!(url = %conn.endpoint.url, error = %error, "openclaw gateway not trusted with the token; retrying with backoff");
                    engine
                        .audit(MonitorAudit {
                            action: "openclaw.connection".into(),
                            target: None,
                            outcome: "refused".into(),
                            reason: error.clone(),
                            details: json!({ "url": conn.endpoint.url }),
                        })
                        .await;
                    last_refusal = Some(error.clone());
                }
                shared.update_status(|st| {
                    st.state = GatewayState::Backoff;
                    st.last_error = Some(error);
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                }
                continue;
            }
        };
        tracing::warn!(url = %conn.endpoint.url, error = %error, retry_in_ms = delay.as_millis() as u64, "openclaw gateway connection");
        shared.update_status(|st| {
            st.state = state;
            st.last_error = Some(error);
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    drop(engine);
    let _ = writer.await;
}

async fn session<H: Host>(conn: &Conn, engine: &Arc<Engine<H>>, cancel: &CancellationToken) -> End {
    let hs_timeout = Duration::from_secs(conn.settings.handshake_timeout_secs.max(1));
    let hs = tokio::select! {
        _ = cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(hs_timeout, handshake(conn)) => r,
    };
    let (ws, hello) = match hs {
        Err(_) => {
            return End::Closed {
                connected: false,
                error: format!("handshake timed out after {}s", hs_timeout.as_secs()),
                restart_after: None,
            };
        }
        Ok(Err(end)) => return end,
        Ok(Ok(x)) => x,
    };
    let shared = &engine.shared;
    shared.update_status(|st| {
        st.state = GatewayState::Connected;
        st.server_version = hello.version.clone();
        st.protocol = u32::try_from(hello.protocol).ok();
        st.scopes = hello.scopes.clone();
        st.missing_scopes = hello.missing.clone();
    });
    tracing::info!(url = %conn.endpoint.url, protocol = hello.protocol, missing_scopes = ?hello.missing, "openclaw gateway connected");
    engine
        .audit(MonitorAudit {
            action: "openclaw.connection".into(),
            target: None,
            outcome: "connected".into(),
            reason: match hello.missing.is_empty() {
                true => "connected to the OpenClaw gateway".into(),
                false => format!("connected; missing scopes: {}", hello.missing.join(", ")),
            },
            details: json!({
                "url": conn.endpoint.url,
                "server_version": hello.version,
                "protocol": hello.protocol,
                "scopes": hello.scopes,
                "missing_scopes": hello.missing,
            }),
        })
        .await;

    let timeout = Duration::from_secs(conn.settings.request_timeout_secs.max(1));
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let rpc = Rpc {
        tx: cmd_tx,
        timeout,
    };
    let triggers = Arc::new(Triggers {
        skills: Notify::new(),
        config: Notify::new(),
    });
    let conn_cancel = cancel.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(background(
        engine.clone(),
        rpc,
        triggers.clone(),
        conn_cancel.clone(),
    ));
    let dead_after = Duration::from_millis(hello.tick_ms.saturating_mul(2).max(100));
    let restart_default = Duration::from_millis(conn.settings.backoff_initial_ms.max(1));
    let end = serve(
        ws,
        engine,
        cmd_rx,
        &triggers,
        dead_after,
        timeout,
        restart_default,
        cancel,
    )
    .await;
    conn_cancel.cancel();
    tasks.shutdown().await;
    end
}

async fn handshake(conn: &Conn) -> Result<(Ws, Hello), End> {
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
    let signed_at = payload["ts"].as_i64().unwrap_or_else(super::now_ms);

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
        .or_else(defenseclaw_proto::paths::current_uid);
    let mut owner = None;
    for _ in 0..PEER_LOOKUPS {
        // The tables can be megabytes on a busy host: read them off the workers.
        owner = tokio::task::spawn_blocking(move || super::peer::server_uid(local, server))
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

struct Serve<'a, H> {
    sink: Sink,
    engine: &'a Arc<Engine<H>>,
    triggers: &'a Triggers,
    pending: HashMap<String, Pending>,
    next_id: u64,
    timeout: Duration,
    restart_hint: Option<Duration>,
}

#[allow(clippy::too_many_arguments)]
async fn serve<H: Host>(
    ws: Ws,
    engine: &Arc<Engine<H>>,
    mut cmd_rx: mpsc::Receiver<Cmd>,
    triggers: &Triggers,
    dead_after: Duration,
    timeout: Duration,
    restart_default: Duration,
    cancel: &CancellationToken,
) -> End {
    let (sink, mut stream) = ws.split();
    let mut st = Serve {
        sink,
        engine,
        triggers,
        pending: HashMap::new(),
        next_id: 0,
        timeout,
        restart_hint: None,
    };
    let mut last_rx = Instant::now();
    let dead = tokio::time::sleep(dead_after);
    tokio::pin!(dead);
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut cmd_open = true;
    let end = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = st.sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "daemon stopping".into() }))).await;
                break End::Cancelled;
            }
            msg = stream.next() => {
                last_rx = Instant::now();
                match msg {
                    None => break st.closed("connection closed by gateway".into()),
                    Some(Err(e)) => break st.closed(format!("websocket error: {e}")),
                    Some(Ok(Message::Text(t))) => {
                        if let Err(e) = st.on_text(t.as_str()).await {
                            break st.closed(e);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => tracing::warn!("openclaw: ignoring binary frame"),
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                        let restart = if code == 1012 {
                            Some(st.restart_hint.unwrap_or(restart_default))
                        } else {
                            st.restart_hint
                        };
                        break End::Closed {
                            connected: true,
                            error: format!("closed by gateway ({code}: {})", truncate(&reason, 120)),
                            restart_after: restart,
                        };
                    }
                    Some(Ok(_)) => {}
                }
            }
            cmd = cmd_rx.recv(), if cmd_open => match cmd {
                None => cmd_open = false,
                Some(cmd) => {
                    if let Err(e) = st.send_request(cmd).await {
                        break st.closed(e);
                    }
                }
            },
            () = &mut dead => {
                let due = last_rx + dead_after;
                if Instant::now() >= due {
                    let _ = st.sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4000), reason: "dead link".into() }))).await;
                    break st.closed(format!("no frames for {} ms (2x tickIntervalMs); dead link", dead_after.as_millis()));
                }
                dead.as_mut().reset(due);
            }
            _ = sweep.tick() => st.sweep(),
        }
    };
    for (_, p) in st.pending.drain() {
        if let Pending::Call { reply, .. } = p {
            let _ = reply.send(Err(RpcError::Disconnected));
        }
    }
    end
}

impl<H: Host> Serve<'_, H> {
    fn closed(&self, error: String) -> End {
        End::Closed {
            connected: true,
            error,
            restart_after: self.restart_hint,
        }
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("dc-{}", self.next_id)
    }

    async fn send_frame(&mut self, frame: &Value) -> Result<(), String> {
        self.sink
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("websocket send: {e}"))
    }

    async fn send_request(&mut self, cmd: Cmd) -> Result<(), String> {
        let id = self.next_id();
        let frame = json!({"type": "req", "id": id, "method": cmd.method, "params": cmd.params});
        self.pending.insert(
            id,
            Pending::Call {
                reply: cmd.reply,
                expect_final: cmd.expect_final,
                deadline: Instant::now() + self.timeout,
            },
        );
        self.send_frame(&frame).await
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.pending.retain(|id, p| match p {
            Pending::Call { reply, deadline, .. } => !reply.is_closed() && *deadline > now,
            Pending::Resolve { deadline, approval_id, .. } => {
                if *deadline <= now {
                    tracing::warn!(request = %id, approval = %approval_id, "openclaw: no response to approval resolve");
                }
                *deadline > now
            }
        });
        // Timed-out calls: their receivers are dropped by `Rpc::call`'s own timeout.
    }

    async fn on_text(&mut self, text: &str) -> Result<(), String> {
        // Look at the frame kind first: frames the monitor does not act on are
        // not materialized, and session.tool is read into a lean typed form.
        let head: FrameHead<'_> = match serde_json::from_str(text) {
            Ok(h) => h,
            Err(_) => {
                tracing::warn!(len = text.len(), "openclaw: ignoring malformed frame");
                return Ok(());
            }
        };
        // Kind and size only: frames may carry commands, tokens and secrets.
        tracing::trace!(
            kind = head.ty.as_deref().unwrap_or(""),
            event = head.event.as_deref().unwrap_or(""),
            len = text.len(),
            "openclaw frame received"
        );
        if head.ty.as_deref() == Some("event") {
            let event = head.event.as_deref().unwrap_or("");
            if !RELEVANT_EVENTS.contains(&event) {
                self.engine.shared.touch_event();
                return Ok(());
            }
            if event == "session.tool" {
                self.engine.shared.touch_event();
                match serde_json::from_str::<ToolFrame>(text) {
                    Ok(frame) => {
                        if let Some(a) = self.engine.on_tool(&frame.payload) {
                            self.engine.audit(a).await;
                        }
                    }
                    Err(_) => tracing::warn!("openclaw: ignoring malformed session.tool event"),
                }
                return Ok(());
            }
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!(len = text.len(), "openclaw: ignoring malformed frame");
                return Ok(());
            }
        };
        match v["type"].as_str() {
            Some("event") => self.on_event(&v).await,
            Some("res") => {
                self.on_response(&v).await;
                Ok(())
            }
            _ => {
                tracing::warn!("openclaw: ignoring frame of unknown type");
                Ok(())
            }
        }
    }

    async fn on_response(&mut self, v: &Value) {
        let Some(id) = v["id"].as_str() else {
            tracing::warn!("openclaw: response without id");
            return;
        };
        let ok = v["ok"] == true;
        match self.pending.remove(id) {
            None => {
                tracing::debug!(request = %id, "openclaw: response to unknown or expired request")
            }
            Some(Pending::Call {
                reply,
                expect_final,
                deadline,
            }) => {
                if ok && expect_final && v["payload"]["status"] == "accepted" {
                    self.pending.insert(
                        id.to_owned(),
                        Pending::Call {
                            reply,
                            expect_final,
                            deadline,
                        },
                    );
                } else if ok {
                    let _ = reply.send(Ok(v.get("payload").cloned().unwrap_or(Value::Null)));
                } else {
                    let _ = reply.send(Err(RpcError::from_error(&v["error"])));
                }
            }
            Some(Pending::Resolve {
                approval_id, kind, ..
            }) => {
                self.engine.confirmed(&approval_id);
                if !ok {
                    let err = RpcError::from_error(&v["error"]);
                    if err.reason_is(ALREADY_RESOLVED) {
                        tracing::debug!(approval = %approval_id, "openclaw: approval already resolved elsewhere");
                    } else {
                        resolve_failed(self.engine, &approval_id, kind, &err);
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, v: &Value) -> Result<(), String> {
        let Some(event) = v["event"].as_str() else {
            return Ok(());
        };
        let engine = self.engine;
        engine.shared.touch_event();
        let payload = &v["payload"];
        match event {
            "exec.approval.requested" => {
                if let Some(ev) = engine.eval_exec(payload) {
                    self.decide(ev.id, ev.kind, ev.verdict, ev.audit).await?;
                }
            }
            "plugin.approval.requested" => {
                if let Some(ev) = engine.eval_plugin(payload) {
                    self.decide(ev.id, ev.kind, ev.verdict, ev.audit).await?;
                }
            }
            "exec.approval.resolved" => {
                if let Some(a) = engine.on_resolved(ApprovalKind::Exec, payload) {
                    engine.audit(a).await;
                }
            }
            "plugin.approval.resolved" => {
                if let Some(a) = engine.on_resolved(ApprovalKind::Plugin, payload) {
                    engine.audit(a).await;
                }
            }
            "skills.changed" => self.triggers.skills.notify_one(),
            "config.changed" => self.triggers.config.notify_one(),
            "shutdown" => {
                let ms = payload["restartExpectedMs"].as_u64().unwrap_or(0);
                self.restart_hint = Some(Duration::from_millis(ms.clamp(250, 60_000)));
                tracing::info!(
                    restart_expected_ms = ms,
                    "openclaw gateway announced shutdown"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Audits (queued before the frame when there is room, so nothing is lost)
    /// and sends the resolve frame.
    async fn decide(
        &mut self,
        id: String,
        kind: ApprovalKind,
        verdict: Verdict,
        audit: MonitorAudit,
    ) -> Result<(), String> {
        let leftover = self.engine.try_audit(audit);
        if let Some(decision) = verdict.wire() {
            self.engine.expect_confirmation(&id, decision);
            let method = match kind {
                ApprovalKind::Exec => "exec.approval.resolve",
                ApprovalKind::Plugin => "plugin.approval.resolve",
            };
            let req_id = self.next_id();
            let frame = json!({"type": "req", "id": req_id, "method": method, "params": {"id": id, "decision": decision}});
            self.pending.insert(
                req_id,
                Pending::Resolve {
                    approval_id: id,
                    kind,
                    deadline: Instant::now() + self.timeout,
                },
            );
            self.send_frame(&frame).await?;
        }
        if let Some(a) = leftover {
            self.engine.audit(a).await;
        }
        Ok(())
    }
}

fn resolve_failed<H: Host>(
    engine: &Engine<H>,
    approval_id: &str,
    kind: ApprovalKind,
    err: &RpcError,
) {
    tracing::warn!(approval = %approval_id, error = %err, "openclaw: approval resolve failed");
    if matches!(err, RpcError::Disconnected | RpcError::Timeout) {
        // Re-sent when the approval is listed as pending after reconnecting.
        return;
    }
    engine.confirmed(approval_id);
    engine.shared.update_approval(approval_id, |v| {
        v.reason = format!("{}; resolve failed: {err}", v.reason);
    });
    engine.audit_detached(MonitorAudit {
        action: match kind {
            ApprovalKind::Exec => "openclaw.exec.approval".into(),
            ApprovalKind::Plugin => "openclaw.plugin.approval".into(),
        },
        target: None,
        outcome: "error".into(),
        reason: format!("resolve failed: {err}"),
        details: json!({ "approval_id": approval_id }),
    });
}

/// Per-connection background work: subscribe, re-list approvals, read
/// skills/MCP, reconcile enforcement; then react to triggers.
async fn background<H: Host>(
    engine: Arc<Engine<H>>,
    rpc: Rpc,
    triggers: Arc<Triggers>,
    cancel: CancellationToken,
) {
    let work = async {
        if let Err(e) = rpc.call("sessions.subscribe", json!({})).await {
            tracing::warn!(error = %e, "openclaw: sessions.subscribe failed");
            engine
                .shared
                .update_status(|s| s.last_error = Some(format!("sessions.subscribe: {e}")));
        }
        relist_approvals(&engine, &rpc).await;
        refresh_skills(&engine, &rpc).await;
        refresh_mcp(&engine, &rpc).await;
        for (kind, name, blocked) in engine.host.enforced_targets().await {
            if blocked && needs_block(&engine, kind, &name) {
                engine.shared.push_enforcement(kind, &name, true);
            }
        }
        apply_pending(&engine, &rpc).await;
        let mut periodic = tokio::time::interval(RECONCILE_EVERY);
        periodic.tick().await;
        loop {
            tokio::select! {
                _ = engine.shared.pending_notified() => apply_pending(&engine, &rpc).await,
                _ = triggers.skills.notified() => refresh_skills(&engine, &rpc).await,
                _ = triggers.config.notified() => refresh_mcp(&engine, &rpc).await,
                _ = periodic.tick() => {
                    relist_approvals(&engine, &rpc).await;
                    apply_pending(&engine, &rpc).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        () = work => {}
    }
}

/// Whether a blocked target is present in OpenClaw and still enabled there.
fn needs_block<H: Host>(engine: &Engine<H>, kind: TargetKind, name: &str) -> bool {
    match kind {
        TargetKind::Skill => engine
            .skills()
            .iter()
            .any(|s| (s.key == name || s.name == name) && !s.disabled),
        TargetKind::Mcp => engine
            .mcp_servers()
            .get(name)
            .is_some_and(|enabled| *enabled),
    }
}

fn list_items(v: &Value) -> Vec<Value> {
    if let Some(a) = v.as_array() {
        return a.clone();
    }
    for key in ["approvals", "items", "pending"] {
        if let Some(a) = v[key].as_array() {
            return a.clone();
        }
    }
    Vec::new()
}

async fn relist_approvals<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    for kind in [ApprovalKind::Exec, ApprovalKind::Plugin] {
        let (list, resolve) = match kind {
            ApprovalKind::Exec => ("exec.approval.list", "exec.approval.resolve"),
            ApprovalKind::Plugin => ("plugin.approval.list", "plugin.approval.resolve"),
        };
        let items = match rpc.call(list, json!({})).await {
            Ok(v) => list_items(&v),
            Err(e) => {
                tracing::warn!(error = %e, method = list, "openclaw: listing approvals failed");
                continue;
            }
        };
        for item in items {
            let ev = match kind {
                ApprovalKind::Exec => engine.eval_exec(&item),
                ApprovalKind::Plugin => engine.eval_plugin(&item),
            };
            let (id, decision) = match ev {
                Some(ev) => {
                    engine.audit_detached(ev.audit);
                    match ev.verdict.wire() {
                        Some(d) => {
                            engine.expect_confirmation(&ev.id, d);
                            (ev.id, d)
                        }
                        None => continue,
                    }
                }
                // Decided before, still pending: the resolve was lost with the
                // previous connection; send it again.
                None => match item["id"]
                    .as_str()
                    .and_then(|id| Some((id, engine.unconfirmed(id)?)))
                {
                    Some((id, d)) => (id.to_owned(), d),
                    None => continue,
                },
            };
            match rpc
                .call(resolve, json!({"id": id, "decision": decision}))
                .await
            {
                Ok(_) => engine.confirmed(&id),
                Err(e) if e.reason_is(ALREADY_RESOLVED) => engine.confirmed(&id),
                Err(e) => resolve_failed(engine, &id, kind, &e),
            }
        }
    }
}

async fn refresh_skills<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let v = match rpc.call("skills.status", json!({})).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "openclaw: skills.status failed");
            return;
        }
    };
    let skills: Vec<SkillInfo> = v["skills"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let name = s["name"].as_str()?.to_owned();
                    Some(SkillInfo {
                        key: s["skillKey"].as_str().unwrap_or(&name).to_owned(),
                        base_dir: s["baseDir"].as_str().unwrap_or("").to_owned(),
                        disabled: s["disabled"].as_bool().unwrap_or(false),
                        name,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = skills.iter().map(|s| s.key.clone()).collect();
    for s in &skills {
        if !s.disabled
            && (matches!(
                engine.host.verdict(TargetKind::Skill, &s.key),
                HostVerdict::Blocked { .. }
            ) || matches!(
                engine.host.verdict(TargetKind::Skill, &s.name),
                HostVerdict::Blocked { .. }
            ))
        {
            engine
                .shared
                .push_enforcement(TargetKind::Skill, &s.key, true);
        }
    }
    engine.set_skills(skills);
    engine.host.observe_targets(TargetKind::Skill, names).await;
}

/// `mcp.servers` from a `config.get` payload: name → enabled.
fn mcp_servers_of(cfg: &Value) -> BTreeMap<String, bool> {
    for key in ["config", "parsed", "resolved", "runtimeConfig"] {
        if let Some(servers) = cfg[key]["mcp"]["servers"].as_object() {
            return servers
                .iter()
                .map(|(k, v)| (k.clone(), v["enabled"].as_bool().unwrap_or(true)))
                .collect();
        }
    }
    BTreeMap::new()
}

async fn refresh_mcp<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let cfg = match rpc.call("config.get", json!({})).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "openclaw: config.get failed");
            return;
        }
    };
    let servers = mcp_servers_of(&cfg);
    for (name, enabled) in &servers {
        if *enabled
            && matches!(
                engine.host.verdict(TargetKind::Mcp, name),
                HostVerdict::Blocked { .. }
            )
        {
            engine.shared.push_enforcement(TargetKind::Mcp, name, true);
        }
    }
    let names = servers.keys().cloned().collect();
    engine.set_mcp_servers(servers);
    engine.host.observe_targets(TargetKind::Mcp, names).await;
}

enum EnforceResult {
    Done(Value),
    Unchanged,
    Absent,
}

async fn apply_one<H: Host>(
    engine: &Engine<H>,
    rpc: &Rpc,
    kind: TargetKind,
    name: &str,
    blocked: bool,
) -> Result<EnforceResult, RpcError> {
    match kind {
        TargetKind::Skill => {
            let key = engine.skill_key(name);
            rpc.call(
                "skills.update",
                json!({"skillKey": key, "enabled": !blocked}),
            )
            .await?;
            Ok(EnforceResult::Done(
                json!({"method": "skills.update", "skillKey": key, "enabled": !blocked}),
            ))
        }
        TargetKind::Mcp => {
            if name.contains('/') {
                // A single MCP tool: enforced through plugin approvals only.
                return Ok(EnforceResult::Unchanged);
            }
            for attempt in 0..2 {
                let cfg = rpc.call("config.get", json!({})).await?;
                let servers = mcp_servers_of(&cfg);
                let Some(enabled) = servers.get(name) else {
                    return Ok(EnforceResult::Absent);
                };
                if *enabled != blocked {
                    return Ok(EnforceResult::Unchanged);
                }
                let raw = json!({"mcp": {"servers": {name: {"enabled": !blocked}}}}).to_string();
                let mut params = json!({"raw": raw, "note": format!("defenseclawd: MCP server {name} {}", if blocked { "blocked" } else { "allowed" })});
                if let Some(h) = cfg["hash"].as_str() {
                    params["baseHash"] = Value::String(h.to_owned());
                }
                match rpc.call("config.patch", params).await {
                    Ok(_) => {
                        return Ok(EnforceResult::Done(
                            json!({"method": "config.patch", "path": format!("mcp.servers.{name}.enabled"), "enabled": !blocked}),
                        ));
                    }
                    Err(e)
                        if attempt == 0
                            && matches!(e, RpcError::Gateway { .. })
                            && e.to_string().to_lowercase().contains("hash") =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(RpcError::Timeout)
        }
    }
}

async fn apply_pending<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    for (kind, name, blocked) in engine.shared.take_pending() {
        let verb = if blocked { "block" } else { "allow" };
        match apply_one(engine, rpc, kind, &name, blocked).await {
            Ok(applied) => {
                engine.shared.clear_pending(kind, &name, blocked);
                let (outcome, reason, details) = match applied {
                    EnforceResult::Done(d) => ("applied", format!("{verb} applied in OpenClaw"), d),
                    EnforceResult::Unchanged => (
                        "unchanged",
                        format!("{verb}: OpenClaw already in that state"),
                        json!({}),
                    ),
                    EnforceResult::Absent => (
                        "absent",
                        format!("{verb}: not configured in OpenClaw"),
                        json!({}),
                    ),
                };
                engine.audit_detached(MonitorAudit {
                    action: "openclaw.enforce".into(),
                    target: Some((kind, name.clone())),
                    outcome: outcome.into(),
                    reason,
                    details,
                });
            }
            Err(RpcError::Disconnected) => return,
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "openclaw: enforcement not applied; will retry");
                engine.audit_detached(MonitorAudit {
                    action: "openclaw.enforce".into(),
                    target: Some((kind, name.clone())),
                    outcome: "error".into(),
                    reason: format!("{verb} not applied yet (will retry): {e}"),
                    details: json!({}),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str, pin: Option<&str>) -> Result<Endpoint, OpenClawError> {
        Endpoint::parse(&OpenClawSettings {
            url: url.into(),
            tls_pin_sha256: pin.map(str::to_owned),
            ..OpenClawSettings::default()
        })
    }

    #[test]
    fn ws_only_for_loopback() {
        assert!(ep("ws://127.0.0.1:18789/", None).is_ok());
        assert!(ep("ws://localhost:1/", None).is_ok());
        assert!(ep("ws://[::1]:1/", None).is_ok());
        assert!(ep("ws://10.0.0.5:18789/", None).is_err());
        assert!(ep("ws://gateway.example:18789/", None).is_err());
        assert!(ep("wss://gateway.example:18789/", None).is_ok());
        assert!(ep("http://127.0.0.1/", None).is_err());
        assert!(ep("ws://user:pw@127.0.0.1/", None).is_err());
        assert!(ep("ws://127.0.0.1/", Some(&"ab".repeat(32))).is_err());
        assert!(ep("wss://gw.example/", Some(&"ab".repeat(32))).is_ok());
    }

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

    #[test]
    fn backoff_is_capped() {
        let s = OpenClawSettings {
            backoff_initial_ms: 100,
            backoff_max_secs: 1,
            ..OpenClawSettings::default()
        };
        for a in 0..40 {
            let d = backoff_delay(&s, a);
            assert!(d <= Duration::from_secs(1));
            assert!(d >= Duration::from_millis(50));
        }
    }

    #[test]
    fn mcp_servers_are_read_from_config() {
        let cfg = json!({"hash": "h", "config": {"mcp": {"servers": {"a": {"command": "x"}, "b": {"enabled": false}}}}});
        let m = mcp_servers_of(&cfg);
        assert_eq!(m.get("a"), Some(&true));
        assert_eq!(m.get("b"), Some(&false));
    }
}
