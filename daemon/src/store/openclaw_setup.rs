//! What `openclaw setup` changed in the gateway, kept durably so `--undo`
//! restores exactly that and reconciliation knows the gate should be there:
//! one row (the spec, the values found before setup, active or undone), written
//! together with its audit entry.

use rusqlite::{Connection, OptionalExtension, params};

use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::openclaw::{GateChange, GateSpec};

/// The recorded setup.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSetupRow {
    /// What setup put into the gateway.
    pub spec: GateSpec,
    /// Every setting setup changed, with the value found before the first setup.
    pub originals: Vec<GateChange>,
    /// False once undone.
    pub active: bool,
    /// Last change, RFC 3339.
    pub updated_at: String,
}

/// Records a setup: the spec and the settings it changed (merged with an
/// earlier active setup's originals, which win), audited as `openclaw-setup`.
#[derive(Debug)]
pub struct RecordGateSetup {
    /// What setup put into the gateway.
    pub spec: GateSpec,
    /// The settings this run found and changed (or found already right).
    pub changes: Vec<GateChange>,
    /// The operator.
    pub actor: Actor,
}

/// Records an undo, audited as `openclaw-setup-undo`.
#[derive(Debug)]
pub struct RecordGateUndo {
    /// What the undo changed.
    pub changes: Vec<GateChange>,
    /// The human approval of the undo (`human_confirmed`, `approver`,
    /// `request_id`) when step-up is on; `null` otherwise.
    pub approval: serde_json::Value,
    /// The operator.
    pub actor: Actor,
}

/// The sequence number of the audit entry written.
pub type GateAudited = u64;

fn read(conn: &Connection) -> Result<Option<GateSetupRow>> {
    let row = conn
        .query_row(
            "SELECT spec, originals, active, updated_at FROM openclaw_setup WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()
        .map_err(Error::store("reading the openclaw setup record"))?;
    let Some((spec, originals, active, updated_at)) = row else {
        return Ok(None);
    };
    let bad = |e: serde_json::Error| Error::Internal(format!("openclaw setup record: {e}"));
    Ok(Some(GateSetupRow {
        spec: serde_json::from_str(&spec).map_err(bad)?,
        originals: serde_json::from_str(&originals).map_err(bad)?,
        active: active != 0,
        updated_at,
    }))
}

fn write(
    conn: &Connection,
    spec: &GateSpec,
    originals: &[GateChange],
    active: bool,
    now: &str,
) -> Result<()> {
    let json = |v: serde_json::Result<String>| {
        v.map_err(|e| Error::Internal(format!("openclaw setup record: {e}")))
    };
    conn.execute(
        "INSERT INTO openclaw_setup (id, spec, originals, active, updated_at) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET spec = ?1, originals = ?2, active = ?3, updated_at = ?4",
        params![
            json(serde_json::to_string(spec))?,
            json(serde_json::to_string(originals))?,
            i64::from(active),
            now
        ],
    )
    .map_err(Error::store("writing the openclaw setup record"))?;
    Ok(())
}

impl Operation for RecordGateSetup {
    type Effect = GateAudited;

    fn apply(self, tx: &mut Tx<'_>) -> Result<GateAudited> {
        let now = tx.now();
        let mut originals = match read(tx.conn())? {
            Some(row) if row.active => row.originals,
            _ => Vec::new(),
        };
        for c in self.changes.iter().filter(|c| c.changed) {
            if !originals.iter().any(|o| o.path == c.path) {
                originals.push(c.clone());
            }
        }
        write(tx.conn(), &self.spec, &originals, true, &now)?;
        let changed = self.changes.iter().filter(|c| c.changed).count();
        let entry = tx.append(&NewEntry {
            action: "openclaw-setup".into(),
            target: None,
            severity: None,
            outcome: "success".into(),
            reason: format!("gate set up in OpenClaw ({changed} settings changed)"),
            details: serde_json::json!({ "changes": self.changes, "spec": self.spec }),
            actor: self.actor,
        })?;
        Ok(entry.seq)
    }
}

impl Operation for RecordGateUndo {
    type Effect = GateAudited;

    fn apply(self, tx: &mut Tx<'_>) -> Result<GateAudited> {
        let now = tx.now();
        let Some(row) = read(tx.conn())?.filter(|r| r.active) else {
            return Err(Error::FailedPrecondition(
                "openclaw setup is not in effect: nothing to undo".into(),
            ));
        };
        write(tx.conn(), &row.spec, &row.originals, false, &now)?;
        let entry = tx.append(&NewEntry {
            action: "openclaw-setup-undo".into(),
            target: None,
            severity: None,
            outcome: "success".into(),
            reason: "gate setup undone in OpenClaw: settings restored".into(),
            details: serde_json::json!({
                "changes": self.changes,
                "human_confirmed": self.approval["human_confirmed"] == true,
                "approver": self.approval["approver"],
                "request_id": self.approval["request_id"],
            }),
            actor: self.actor,
        })?;
        Ok(entry.seq)
    }
}

impl Store {
    /// The recorded `openclaw setup`, if any.
    pub async fn gate_setup(&self) -> Result<Option<GateSetupRow>> {
        self.read(read).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::clock::Clock;
    use crate::state::StateCache;
    use crate::store::WriterContext;

    fn spec() -> GateSpec {
        GateSpec {
            plugin_dir: "/opt/gate".into(),
            socket_path: "/run/dc/gate.sock".into(),
            on_daemon_unreachable: "deny".into(),
            decision_timeout_ms: 2000,
        }
    }

    fn change(path: &str, before: serde_json::Value, after: serde_json::Value) -> GateChange {
        GateChange {
            path: path.into(),
            changed: before != after,
            before,
            after,
        }
    }

    #[tokio::test]
    async fn a_later_setup_keeps_the_first_originals_and_undo_is_once() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = WriterContext {
            cache: Arc::new(StateCache::default()),
            head_log_every: 0,
            clock: Clock::system(),
        };
        let (store, _t) = Store::open(&dir.path().join("state.db"), ctx).unwrap();
        let actor = Actor::system();
        store
            .write(RecordGateSetup {
                spec: spec(),
                changes: vec![change(
                    "exec.approvals.defaults.ask",
                    json!("off"),
                    json!("on-miss"),
                )],
                actor: actor.clone(),
            })
            .await
            .unwrap();
        // Someone loosened it to "always"... then setup ran again.
        store
            .write(RecordGateSetup {
                spec: spec(),
                changes: vec![
                    change(
                        "exec.approvals.defaults.ask",
                        json!("always"),
                        json!("on-miss"),
                    ),
                    change("plugins.load.paths", json!(null), json!(["/opt/gate"])),
                ],
                actor: actor.clone(),
            })
            .await
            .unwrap();
        let row = store.gate_setup().await.unwrap().unwrap();
        assert!(row.active);
        assert_eq!(row.originals.len(), 2);
        assert_eq!(
            row.originals[0].before,
            json!("off"),
            "the first original wins"
        );
        let seq = store
            .write(RecordGateUndo {
                changes: vec![],
                approval: serde_json::Value::Null,
                actor: actor.clone(),
            })
            .await
            .unwrap();
        assert!(seq > 0);
        assert!(!store.gate_setup().await.unwrap().unwrap().active);
        let again = store
            .write(RecordGateUndo {
                changes: vec![],
                approval: serde_json::Value::Null,
                actor,
            })
            .await;
        assert!(
            matches!(again, Err(Error::FailedPrecondition(_))),
            "{again:?}"
        );
        // An undone setup starts over: no stale originals.
        store
            .write(RecordGateSetup {
                spec: spec(),
                changes: vec![change(
                    "exec.approvals.defaults.ask",
                    json!("on-miss"),
                    json!("on-miss"),
                )],
                actor: Actor::system(),
            })
            .await
            .unwrap();
        assert!(
            store
                .gate_setup()
                .await
                .unwrap()
                .unwrap()
                .originals
                .is_empty()
        );
    }
}
