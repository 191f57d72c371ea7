//! The contract between the monitor and the daemon: what the daemon answers
//! (verdicts, enforced targets) and what it records (audit entries, targets).

use std::future::Future;

use serde::{Deserialize, Serialize};

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
    /// Neither blocked nor allowed: the monitor falls back to its own rules.
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

/// One skill as OpenClaw reports it (`skills.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedSkill {
    /// `skillKey` (the name when absent).
    pub key: String,
    /// `name`.
    pub name: String,
    /// `baseDir`: the skill's folder (empty when not reported).
    pub base_dir: String,
    /// `source`, e.g. `openclaw-bundled`, `openclaw-workspace`.
    pub source: String,
    /// Disabled in OpenClaw.
    pub disabled: bool,
}

/// What one `skills.status` answer said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedSkills {
    /// The agent's workspace (its skills are in `<workspaceDir>/skills`).
    pub workspace_dir: Option<String>,
    /// The managed skills directory (`~/.openclaw/skills`).
    pub managed_skills_dir: Option<String>,
    /// The skills.
    pub skills: Vec<ReportedSkill>,
}

/// One MCP tool description from OpenClaw's tool catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedTool {
    /// The MCP server (or plugin) exposing it.
    pub server: String,
    /// The tool's name.
    pub name: String,
    /// Its full description, as the model sees it.
    pub description: String,
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
    /// The skills OpenClaw reported, for scanning new and changed ones. Must
    /// not block: the daemon queues the report (only the latest is kept).
    fn skills_reported(&self, _skills: ReportedSkills) {}
    /// MCP tool descriptions from OpenClaw's tool catalog, for tool-poisoning
    /// scans. Must not block (only the latest is kept).
    fn tools_reported(&self, _tools: Vec<ReportedTool>) {}
    /// Whether the monitor should read OpenClaw's tool catalog for
    /// [`Host::tools_reported`].
    fn wants_tool_catalog(&self) -> bool {
        false
    }
    /// MCP servers the daemon allows with Token Vault connections (a grant
    /// not revoked): OpenClaw starts them through `defenseclawctl mcp exec`
    /// while `openclaw setup` is in effect. `None` when it cannot be known
    /// now (nothing is rewritten then).
    fn vault_servers(
        &self,
    ) -> impl Future<Output = Option<std::collections::BTreeSet<String>>> + Send {
        async { None }
    }
}
