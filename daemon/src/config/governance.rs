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
    /// The optional LLM analyzer (off by default).
    pub llm: LlmSettings,
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
            llm: LlmSettings::default(),
        }
    }
}

/// `[scanner.llm]`: the optional LLM analyzer. An OpenAI-compatible chat
/// endpoint is asked about skills whose static findings fall between
/// `min_severity` and `max_severity`; its verdict is a finding of its own
/// (`llm.verdict`), beside the static ones, never replacing them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// Ask the analyzer at all.
    pub enabled: bool,
    /// API base: `POST {base_url}/chat/completions`. https, or plain http to
    /// this machine only (localhost, 127.0.0.0/8, ::1).
    pub base_url: String,
    /// The model name sent in each request.
    pub model: String,
    /// File holding the API key (a regular file, 0600 or tighter). Without
    /// it the key comes from `DEFENSECLAW_LLM_API_KEY`, the systemd credential
    /// `llm-api-key` or `<state dir>/.env`; none at all sends no key.
    pub key_file: Option<PathBuf>,
    /// Lowest static severity a skill must reach to be reviewed.
    pub min_severity: Severity,
    /// Highest static severity still reviewed (above it the skill is already
    /// rated high enough; the analyzer never lowers a rating).
    pub max_severity: Severity,
    /// Review skills with no static finding too.
    pub review_clean: bool,
    /// A `malicious` verdict below this confidence is reported at MEDIUM, not HIGH.
    pub min_confidence: f64,
    /// Time for one review, waiting for a slot included, in milliseconds.
    pub timeout_ms: u64,
    /// Most bytes of the skill's text sent (SKILL.md first; the rest is cut).
    pub max_input_bytes: usize,
    /// Largest answer read; a larger one is an analyzer error.
    pub max_response_bytes: usize,
    /// `max_tokens` asked of the model.
    pub max_tokens: u32,
    /// Reviews in flight at once; others wait within their timeout.
    pub max_concurrent: usize,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: String::new(),
            model: String::new(),
            key_file: None,
            min_severity: Severity::Low,
            max_severity: Severity::Medium,
            review_clean: false,
            min_confidence: 0.7,
            timeout_ms: 30_000,
            max_input_bytes: 64 * 1024,
            max_response_bytes: 64 * 1024,
            max_tokens: 400,
            max_concurrent: 2,
        }
    }
}

impl LlmSettings {
    /// `{base_url}/chat/completions`: https, or http to this machine only; no
    /// credentials, query or fragment in the URL.
    pub fn endpoint(&self) -> std::result::Result<url::Url, String> {
        let mut url = url::Url::parse(self.base_url.trim()).map_err(|e| e.to_string())?;
        match url.scheme() {
            "https" => {}
            "http" if defenseclaw_common::loopback::is_loopback_url(&url) => {}
            "http" => {
                return Err(
                    "plain http is accepted only to this machine (localhost, 127.0.0.0/8, ::1); use https"
                        .into(),
                );
            }
            other => return Err(format!("scheme {other:?}: use https")),
        }
        if url.host().is_none() {
            return Err("no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials in the URL are refused; use key_file or the secret sources".into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("no query or fragment".into());
        }
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
        url.set_path(&path);
        Ok(url)
    }

    /// Bounds serde cannot check (only when enabled: a disabled analyzer's
    /// settings are never used).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        self.endpoint()
            .map_err(|e| ("scanner.llm.base_url", format!("{:?}: {e}", self.base_url)))?;
        if self.model.trim().is_empty() {
            return Err(("scanner.llm.model", "is required when enabled".into()));
        }
        if self.min_severity > self.max_severity {
            return Err((
                "scanner.llm.min_severity",
                "must not be above max_severity".into(),
            ));
        }
        if !(self.min_confidence.is_finite() && (0.0..=1.0).contains(&self.min_confidence)) {
            return Err((
                "scanner.llm.min_confidence",
                "must be between 0 and 1".into(),
            ));
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err((
                "scanner.llm.timeout_ms",
                "must be between 100 and 600000".into(),
            ));
        }
        if !(1024..=4 << 20).contains(&self.max_input_bytes) {
            return Err((
                "scanner.llm.max_input_bytes",
                "must be between 1024 and 4194304".into(),
            ));
        }
        if !(1024..=1 << 20).contains(&self.max_response_bytes) {
            return Err((
                "scanner.llm.max_response_bytes",
                "must be between 1024 and 1048576".into(),
            ));
        }
        if !(16..=8192).contains(&self.max_tokens) {
            return Err((
                "scanner.llm.max_tokens",
                "must be between 16 and 8192".into(),
            ));
        }
        if !(1..=64).contains(&self.max_concurrent) {
            return Err((
                "scanner.llm.max_concurrent",
                "must be between 1 and 64".into(),
            ));
        }
        Ok(())
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
        self.llm.validate()
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
