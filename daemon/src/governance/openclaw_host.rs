//! The daemon side of the OpenClaw monitor: answers its questions from the
//! in-memory state and writes its decisions to the audit log.

use std::sync::Arc;

use crate::audit::NewEntry;
use crate::events::EnforcementChanged;
use crate::governance::skill_coverage::CoverageInbox;
use crate::model::{Actor, EnforcementState, Target, TargetKind};
use crate::openclaw::{self, Host, HostError, HostVerdict, MonitorAudit, MonitorHandle};
use crate::state::{StateCache, Verdict};
use crate::store::connections::GrantStatus;
use crate::store::{Audit, RegisterTargets, Store};

/// The governance core as the monitor sees it.
#[derive(Debug)]
pub struct GovernanceHost {
    cache: Arc<StateCache>,
    store: Store,
    coverage: Option<Arc<CoverageInbox>>,
}

impl GovernanceHost {
    /// Wraps the store and the in-memory state.
    pub fn new(cache: Arc<StateCache>, store: Store) -> Self {
        Self {
            cache,
            store,
            coverage: None,
        }
    }

    /// Hands the skills and tools OpenClaw reports to runtime coverage.
    pub fn with_coverage(mut self, inbox: Arc<CoverageInbox>) -> Self {
        self.coverage = Some(inbox);
        self
    }
}

fn to_kind(kind: openclaw::TargetKind) -> TargetKind {
    match kind {
        openclaw::TargetKind::Skill => TargetKind::Skill,
        openclaw::TargetKind::Mcp => TargetKind::Mcp,
    }
}

fn from_kind(kind: TargetKind) -> openclaw::TargetKind {
    match kind {
        TargetKind::Skill => openclaw::TargetKind::Skill,
        TargetKind::Mcp => openclaw::TargetKind::Mcp,
    }
}

/// A monitor name as a daemon target: an MCP tool `server/tool` belongs to its server.
pub(crate) fn target_of(kind: openclaw::TargetKind, name: &str) -> Option<Target> {
    let name = match kind {
        openclaw::TargetKind::Mcp => name.split('/').next().unwrap_or(name),
        openclaw::TargetKind::Skill => name,
    };
    crate::names::target_name("target.name", name).ok()?;
    Some(Target {
        kind: to_kind(kind),
        name: name.to_owned(),
    })
}

fn monitor_actor() -> Actor {
    Actor {
        id: "system:openclaw-monitor".into(),
        name: "openclaw-monitor".into(),
        ..Actor::system()
    }
}

/// The daemon's enforcement verdict on a monitor target, from memory.
pub fn verdict_in(cache: &StateCache, kind: openclaw::TargetKind, name: &str) -> HostVerdict {
    let whole = match cache.check(to_kind(kind), name) {
        Verdict::Blocked(d) => return HostVerdict::Blocked { reason: d.reason },
        Verdict::Allowed(_) => HostVerdict::Allowed,
        Verdict::Unknown => HostVerdict::Unknown,
    };
    // A tool of a blocked MCP server is blocked with it.
    if let (openclaw::TargetKind::Mcp, Some((server, _))) = (kind, name.split_once('/'))
        && let Verdict::Blocked(d) = cache.check(TargetKind::Mcp, server)
    {
        return HostVerdict::Blocked { reason: d.reason };
    }
    whole
}

impl Host for GovernanceHost {
    fn verdict(&self, kind: openclaw::TargetKind, name: &str) -> HostVerdict {
        verdict_in(&self.cache, kind, name)
    }

    async fn enforced_targets(&self) -> Vec<(openclaw::TargetKind, String, bool)> {
        self.cache
            .enforced()
            .into_iter()
            .map(|(t, state)| {
                (
                    from_kind(t.kind),
                    t.name,
                    state == EnforcementState::Blocked,
                )
            })
            .collect()
    }

    async fn audit(&self, entry: MonitorAudit) -> Result<(), HostError> {
        let mut details = entry.details;
        let target = entry.target.as_ref().and_then(|(k, n)| target_of(*k, n));
        if let (Some((_, name)), serde_json::Value::Object(map)) = (&entry.target, &mut details) {
            map.entry("openclaw_name")
                .or_insert_with(|| serde_json::json!(name));
        }
        self.store
            .write(Audit(NewEntry {
                action: entry.action,
                target,
                severity: None,
                outcome: entry.outcome,
                reason: entry.reason,
                details,
                actor: monitor_actor(),
            }))
            .await
            .map(|_| ())
            .map_err(|e| HostError(e.to_string()))
    }

    fn skills_reported(&self, skills: openclaw::ReportedSkills) {
        if let Some(c) = &self.coverage {
            c.skills(skills);
        }
    }

    fn tools_reported(&self, tools: Vec<openclaw::ReportedTool>) {
        if let Some(c) = &self.coverage {
            c.tools(tools);
        }
    }

    fn wants_tool_catalog(&self) -> bool {
        self.coverage.as_ref().is_some_and(|c| c.wants_tools())
    }

    async fn vault_servers(&self) -> Option<std::collections::BTreeSet<String>> {
        let grants = match self.store.list_grants(None).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "could not read Token Vault grants for MCP wiring");
                return None;
            }
        };
        let servers = grants
            .into_iter()
            .filter(|g| g.status != GrantStatus::Revoked)
            .map(|g| g.server)
            .filter(|s| matches!(self.cache.check(TargetKind::Mcp, s), Verdict::Allowed(_)))
            .collect();
        Some(servers)
    }

    async fn observe_targets(&self, kind: openclaw::TargetKind, names: Vec<String>) {
        let targets: Vec<Target> = names.iter().filter_map(|n| target_of(kind, n)).collect();
        if targets.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .write(RegisterTargets {
                targets,
                actor: monitor_actor(),
                source: "openclaw".into(),
            })
            .await
        {
            tracing::warn!(error = %e, "could not record targets seen in OpenClaw");
        }
    }
}

/// Pushes every committed enforcement change into OpenClaw until the channel closes.
pub async fn forward_enforcement(
    monitor: MonitorHandle,
    mut changes: tokio::sync::broadcast::Receiver<EnforcementChanged>,
    cache: Arc<StateCache>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(change) => {
                monitor.apply_enforcement(
                    from_kind(change.target.kind),
                    &change.target.name,
                    change.state == EnforcementState::Blocked,
                );
                // An MCP server allowed (with connections) or blocked: its
                // Token Vault wiring in OpenClaw follows.
                if change.target.kind == TargetKind::Mcp {
                    monitor.rewire_mcp();
                }
            }
            Err(RecvError::Lagged(_)) => {
                // Missed some: re-apply the whole current state.
                for (t, state) in cache.enforced() {
                    monitor.apply_enforcement(
                        from_kind(t.kind),
                        &t.name,
                        state == EnforcementState::Blocked,
                    );
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
