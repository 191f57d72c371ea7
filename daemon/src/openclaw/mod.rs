//! OpenClaw gateway monitor and runtime enforcement.
//!
//! One authenticated WebSocket connection to the OpenClaw gateway: it watches
//! what the agent does (`session.tool` observations), answers exec and plugin
//! approvals according to the daemon's policy, and pushes the daemon's
//! skill/MCP block decisions into OpenClaw (`skills.update`, `config.patch`).
//!
//! The daemon integrates through [`Host`] (enforcement verdicts, audit store,
//! target registry) and [`MonitorHandle`] (status, approvals, enforcement).
//!
//! Configuration (`[openclaw]`, every key optional):
//!
//! ```toml
//! [openclaw]
//! enabled = true
//! url = "ws://127.0.0.1:18789/"        # ws:// only for loopback; wss:// otherwise
//! # tls_pin_sha256 = "ab:cd:..."       # wss:// only
//! exec_default = "ask"                 # or "deny"
//! deny_patterns = ['\bterraform\s+destroy\b']
//! allow_patterns = ['^(ls|pwd|git status)(\s|$)']
//! builtin_deny_rules = true
//! request_timeout_secs = 30
//! handshake_timeout_secs = 15
//! backoff_initial_ms = 1000
//! backoff_max_secs = 30
//! auth_retry_secs = 300
//! max_frame_bytes = 26214400
//! audit_queue_capacity = 8192
//! ```
//!
//! Exec approvals: a deny rule (built-in or `deny_patterns`) or a command
//! touching a blocked skill's directory → `deny`; otherwise every text form of
//! the command (command line, argv joined) covered by `allow_patterns` and free
//! of shell control operators → `allow-once`; otherwise `exec_default`
//! (`ask` leaves it to a human, audited as `deferred`). Empty commands are
//! denied. `allow-always` is never sent. Plugin approvals for an MCP tool are
//! denied when the server (target `<server>`) or the tool (target
//! `<server>/<tool>`) is blocked; others are left to a human.

pub mod bench;
mod conn;
mod device;
mod engine;
mod peer;
mod policy;
mod redact;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use policy::{BUILTIN_DENY_RULES, Policy, PolicyDecision};

/// Default gateway endpoint (OpenClaw's default loopback port, root path).
pub const DEFAULT_URL: &str = "ws://127.0.0.1:18789/";
/// File name of the daemon's Ed25519 device key inside the state directory.
pub const DEVICE_KEY_FILE: &str = "openclaw-device.key";
/// Scopes the monitor requests. `operator.admin` is needed to see approvals
/// requested by other clients and for `config.*` / `skills.update`.
pub const REQUESTED_SCOPES: [&str; 4] = [
    "operator.read",
    "operator.write",
    "operator.admin",
    "operator.approvals",
];

/// What happens to an exec approval no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecDefault {
    /// Leave the approval to a human (audit outcome `deferred`).
    #[default]
    Ask,
    /// Deny it.
    Deny,
}

/// `[openclaw]` section of the daemon configuration
/// (environment: `DEFENSECLAW_OPENCLAW__<KEY>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenClawSettings {
    /// Connect to the OpenClaw gateway at all (default `true`).
    pub enabled: bool,
    /// Gateway WebSocket URL (default `ws://127.0.0.1:18789/`). `ws://` is only
    /// accepted for loopback hosts; use `wss://` for anything else.
    pub url: String,
    /// Optional SHA-256 fingerprint (hex, colons allowed) of the gateway's TLS
    /// certificate; when set, only that certificate is accepted (`wss://` only).
    pub tls_pin_sha256: Option<String>,
    /// What to answer for exec approvals no rule decides: `ask` (leave to a
    /// human) or `deny` (default `ask`).
    pub exec_default: ExecDefault,
    /// Extra deny rules (regular expressions, case-insensitive) matched against
    /// the command line of exec approvals; they extend the built-in set.
    pub deny_patterns: Vec<String>,
    /// Allow rules (regular expressions, case-insensitive). A command matching
    /// one (and no deny rule, and containing no shell control operators) is
    /// answered `allow-once`. `allow-always` is never sent.
    pub allow_patterns: Vec<String>,
    /// Use the built-in deny rules (download piped to a shell, reverse shells,
    /// credential files, destructive deletes). Default `true`.
    pub builtin_deny_rules: bool,
    /// Timeout for one gateway RPC, in seconds (default 30).
    pub request_timeout_secs: u64,
    /// Timeout for dialing plus the `connect` handshake, in seconds (default 15).
    pub handshake_timeout_secs: u64,
    /// First reconnect delay in milliseconds (default 1000); doubles per failure.
    pub backoff_initial_ms: u64,
    /// Cap of the reconnect delay in seconds (default 30).
    pub backoff_max_secs: u64,
    /// Delay between retries after an authentication failure, in seconds
    /// (default 300): the monitor does not hammer a gateway that refuses it.
    pub auth_retry_secs: u64,
    /// Largest accepted WebSocket message in bytes (default 26214400, the
    /// gateway's own `maxPayload`); bigger frames drop the connection.
    pub max_frame_bytes: usize,
    /// Capacity of the in-memory audit queue (default 8192). When full, the
    /// connection stops reading (backpressure) instead of dropping entries.
    pub audit_queue_capacity: usize,
    /// Uid that must own the gateway's socket on a `ws://` (loopback) URL before
    /// the token is sent. Default: the daemon's own uid. Root is always
    /// accepted (it can read the token from the daemon anyway). Not used for
    /// `wss://`, where the certificate (pinned with `tls_pin_sha256`) decides.
    pub gateway_uid: Option<u32>,
}

impl Default for OpenClawSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            url: DEFAULT_URL.to_owned(),
            tls_pin_sha256: None,
            exec_default: ExecDefault::Ask,
            deny_patterns: Vec::new(),
            allow_patterns: Vec::new(),
            builtin_deny_rules: true,
            request_timeout_secs: 30,
            handshake_timeout_secs: 15,
            backoff_initial_ms: 1000,
            backoff_max_secs: 30,
            auth_retry_secs: 300,
            max_frame_bytes: 26_214_400,
            audit_queue_capacity: 8192,
            gateway_uid: None,
        }
    }
}

/// The gateway's shared token. Debug/Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayToken(String);

impl GatewayToken {
    /// Wraps a token (surrounding whitespace is trimmed).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayToken(***)")
    }
}

/// Kind of a daemon target the monitor deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// An OpenClaw skill (key = `skillKey` / skill name).
    Skill,
    /// An MCP server (key = `mcp.servers.<name>`); a single tool is `<server>/<tool>`.
    Mcp,
}

/// In-memory enforcement verdict of the daemon for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVerdict {
    /// Blocked, with the reason recorded in the daemon.
    Blocked {
        /// Why it is blocked.
        reason: String,
    },
    /// Explicitly allowed.
    Allowed,
    /// Neither.
    Unknown,
}

/// Error reported by the host (e.g. the audit store failed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// One audit entry produced by the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorAudit {
    /// What happened, e.g. `openclaw.exec.approval`, `openclaw.tool`.
    pub action: String,
    /// The daemon target concerned, if any.
    pub target: Option<(TargetKind, String)>,
    /// `allowed`, `denied`, `deferred`, `observed`, `error`, `applied`, `pending`, `connected`, `auth_failed`.
    pub outcome: String,
    /// Human-readable reason.
    pub reason: String,
    /// Structured details (approval id, command/tool, session, rule ...). Never secrets.
    pub details: serde_json::Value,
}

/// What the daemon provides to the monitor.
pub trait Host: Send + Sync + 'static {
    /// In-memory enforcement verdict for a target (kind = Skill|Mcp), no disk I/O.
    fn verdict(&self, kind: TargetKind, name: &str) -> HostVerdict;
    /// Every target currently blocked/allowed in the daemon, for reconciliation after (re)connect.
    fn enforced_targets(&self) -> impl Future<Output = Vec<(TargetKind, String, bool)>> + Send;
    /// Durably append an audit entry; returns after it is committed.
    fn audit(&self, entry: MonitorAudit) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Skills/MCP servers seen in OpenClaw (record as targets).
    fn observe_targets(
        &self,
        kind: TargetKind,
        names: Vec<String>,
    ) -> impl Future<Output = ()> + Send;
}

/// Errors starting the monitor.
#[derive(Debug, thiserror::Error)]
pub enum OpenClawError {
    /// Invalid `[openclaw]` settings.
    #[error("invalid openclaw settings: {0}")]
    Config(String),
    /// The device key could not be created or loaded.
    #[error("openclaw device key: {0}")]
    DeviceKey(String),
}

/// Connection state shown by `defenseclawctl status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Monitor disabled in the configuration.
    Disabled,
    /// Dialing / handshaking.
    Connecting,
    /// `hello-ok` received; monitoring.
    Connected,
    /// Waiting before the next reconnect attempt.
    Backoff,
    /// The gateway refused our credentials; retrying slowly.
    AuthFailed,
}

/// The `openclaw` object of `status -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Connection state.
    pub state: GatewayState,
    /// Configured gateway URL.
    pub url: String,
    /// Gateway version from `hello-ok` (`server.version`).
    pub server_version: Option<String>,
    /// Negotiated protocol version.
    pub protocol: Option<u32>,
    /// Scopes granted by the gateway.
    pub scopes: Vec<String>,
    /// Requested scopes the gateway did not grant.
    pub missing_scopes: Vec<String>,
    /// RFC 3339 time of the last event received.
    pub last_event_at: Option<String>,
    /// Last connection/protocol error (never contains secrets).
    pub last_error: Option<String>,
    /// Why the gateway is trusted with the token (`peer-uid <n>`, `tls-pin`,
    /// `tls`) or why it is not (`refused: …`); `None` before the first dial.
    pub gateway_check: Option<String>,
}

/// Kind of an OpenClaw approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalKind {
    /// `exec.approval.*`
    Exec,
    /// `plugin.approval.*`
    Plugin,
}

/// A pending (or recently resolved) approval the monitor saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Approval id.
    pub id: String,
    /// Exec or plugin approval.
    pub kind: ApprovalKind,
    /// The command (exec) or tool (plugin, `server/tool` for MCP tools).
    pub subject: String,
    /// Session key, when known.
    pub session_key: Option<String>,
    /// Agent id, when known.
    pub agent_id: Option<String>,
    /// Creation time (ms since epoch) as reported by the gateway.
    pub created_at_ms: Option<i64>,
    /// Expiry time (ms since epoch) as reported by the gateway.
    pub expires_at_ms: Option<i64>,
    /// The daemon's decision: `allowed`, `denied` or `deferred`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// Final decision seen in `*.approval.resolved` (`allow-once`, `deny`, ...), if resolved.
    pub resolved_decision: Option<String>,
    /// Who resolved it, if resolved.
    pub resolved_by: Option<String>,
}

/// Entry point of the monitor.
#[derive(Debug)]
pub struct OpenClawMonitor;

impl OpenClawMonitor {
    /// Validates the settings, loads (or creates) the device key in `state_dir`
    /// and spawns the connection task on the current tokio runtime. With
    /// `enabled = false` nothing is spawned and the status reads `disabled`.
    pub fn start<H: Host>(
        settings: OpenClawSettings,
        token: Option<GatewayToken>,
        state_dir: &Path,
        host: Arc<H>,
        cancel: CancellationToken,
    ) -> Result<MonitorHandle, OpenClawError> {
        let (done_tx, done_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(&settings));
        if !settings.enabled {
            let _ = done_tx.send(true);
            return Ok(MonitorHandle {
                shared,
                done: done_rx,
            });
        }
        let endpoint = conn::Endpoint::parse(&settings)?;
        let policy = Policy::from_settings(&settings)?;
        let device = device::DeviceIdentity::load_or_create(state_dir)?;
        shared.set_state(GatewayState::Connecting);
        let ctx = conn::Context::new(
            settings,
            token,
            endpoint,
            policy,
            device,
            host,
            shared.clone(),
        );
        tokio::spawn(async move {
            conn::run(ctx, cancel).await;
            let _ = done_tx.send(true);
        });
        Ok(MonitorHandle {
            shared,
            done: done_rx,
        })
    }
}

/// Handle to the running monitor; cheap to clone.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
}

impl MonitorHandle {
    /// Current connection status.
    pub fn status(&self) -> GatewayStatus {
        self.shared.status()
    }

    /// Approvals seen (pending and recently resolved) with the daemon's decision, newest last.
    pub fn approvals(&self) -> Vec<ApprovalView> {
        self.shared.approvals()
    }

    /// Pushes a committed block/allow decision into OpenClaw: a skill is
    /// disabled/enabled with `skills.update`, an MCP server with a
    /// `config.patch` on `mcp.servers.<name>.enabled`. When the gateway is not
    /// connected the action stays pending and is applied on reconnect.
    pub fn apply_enforcement(&self, kind: TargetKind, name: &str, blocked: bool) {
        if self.status().state == GatewayState::Disabled {
            // Monitor disabled (or stopped before it ever ran): nothing to push to.
            return;
        }
        self.shared.push_enforcement(kind, name, blocked);
    }

    /// How many enforcement changes wait for the gateway (no copies made).
    pub fn pending_enforcement_count(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Enforcement actions not yet applied in OpenClaw.
    pub fn pending_enforcements(&self) -> Vec<(TargetKind, String, bool)> {
        lock(&self.shared.pending)
            .iter()
            .map(|((k, n), b)| (*k, n.clone(), *b))
            .collect()
    }

    /// Resolves once the connection task has stopped (after cancellation) and
    /// the audit queue has been drained into the host.
    pub async fn stopped(&self) {
        let mut rx = self.done.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

const MAX_APPROVALS_KEPT: usize = 1000;

#[derive(Debug)]
pub(crate) struct Shared {
    status: Mutex<GatewayStatus>,
    last_event_ms: AtomicI64,
    approvals: Mutex<Approvals>,
    pending: Mutex<BTreeMap<(TargetKind, String), bool>>,
    pending_notify: Notify,
}

#[derive(Debug, Default)]
struct Approvals {
    order: std::collections::VecDeque<String>,
    by_id: std::collections::HashMap<String, ApprovalView>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn new(settings: &OpenClawSettings) -> Self {
        Self {
            status: Mutex::new(GatewayStatus {
                state: GatewayState::Disabled,
                url: settings.url.clone(),
                server_version: None,
                protocol: None,
                scopes: Vec::new(),
                missing_scopes: Vec::new(),
                last_event_at: None,
                last_error: None,
                gateway_check: None,
            }),
            last_event_ms: AtomicI64::new(0),
            approvals: Mutex::new(Approvals::default()),
            pending: Mutex::new(BTreeMap::new()),
            pending_notify: Notify::new(),
        }
    }

    fn status(&self) -> GatewayStatus {
        let mut s = lock(&self.status).clone();
        let ms = self.last_event_ms.load(Ordering::Relaxed);
        if ms > 0 {
            s.last_event_at = format_ms(ms);
        }
        s
    }

    pub(crate) fn set_state(&self, state: GatewayState) {
        lock(&self.status).state = state;
    }

    pub(crate) fn set_gateway_check(&self, check: &str) {
        lock(&self.status).gateway_check = Some(check.to_owned());
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut GatewayStatus)) {
        f(&mut lock(&self.status));
    }

    pub(crate) fn touch_event(&self) {
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn approvals(&self) -> Vec<ApprovalView> {
        let a = lock(&self.approvals);
        a.order
            .iter()
            .filter_map(|id| a.by_id.get(id).cloned())
            .collect()
    }

    pub(crate) fn has_approval(&self, id: &str) -> bool {
        lock(&self.approvals).by_id.contains_key(id)
    }

    pub(crate) fn record_approval(&self, view: ApprovalView) {
        let mut a = lock(&self.approvals);
        if a.by_id.insert(view.id.clone(), view.clone()).is_none() {
            a.order.push_back(view.id);
        }
        while a.order.len() > MAX_APPROVALS_KEPT {
            if let Some(old) = a.order.pop_front() {
                a.by_id.remove(&old);
            }
        }
    }

    pub(crate) fn update_approval(
        &self,
        id: &str,
        f: impl FnOnce(&mut ApprovalView),
    ) -> Option<ApprovalView> {
        let mut a = lock(&self.approvals);
        let v = a.by_id.get_mut(id)?;
        f(v);
        Some(v.clone())
    }

    fn push_enforcement(&self, kind: TargetKind, name: &str, blocked: bool) {
        lock(&self.pending).insert((kind, name.to_owned()), blocked);
        self.pending_notify.notify_one();
    }

    pub(crate) fn take_pending(&self) -> Vec<(TargetKind, String, bool)> {
        lock(&self.pending)
            .iter()
            .map(|((k, n), b)| (*k, n.clone(), *b))
            .collect()
    }

    /// Removes a pending action if it still has the value that was applied.
    pub(crate) fn clear_pending(&self, kind: TargetKind, name: &str, blocked: bool) {
        let mut p = lock(&self.pending);
        if p.get(&(kind, name.to_owned())) == Some(&blocked) {
            p.remove(&(kind, name.to_owned()));
        }
    }

    pub(crate) fn pending_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.pending_notify.notified()
    }
}

/// Milliseconds since the epoch, as the gateway protocol stamps them.
pub(crate) use crate::clock::unix_now_ms as now_ms;

fn format_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let t = GatewayToken::new("super-secret");
        assert_eq!(format!("{t:?}"), "GatewayToken(***)");
    }

    #[test]
    fn settings_defaults_and_unknown_keys() {
        let s: OpenClawSettings = toml::from_str("").unwrap();
        assert_eq!(s, OpenClawSettings::default());
        assert!(s.enabled);
        assert_eq!(s.url, DEFAULT_URL);
        assert!(toml::from_str::<OpenClawSettings>("bogus = 1").is_err());
        let s: OpenClawSettings = toml::from_str("exec_default = \"deny\"").unwrap();
        assert_eq!(s.exec_default, ExecDefault::Deny);
    }

    #[test]
    fn status_serializes_like_the_cli_expects() {
        let shared = Shared::new(&OpenClawSettings::default());
        let v = serde_json::to_value(shared.status()).unwrap();
        assert_eq!(v["state"], "disabled");
        assert_eq!(v["url"], DEFAULT_URL);
        for k in [
            "server_version",
            "protocol",
            "scopes",
            "missing_scopes",
            "last_event_at",
            "last_error",
            "gateway_check",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
