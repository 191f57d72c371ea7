//! Settings of the governance services (`[stepup]`, `[token_vault]`,
//! `[scanner]`, `[admission]`). They live in the config leaf so that config
//! imports nothing above it; the services read them from here.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use crate::model::{Severity, Target, TargetKind};

/// What happens when nobody confirmed in time, or the provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unconfirmed {
    /// Fail closed: a requested or proposed block commits (without human confirmation); nothing else does.
    KeepBlocked,
    /// Nothing commits.
    Allow,
}

/// `[stepup]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepUpSettings {
    /// Require human approval (needs `[auth] mode = "oidc"`, `daemon_client_id` and the client secret).
    pub enabled: bool,
    /// Changes on a target whose open findings reach this need approval.
    pub min_severity: Severity,
    /// A scan report with a finding at or above this makes the daemon propose a block.
    pub auto_block_severity: Severity,
    /// `"requester"` (the operator who asked) or a list of approver `sub`s
    /// (used for the daemon's own proposals, which have no requester).
    #[serde(deserialize_with = "crate::config::lists::string_list")]
    pub approver: Vec<String>,
    /// How long the approver has, in seconds (≤ 300 keeps Auth0 on push).
    pub requested_expiry_secs: u32,
    /// When nobody answered in time.
    pub on_timeout: Unconfirmed,
    /// When the provider failed or refused.
    pub on_error: Unconfirmed,
    /// Most requests one operator may have pending at once (the daemon's own
    /// proposals are bounded by the number of targets and not counted).
    pub max_pending_per_requester: u32,
    /// Most operator requests pending on one target at once.
    pub max_pending_per_target: u32,
}

impl Default for StepUpSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            min_severity: Severity::High,
            auto_block_severity: Severity::Critical,
            approver: vec!["requester".into()],
            requested_expiry_secs: 300,
            on_timeout: Unconfirmed::KeepBlocked,
            on_error: Unconfirmed::KeepBlocked,
            max_pending_per_requester: 10,
            max_pending_per_target: 4,
        }
    }
}

impl StepUpSettings {
    /// Approvers from the configured list (not "requester").
    pub(crate) fn listed(&self) -> Vec<&str> {
        self.approver
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "requester")
            .collect()
    }
}

/// `[token_vault]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenVaultSettings {
    /// Serve `GetConnectionToken` (needs `[auth] mode = "oidc"`,
    /// `daemon_client_id` and the daemon's client secret).
    pub enabled: bool,
    /// Longest a provider token is kept in memory, seconds; 0 disables caching
    /// (every request is an exchange; concurrent ones still share one).
    pub cache_max_secs: u64,
    /// Tokens are dropped this many seconds before they expire.
    pub cache_margin_secs: u64,
    /// Bound on one exchange with the identity provider, seconds.
    pub request_timeout_secs: u64,
    /// AES-256-GCM key for stored subject credentials: 32 raw bytes or 64 hex
    /// digits, mode 0600, outside the state directory. The systemd credential
    /// `token-vault-key` wins over this.
    pub key_file: Option<PathBuf>,
    /// When step-up is on and a key is configured, granting connections asks
    /// the approver for `offline_access` and keeps their refresh token (sealed)
    /// so the server can start unattended.
    pub unattended: bool,
    /// Which local uids may receive a server's tokens without an operator
    /// token (through the approver's sealed credential): entries
    /// `"SERVER=UID[,UID...]"`; from the environment, separated by `;`.
    /// A server with no entry gets tokens only for a caller with an operator token.
    #[serde(deserialize_with = "crate::config::lists::entry_list")]
    pub server_uids: Vec<String>,
}

impl Default for TokenVaultSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_max_secs: 3600,
            cache_margin_secs: 60,
            request_timeout_secs: 10,
            key_file: None,
            unattended: true,
            server_uids: Vec::new(),
        }
    }
}

impl TokenVaultSettings {
    /// `server_uids` as server name → uids; an error says which entry is wrong.
    pub fn server_uid_map(&self) -> Result<HashMap<String, Vec<u32>>, ConfigError> {
        let bad = |reason: String| ConfigError::Value {
            field: "token_vault.server_uids",
            reason,
        };
        let mut map = HashMap::new();
        for entry in &self.server_uids {
            let Some((server, uids)) = entry.rsplit_once('=') else {
                return Err(bad(format!("{entry:?} is not SERVER=UID[,UID...]")));
            };
            crate::names::server_name("server", server)
                .map_err(|e| bad(format!("{entry:?}: {e}")))?;
            let uids = uids
                .split(',')
                .map(|u| {
                    u.trim()
                        .parse::<u32>()
                        .map_err(|_| bad(format!("{entry:?}: {u:?} is not a numeric uid")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if map.insert(server.to_owned(), uids).is_some() {
                return Err(bad(format!("{server:?} is listed twice")));
            }
        }
        Ok(map)
    }
}

/// `[scanner]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerSettings {
    /// Extra rule directories (TOML rule files) added to the built-in rules.
    #[serde(deserialize_with = "crate::config::lists::path_list")]
    pub rule_dirs: Vec<PathBuf>,
    /// Skill directories to watch: each subfolder is a skill, rescanned when it changes.
    #[serde(deserialize_with = "crate::config::lists::path_list")]
    pub watch_dirs: Vec<PathBuf>,
    /// Quiet time after the last change before a rescan, in milliseconds.
    pub watch_debounce_ms: u64,
    /// Time budget of one scan's walk, in seconds: a scan still walking then
    /// stops and is reported incomplete (a HIGH finding). Checked between files.
    pub scan_timeout_secs: u64,
    /// Threads of the scan pool (separate from the store's threads).
    pub scan_workers: usize,
    /// Scans waiting for a scan thread; one more is refused with RESOURCE_EXHAUSTED.
    pub scan_queue: usize,
    /// The Cisco `skill-scanner` adapter (`cisco-ai-skill-scanner` from PyPI).
    pub cisco_skill_scanner: AdapterSettings,
}

impl Default for ScannerSettings {
    fn default() -> Self {
        Self {
            rule_dirs: Vec::new(),
            watch_dirs: Vec::new(),
            watch_debounce_ms: 500,
            scan_timeout_secs: 30,
            scan_workers: 2,
            scan_queue: 32,
            cisco_skill_scanner: AdapterSettings {
                enabled: false,
                path: PathBuf::from("skill-scanner"),
                timeout_secs: 120,
            },
        }
    }
}

/// An external scanner run as a subprocess.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSettings {
    /// Run it (only when installed).
    pub enabled: bool,
    /// Executable name or path.
    pub path: PathBuf,
    /// Kill it after this many seconds.
    pub timeout_secs: u64,
}

impl ScannerSettings {
    /// Bounds serde cannot check.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if !(1..=3600).contains(&self.scan_timeout_secs) {
            return Err((
                "scanner.scan_timeout_secs",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(1..=64).contains(&self.scan_workers) {
            return Err(("scanner.scan_workers", "must be between 1 and 64".into()));
        }
        if self.scan_queue > 4096 {
            return Err(("scanner.scan_queue", "must be at most 4096".into()));
        }
        Ok(())
    }
}

impl Default for AdapterSettings {
    fn default() -> Self {
        ScannerSettings::default().cisco_skill_scanner
    }
}

/// `[admission]`: what a scan decides (defaults from upstream's `skill_actions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// Skills with a finding at or above this are blocked.
    pub block_at: Severity,
    /// MCP servers with a finding at or above this are blocked (stricter by default).
    pub mcp_block_at: Severity,
    /// Targets (`skill/NAME`, `mcp/NAME`) admitted without scanning.
    #[serde(deserialize_with = "crate::config::lists::string_list")]
    pub allow_list: Vec<String>,
    /// Move a skill's folder to `<state dir>/quarantine/` when a scan blocks it
    /// (only folders the daemon knows as skills: OpenClaw-reported or in a watched directory).
    pub quarantine: bool,
    /// A quarantine or restore across file systems copies at most this many bytes.
    pub quarantine_max_bytes: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            block_at: Severity::High,
            mcp_block_at: Severity::Medium,
            allow_list: Vec::new(),
            quarantine: false,
            quarantine_max_bytes: 256 << 20,
        }
    }
}

impl AdmissionSettings {
    /// The blocking threshold for a kind.
    pub fn threshold(&self, kind: TargetKind) -> Severity {
        match kind {
            TargetKind::Skill => self.block_at,
            TargetKind::Mcp => self.mcp_block_at,
        }
    }

    /// Whether the target bypasses scanning.
    pub fn allow_listed(&self, target: &Target) -> bool {
        self.allow_list.iter().any(|e| *e == target.to_string())
    }
}
