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

/// What the gate plugin does when the daemon does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUnreachable {
    /// Block the tool call (fail closed).
    #[default]
    Deny,
    /// Let the tool call run (fail open; audited nowhere, so not recommended).
    Allow,
}

impl OnUnreachable {
    /// `deny` or `allow`, as the plugin's `onDaemonUnreachable` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnreachable::Deny => "deny",
            OnUnreachable::Allow => "allow",
        }
    }
}

/// `[openclaw] tool_rules` entry action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolAction {
    /// Run it.
    Allow,
    /// Ask a named human (CIBA) first.
    Ask,
    /// Block it.
    Deny,
}

/// One parsed `[openclaw] tool_rules` entry: `<selector>=<allow|ask|deny>`.
/// A selector is a tool name (`browser`), `mcp:<server>/<tool>`, or
/// `mcp:<server>/*` (every tool of a server); `*` at the end of a tool name
/// matches any suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRule {
    /// The selector as written.
    pub selector: String,
    /// What a matching call gets.
    pub action: ToolAction,
}

impl ToolRule {
    /// Parses `selector=action`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (sel, action) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected <tool>=<allow|ask|deny>, e.g. \"browser=deny\" or \"mcp:github/delete_repo=ask\""))?;
        let sel = sel.trim();
        let action = match action.trim() {
            "allow" => ToolAction::Allow,
            "ask" => ToolAction::Ask,
            "deny" | "block" => ToolAction::Deny,
            other => return Err(format!("{s:?}: action {other:?} is not allow, ask or deny")),
        };
        let body = sel.strip_prefix("mcp:").unwrap_or(sel);
        let valid = !body.is_empty()
            && body.len() <= 200
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '*'));
        if !valid || (sel.starts_with("mcp:") && !body.contains('/')) {
            return Err(format!(
                "{s:?}: selector must be a tool name or mcp:<server>/<tool> (letters, digits, _ - . and a trailing *)"
            ));
        }
        Ok(Self {
            selector: sel.to_owned(),
            action,
        })
    }

    /// Whether the rule covers `tool` (and, for MCP tools, `server`/`mcp_tool`).
    pub fn matches(&self, tool: &str, mcp: Option<(&str, &str)>) -> bool {
        let glob = |pat: &str, s: &str| match pat.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => pat == s,
        };
        match self.selector.strip_prefix("mcp:") {
            Some(body) => {
                let Some((server, t)) = mcp else { return false };
                let (ps, pt) = body.split_once('/').unwrap_or((body, "*"));
                glob(ps, server) && glob(pt, t)
            }
            None => glob(&self.selector, tool),
        }
    }
}

/// `[openclaw]` section of the daemon configuration
/// (environment: `DEFENSECLAW_OPENCLAW__<KEY>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenClawSettings {
    /// Connect to the OpenClaw gateway at all (default `false`: a host without
    /// OpenClaw should not log a refused connection forever; turn it on where
    /// the gateway runs).
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
    /// Scan each skill OpenClaw reports (`skills.status`, again on
    /// `skills.changed`) when it appears and when its content changes, and
    /// apply admission (default `true`).
    pub scan_skills: bool,
    /// Add OpenClaw's skill directories (workspace and managed skills, each
    /// reported skill's parent) to the watched directories (default `true`).
    pub watch_skill_dirs: bool,
    /// Scan the MCP tool descriptions OpenClaw's tool catalog exposes for tool
    /// poisoning (default `true`; no MCP server is started for it).
    pub scan_tool_catalog: bool,
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
    /// Regular expressions (case-insensitive) over an agent's exec command, or
    /// over `<tool> <JSON arguments>` for other tools: a matching call waits for
    /// a named human's approval over CIBA (the approver of `[stepup]`).
    /// Environment: one comma-separated string.
    #[serde(deserialize_with = "crate::config::lists::string_list")]
    pub ask_patterns: Vec<String>,
    /// Per-tool rules, `<tool>=<allow|ask|deny>`: `"browser=deny"`,
    /// `"mcp:github/delete_repo=ask"`, `"mcp:scratch/*=allow"`. Deny wins over
    /// ask, ask over allow. Environment: one comma-separated string.
    #[serde(deserialize_with = "crate::config::lists::string_list")]
    pub tool_rules: Vec<String>,
    /// What the gate plugin does when the daemon does not answer within its
    /// decision timeout: `deny` (default) or `allow`. `openclaw setup` writes
    /// it into the plugin's config.
    pub on_daemon_unreachable: OnUnreachable,
    /// Folder of the gate plugin `openclaw setup` installs into the gateway
    /// (added to OpenClaw's `plugins.load.paths`); default the packaged
    /// `/usr/share/defenseclaw/openclaw-plugin`. Must be absolute.
    pub plugin_dir: PathBuf,
    /// How long the gate plugin waits for the daemon's decision, connecting
    /// included, in milliseconds (default 1500, 50 to 10000: the plugin's own
    /// bounds). `openclaw setup` writes it into the plugin's config as
    /// `decisionTimeoutMs`.
    pub decision_timeout_ms: u64,
    /// Absolute path of `defenseclawctl`, which OpenClaw runs as
    /// `defenseclawctl --socket <control socket> mcp exec <server> -- <command>`
    /// for an MCP server allowed with Token Vault connections while
    /// `openclaw setup` is in effect (default the packaged `/usr/bin/defenseclawctl`).
    pub ctl_path: PathBuf,
    /// The gate socket the OpenClaw plugin asks (default: `gate.sock` beside
    /// the control socket).
    pub gate_socket: Option<PathBuf>,
    /// Most gate connections open at once (default 32); one more is refused.
    pub gate_max_connections: usize,
    /// Most undecided calls on one gate connection (default 64); one more is
    /// answered with an error (the plugin blocks the call).
    pub gate_max_in_flight: usize,
    /// Largest gate request line in bytes (default 1 MiB); a larger one is
    /// answered with an error and the connection closed.
    pub gate_max_frame_bytes: usize,
    /// Most tool calls waiting for a human at once (default 16), and per
    /// agent session (default 4); more are denied so an agent cannot flood
    /// the approver's phone.
    pub max_pending_asks: usize,
    /// See `max_pending_asks`.
    pub max_pending_asks_per_session: usize,
}

impl OpenClawSettings {
    /// The parsed `tool_rules`.
    pub fn parsed_tool_rules(&self) -> Result<Vec<ToolRule>, OpenClawError> {
        self.tool_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ToolRule::parse(r)
                    .map_err(|e| OpenClawError::Config(format!("tool_rules[{i}]: {e}")))
            })
            .collect()
    }

    /// Checks what serde cannot: every ask pattern compiles, every tool rule
    /// parses, every bound is at least 1. (The exec deny/allow rules are
    /// checked by compiling them: [`super::policy::Policy::from_settings`].)
    pub fn validate(&self) -> Result<(), OpenClawError> {
        self.parsed_tool_rules()?;
        for (i, p) in self.ask_patterns.iter().enumerate() {
            regex::RegexBuilder::new(p)
                .case_insensitive(true)
                .size_limit(8 << 20)
                .build()
                .map_err(|e| OpenClawError::Config(format!("ask_patterns[{i}] {p:?}: {e}")))?;
        }
        for (field, v) in [
            ("gate_max_connections", self.gate_max_connections),
            ("gate_max_in_flight", self.gate_max_in_flight),
            ("max_pending_asks", self.max_pending_asks),
            (
                "max_pending_asks_per_session",
                self.max_pending_asks_per_session,
            ),
        ] {
            if v == 0 {
                return Err(OpenClawError::Config(format!("{field} must be at least 1")));
            }
        }
        if self.gate_max_frame_bytes < 1024 {
            return Err(OpenClawError::Config(
                "gate_max_frame_bytes must be at least 1024".into(),
            ));
        }
        if let Some(p) = &self.gate_socket
            && !p.is_absolute()
        {
            return Err(OpenClawError::Config(
                "gate_socket must be an absolute path".into(),
            ));
        }
        if !self.ctl_path.is_absolute() {
            return Err(OpenClawError::Config(
                "ctl_path must be an absolute path".into(),
            ));
        }
        if !self.plugin_dir.is_absolute() {
            return Err(OpenClawError::Config(
                "plugin_dir must be an absolute path".into(),
            ));
        }
        if !(50..=10_000).contains(&self.decision_timeout_ms) {
            return Err(OpenClawError::Config(
                "decision_timeout_ms must be between 50 and 10000 (the plugin's bounds)".into(),
            ));
        }
        Ok(())
    }
}

/// The packaged location of `defenseclawctl`.
pub const DEFAULT_CTL_PATH: &str = "/usr/bin/defenseclawctl";

/// The packaged location of the gate plugin.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/share/defenseclaw/openclaw-plugin";

impl Default for OpenClawSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            url: DEFAULT_URL.to_owned(),
            tls_pin_sha256: None,
            exec_default: ExecDefault::Ask,
            deny_patterns: Vec::new(),
            allow_patterns: Vec::new(),
            builtin_deny_rules: true,
            scan_skills: true,
            watch_skill_dirs: true,
            scan_tool_catalog: true,
            request_timeout_secs: 30,
            handshake_timeout_secs: 15,
            backoff_initial_ms: 1000,
            backoff_max_secs: 30,
            auth_retry_secs: 300,
            max_frame_bytes: 26_214_400,
            audit_queue_capacity: 8192,
            gateway_uid: None,
            ask_patterns: Vec::new(),
            tool_rules: Vec::new(),
            on_daemon_unreachable: OnUnreachable::Deny,
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            decision_timeout_ms: 1500,
            ctl_path: PathBuf::from(DEFAULT_CTL_PATH),
            gate_socket: None,
            gate_max_connections: 32,
            gate_max_in_flight: 64,
            gate_max_frame_bytes: 1024 * 1024,
            max_pending_asks: 16,
            max_pending_asks_per_session: 4,
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
        assert!(!s.enabled, "monitoring is on only where configured");
        assert_eq!(s.url, DEFAULT_URL);
        assert!(toml::from_str::<OpenClawSettings>("bogus = 1").is_err());
        let s: OpenClawSettings = toml::from_str("exec_default = \"deny\"").unwrap();
        assert_eq!(s.exec_default, ExecDefault::Deny);
    }

    #[test]
    fn tool_rules_parse_and_match() {
        let r = ToolRule::parse("browser=deny").unwrap();
        assert_eq!(r.action, ToolAction::Deny);
        assert!(r.matches("browser", None));
        assert!(!r.matches("browser2", None));
        let r = ToolRule::parse("mcp:github/delete_*=ask").unwrap();
        assert!(r.matches("github__delete_repo", Some(("github", "delete_repo"))));
        assert!(!r.matches("github__list", Some(("github", "list"))));
        assert!(!r.matches("delete_repo", None));
        let r = ToolRule::parse(" mcp:scratch/* = allow ").unwrap();
        assert!(r.matches("x", Some(("scratch", "anything"))));
        for bad in [
            "browser",
            "browser=maybe",
            "=deny",
            "mcp:github=deny",
            "a b=deny",
            "x;rm=deny",
        ] {
            assert!(ToolRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_bad_entry() {
        let s = OpenClawSettings {
            ask_patterns: vec!["ok".into(), "(".into()],
            ..OpenClawSettings::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("ask_patterns[1]"), "{e}");
        let s = OpenClawSettings {
            tool_rules: vec!["browser=nope".into()],
            ..OpenClawSettings::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("tool_rules[0]"), "{e}");
        assert!(OpenClawSettings::default().validate().is_ok());
    }
}
