//! The `[openclaw]` settings, the gateway token that goes with them, and the
//! error of validating them when the monitor starts.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Deny it, so nothing runs without a rule allowing it.
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
    /// Folder of the gate plugin `openclaw setup` installs into the gateway
    /// (`plugins.load.paths`); default the packaged
    /// `/usr/share/defenseclaw/openclaw-plugin`. Must be absolute.
    pub plugin_dir: PathBuf,
    /// What the gate plugin does when the daemon cannot be asked: `deny`
    /// (default) or `allow`. Passed to the plugin as `onDaemonUnreachable`.
    pub on_daemon_unreachable: OnDaemonUnreachable,
    /// How long the gate plugin waits for a decision, in milliseconds (default
    /// 2000). Passed to the plugin as `decisionTimeoutMs`.
    pub decision_timeout_ms: u64,
    /// The daemon's gate socket the plugin asks (absolute). Default: `gate.sock`
    /// beside the control socket.
    pub gate_socket: Option<PathBuf>,
}

/// What the gate plugin does when the daemon does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDaemonUnreachable {
    /// Block the tool call (fail closed).
    #[default]
    Deny,
    /// Let the tool call run.
    Allow,
}

impl OnDaemonUnreachable {
    /// The plugin's config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// The packaged location of the gate plugin.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/share/defenseclaw/openclaw-plugin";

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
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            on_daemon_unreachable: OnDaemonUnreachable::Deny,
            decision_timeout_ms: 2000,
            gate_socket: None,
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
}
