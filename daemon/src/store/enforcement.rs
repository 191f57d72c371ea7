//! Targets and their enforcement decisions: setting a decision (with its audit
//! entry), registering targets seen elsewhere, reading targets with their
//! open-findings summary, and loading the decisions into memory at start-up.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::audit_log::merge_details;
use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{
    Actor, Decision, EnforcementAction, EnforcementState, Severity, Target, TargetKind,
};
use crate::state::StateCache;

/// A target with its open-findings summary, in the order [`target_row`] reads it.
const TARGET_SUMMARY: &str = "SELECT t.kind, t.name, t.state, t.reason, t.decided_by, t.decided_at, \
     count(f.id), max(f.severity) FROM targets t LEFT JOIN findings f \
     ON f.kind = t.kind AND f.name = t.name AND f.dismissed_at IS NULL";

/// A target with its decision and open findings summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    /// The skill or MCP server.
    pub target: Target,
    /// The decision in force on it.
    pub decision: Decision,
    /// Open (undismissed) findings.
    pub open_findings: u64,
    /// Highest open severity.
    pub max_open_severity: Option<Severity>,
}

/// Block, allow or unblock a target.
#[derive(Debug, Clone)]
pub struct SetEnforcement {
    /// The skill or MCP server to decide on.
    pub target: Target,
    /// What to do.
    pub action: EnforcementAction,
    /// Why, as the audit entry and the decision record it.
    pub reason: String,
    /// Who decided.
    pub actor: Actor,
    /// Extra audit details (merged into the entry's details).
    pub details: serde_json::Value,
}

/// What a [`SetEnforcement`] did.
#[derive(Debug, Clone)]
pub struct Enforced {
    /// Decision now in force.
    pub decision: Decision,
    /// False when the target already was in that state.
    pub changed: bool,
    /// Audit entry written.
    pub entry: Arc<Entry>,
    /// Open findings of the target, and their highest severity.
    pub open_findings: (u64, Option<Severity>),
}

impl Operation for SetEnforcement {
    type Effect = Enforced;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Enforced> {
        let Self {
            target,
            action,
            reason,
            actor,
            details,
        } = self;
        let conn = tx.conn();
        let now = tx.now();
        let previous = current_decision(conn, &target)?;
        let previous_state = previous
            .as_ref()
            .map_or(EnforcementState::None, |d| d.state);
        let wanted = action.resulting_state();
        let changed = previous_state != wanted;
        let decision = if changed {
            let decision = Decision {
                state: wanted,
                reason: reason.clone(),
                decided_by: actor.id.clone(),
                decided_at: now.clone(),
            };
            store_decision(conn, &target, &decision, &now)?;
            decision
        } else {
            previous.unwrap_or_default()
        };
        let entry = tx.append(&NewEntry {
            action: action.audit_action().to_owned(),
            target: Some(target.clone()),
            severity: None,
            outcome: if changed { "success" } else { "unchanged" }.to_owned(),
            reason,
            details: merge_details(
                serde_json::json!({
                    "previous_state": previous_state.as_str(),
                    "state": decision.state.as_str(),
                }),
                details,
            ),
            actor,
        })?;
        let open_findings = open_findings_of(conn, &target)?;
        if changed {
            tx.cache(target, decision.clone());
        }
        Ok(Enforced {
            decision,
            changed,
            entry,
            open_findings,
        })
    }
}

/// Record targets seen elsewhere (no decision); only new ones are audited.
#[derive(Debug, Clone)]
pub struct RegisterTargets {
    /// The targets seen.
    pub targets: Vec<Target>,
    /// Who reported them.
    pub actor: Actor,
    /// Where they were seen.
    pub source: String,
}

impl Operation for RegisterTargets {
    /// The targets that were new.
    type Effect = Vec<Target>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Vec<Target>> {
        let mut created = Vec::new();
        for target in self.targets {
            if ensure_target(tx, &target)? {
                tx.append(&NewEntry {
                    action: "target-discovered".into(),
                    target: Some(target.clone()),
                    severity: None,
                    outcome: "recorded".into(),
                    reason: format!("seen in {}", self.source),
                    details: serde_json::json!({"source": self.source}),
                    actor: self.actor.clone(),
                })?;
                created.push(target);
            }
        }
        Ok(created)
    }
}

/// Creates the target's row with the decision, or updates its decision: one
/// statement either way.
fn store_decision(
    conn: &Connection,
    target: &Target,
    decision: &Decision,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO targets (kind, name, state, reason, decided_by, decided_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (kind, name) DO UPDATE SET state = excluded.state,
             reason = excluded.reason, decided_by = excluded.decided_by,
             decided_at = excluded.decided_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            target.kind.as_str(),
            target.name,
            decision.state.as_str(),
            decision.reason,
            decision.decided_by,
            decision.decided_at,
            now,
        ])
    })
    .map(|_| ())
    .map_err(Error::store("updating a target"))
}

fn open_findings_of(conn: &Connection, target: &Target) -> Result<(u64, Option<Severity>)> {
    conn.prepare_cached(
        "SELECT count(*), max(severity) FROM findings
         WHERE kind = ?1 AND name = ?2 AND dismissed_at IS NULL",
    )
    .and_then(|mut s| {
        s.query_row(params![target.kind.as_str(), target.name], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
        })
    })
    .map(|(n, max)| (n.max(0) as u64, max.and_then(Severity::from_rank)))
    .map_err(Error::store("counting findings"))
}

fn current_decision(conn: &Connection, target: &Target) -> Result<Option<Decision>> {
    conn.prepare_cached(
        "SELECT state, reason, decided_by, decided_at FROM targets WHERE kind = ?1 AND name = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![target.kind.as_str(), target.name], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
    })
    .map_err(Error::store("reading a target"))?
    .map(|(state, reason, decided_by, decided_at)| {
        Ok(Decision {
            state: EnforcementState::parse(&state)
                .ok_or_else(|| Error::Internal(format!("unknown stored state {state:?}")))?,
            reason,
            decided_by,
            decided_at,
        })
    })
    .transpose()
}

/// Creates the target's row if it has none; true when it did. A created
/// target enters the in-memory state with the commit, so the target count
/// `status` reads from there always equals the rows.
pub(super) fn ensure_target(tx: &mut Tx<'_>, target: &Target) -> Result<bool> {
    let now = tx.now();
    let created = tx
        .conn()
        .prepare_cached(
            "INSERT OR IGNORE INTO targets (kind, name, created_at) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut s| s.execute(params![target.kind.as_str(), target.name, now]))
        .map(|n| n > 0)
        .map_err(Error::store("registering a target"))?;
    if created {
        tx.cache(target.clone(), Decision::default());
    }
    Ok(created)
}

/// Loads every stored decision into the in-memory state (at open).
pub(super) fn load_cache(conn: &Connection, cache: &StateCache) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare("SELECT kind, name, state, reason, decided_by, decided_at FROM targets")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    for row in rows {
        let (kind, name, state, reason, decided_by, decided_at) = row?;
        let (Ok(kind), Some(state)) = (kind.parse::<TargetKind>(), EnforcementState::parse(&state))
        else {
            tracing::warn!(%kind, %name, %state, "skipping a target row with unknown kind or state");
            continue;
        };
        cache.set(
            &Target { kind, name },
            Decision {
                state,
                reason,
                decided_by,
                decided_at,
            },
        );
    }
    Ok(())
}

impl Store {
    /// Targets, optionally of one kind, ordered by kind and name.
    pub async fn list_targets(&self, kind: Option<TargetKind>) -> Result<Vec<TargetRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{TARGET_SUMMARY} WHERE (?1 IS NULL OR t.kind = ?1)
                     GROUP BY t.kind, t.name ORDER BY t.kind, t.name"
                ))
                .map_err(Error::store("listing targets"))?;
            let rows = stmt
                .query_map(params![kind.map(TargetKind::as_str)], target_row)
                .map_err(Error::store("listing targets"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("listing targets"))?
                .into_iter()
                .collect()
        })
        .await
    }

    /// One target, or `None`.
    pub async fn get_target(&self, target: Target) -> Result<Option<TargetRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{TARGET_SUMMARY} WHERE t.kind = ?1 AND t.name = ?2 GROUP BY t.kind, t.name"
                ))
                .map_err(Error::store("reading a target"))?;
            stmt.query_row(params![target.kind.as_str(), target.name], target_row)
                .optional()
                .map_err(Error::store("reading a target"))?
                .transpose()
        })
        .await
    }
}

fn target_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TargetRow>> {
    let kind: String = r.get(0)?;
    let state: String = r.get(2)?;
    let max: Option<i64> = r.get(7)?;
    Ok((|| {
        Ok(TargetRow {
            target: Target {
                kind: kind.parse()?,
                name: r.get(1).map_err(Error::store("reading a target"))?,
            },
            decision: Decision {
                state: EnforcementState::parse(&state)
                    .ok_or_else(|| Error::Internal(format!("unknown stored state {state:?}")))?,
                reason: r.get(3).map_err(Error::store("reading a target"))?,
                decided_by: r.get(4).map_err(Error::store("reading a target"))?,
                decided_at: r.get(5).map_err(Error::store("reading a target"))?,
            },
            open_findings: r
                .get::<_, i64>(6)
                .map_err(Error::store("reading a target"))?
                .max(0) as u64,
            max_open_severity: max.and_then(Severity::from_rank),
        })
    })())
}
