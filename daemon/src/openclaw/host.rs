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
