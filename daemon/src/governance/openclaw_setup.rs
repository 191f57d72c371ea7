//! `openclaw setup`: puts the gate into the gateway through the daemon's
//! connection (plugin loaded, enabled and configured; exec policy that asks),
//! records what it changed durably before writing, and undoes exactly that
//! (with step-up on, only after the `[stepup] approver` approves the undo).

use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::openclaw::{GateChange, GateError, GateSpec};
use crate::store::{Audit, RecordGateSetup, RecordGateUndo};

use super::tool_ask::{AskOutcome, PendingAsk};

use super::Governance;

/// What a setup (or undo) run did.
#[derive(Debug, Clone)]
pub struct SetupOutcome {
    /// Every managed setting with its value before and after.
    pub changes: Vec<GateChange>,
    /// The plugin's state afterwards (`None` on a dry run).
    pub plugin: Option<String>,
    /// The audit entry written (0 on a dry run).
    pub audit_seq: u64,
}

/// Re-plans after the gateway's config changed under a write (the daemon's
/// own skill and MCP enforcement writes it too) before giving up.
const CONFLICT_RETRIES: u32 = 3;

fn changed_paths(changes: &[GateChange]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.changed)
        .map(|c| c.path.clone())
        .collect()
}

/// Folds one attempt's plan into what the run has changed so far: a retry
/// after a conflict plans from a gateway that may already hold part of the
/// earlier attempt's writes, so each setting keeps the value found first and
/// takes the value wanted last (the run reports and audits all it changed).
fn fold_attempt(run: &mut Vec<GateChange>, attempt: Vec<GateChange>) {
    for c in attempt {
        match run.iter_mut().find(|r| r.path == c.path) {
            Some(r) => *r = GateChange::new(c.path, r.before.clone(), c.after),
            None => run.push(c),
        }
    }
}

fn gate_error(e: GateError) -> Error {
    match e {
        GateError::NotConnected => Error::Unavailable(
            "the daemon is not connected to the OpenClaw gateway (see `defenseclawctl status`); nothing was changed".into(),
        ),
        GateError::Gateway { .. } => Error::Unavailable(format!("the OpenClaw gateway refused: {e}")),
    }
}

impl Governance {
    /// Sets the gate up (idempotent), or with `undo` restores what setup
    /// changed; `dry_run` reports the changes without writing anything.
    pub async fn openclaw_setup(
        &self,
        actor: Actor,
        dry_run: bool,
        undo: bool,
    ) -> Result<SetupOutcome> {
        if undo {
            return self.openclaw_setup_undo(actor, dry_run).await;
        }
        let spec = self.gate_spec.clone();
        // (audit seq, changed paths) of the record written for this run.
        let mut recorded: Option<(u64, Vec<String>)> = None;
        let mut run = Vec::new();
        let mut attempt = 0;
        loop {
            let (docs, changes) = self
                .openclaw
                .gate_plan(&spec, None)
                .await
                .map_err(gate_error)?;
            fold_attempt(&mut run, changes.clone());
            if dry_run {
                return Ok(SetupOutcome {
                    changes,
                    plugin: None,
                    audit_seq: 0,
                });
            }
            // The values found are durable before the gateway is touched (once
            // per run, again only if a retry found other settings to change).
            let paths = changed_paths(&run);
            let audit_seq = match &recorded {
                Some((seq, p)) if *p == paths => *seq,
                _ => {
                    self.store
                        .write(RecordGateSetup {
                            spec: spec.clone(),
                            changes: run.clone(),
                            actor: actor.clone(),
                        })
                        .await?
                }
            };
            recorded = Some((audit_seq, paths));
            let applied = self.openclaw.gate_apply(&docs, &changes, true).await;
            if applied.as_ref().is_err_and(GateError::is_conflict) && attempt < CONFLICT_RETRIES {
                attempt += 1;
                continue;
            }
            // Reconciliation keeps the gate from now on (it retries a failed
            // write too) and wires the Token Vault servers.
            self.openclaw.set_gate_spec(Some(spec));
            self.openclaw.rewire_mcp();
            let view = applied.map_err(gate_error)?;
            return Ok(SetupOutcome {
                changes: run,
                plugin: Some(view.plugin),
                audit_seq,
            });
        }
    }

    async fn openclaw_setup_undo(&self, actor: Actor, dry_run: bool) -> Result<SetupOutcome> {
        let active = || async {
            self.store
                .gate_setup()
                .await?
                .filter(|r| r.active)
                .ok_or_else(|| {
                    Error::FailedPrecondition(
                        "openclaw setup is not in effect: nothing to undo".into(),
                    )
                })
        };
        let mut row = active().await?;
        // Undo lowers protection for every agent at once: with step-up on, a
        // named human approves it first (over CIBA, like a tool call ask); the
        // gateway is read only after the answer, so the write is not stale.
        let approval = if self.stepups.enabled() && !dry_run {
            let approval = self.approve_undo(&actor).await?;
            row = active().await?;
            approval
        } else {
            serde_json::Value::Null
        };
        let kept = self.openclaw.gate_spec();
        let mut run = Vec::new();
        let mut attempt = 0;
        let view = loop {
            let (docs, changes) = self
                .openclaw
                .gate_plan(&row.spec, Some(&row.originals))
                .await
                .map_err(gate_error)?;
            fold_attempt(&mut run, changes.clone());
            if dry_run {
                return Ok(SetupOutcome {
                    changes,
                    plugin: None,
                    audit_seq: 0,
                });
            }
            // Reconciliation must not put back what undo takes out.
            self.openclaw.set_gate_spec(None);
            match self.openclaw.gate_apply(&docs, &changes, false).await {
                Ok(v) => break v,
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => attempt += 1,
                Err(e) => {
                    self.openclaw.set_gate_spec(kept);
                    return Err(gate_error(e));
                }
            }
        };
        let audit_seq = self
            .store
            .write(RecordGateUndo {
                changes: run.clone(),
                approval,
                actor,
            })
            .await?;
        Ok(SetupOutcome {
            changes: run,
            plugin: Some(view.plugin),
            audit_seq,
        })
    }
}

impl Governance {
    /// Asks the `[stepup]` approver to approve undoing setup and waits for the
    /// answer (within `[stepup] requested_expiry_secs`). Approved: the audit
    /// details of the approval. Denied, timed out or not askable: an error,
    /// and the refusal is audited as `openclaw-setup-undo` with its outcome.
    async fn approve_undo(&self, actor: &Actor) -> Result<serde_json::Value> {
        let Some(backend) = self.openclaw.gate().backend() else {
            return Err(Error::FailedPrecondition(
                "undoing openclaw setup lowers protection and needs a human approval, but no [stepup] approver is configured (set [stepup] approver to a user id)".into(),
            ));
        };
        let ask = PendingAsk::new("openclaw-setup", "undo");
        tracing::info!(request = %ask.code, "openclaw setup undo: asking the approver");
        let outcome = backend.run(&ask).await;
        let (outcome_word, error) = match &outcome {
            AskOutcome::Approved { sub, email } => {
                return Ok(serde_json::json!({
                    "human_confirmed": true,
                    "approver": {"sub": sub, "email": email},
                    "request_id": ask.code,
                    "binding_message": ask.binding,
                }));
            }
            AskOutcome::Denied => (
                "denied",
                Error::PermissionDenied(format!(
                    "the approver denied undoing openclaw setup (request {}); nothing was changed",
                    ask.code
                )),
            ),
            AskOutcome::TimedOut => (
                "timed_out",
                Error::FailedPrecondition(format!(
                    "the approver did not answer in time (request {}); openclaw setup was not undone",
                    ask.code
                )),
            ),
            AskOutcome::Failed(why) => (
                "error",
                Error::Unavailable(format!(
                    "could not ask the approver (request {}): {why}; openclaw setup was not undone",
                    ask.code
                )),
            ),
        };
        let entry = Audit(NewEntry {
            action: "openclaw-setup-undo".into(),
            target: None,
            severity: None,
            outcome: outcome_word.into(),
            reason: error.to_string(),
            details: serde_json::json!({
                "human_confirmed": false,
                "approver": null,
                "request_id": ask.code,
                "binding_message": ask.binding,
            }),
            actor: actor.clone(),
        });
        if let Err(e) = self.store.write(entry).await {
            tracing::error!(error = %e, "could not audit a refused openclaw setup undo");
        }
        Err(error)
    }
}

/// The spec setup installs, from `[openclaw]` and the gate socket the daemon
/// listens on.
pub fn gate_spec(
    settings: &crate::openclaw::OpenClawSettings,
    gate_socket: &std::path::Path,
) -> GateSpec {
    GateSpec {
        plugin_dir: settings.plugin_dir.display().to_string(),
        socket_path: gate_socket.display().to_string(),
        on_daemon_unreachable: settings.on_daemon_unreachable.as_str().into(),
        decision_timeout_ms: settings.decision_timeout_ms,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_retry_keeps_the_value_found_first_and_the_value_wanted_last() {
        let mut run = Vec::new();
        fold_attempt(
            &mut run,
            vec![
                GateChange::new("a".into(), json!(1), json!(2)),
                GateChange::new("b".into(), json!("x"), json!("y")),
            ],
        );
        // The first attempt wrote `a` before a conflict; the retry finds it set.
        fold_attempt(
            &mut run,
            vec![
                GateChange::new("a".into(), json!(2), json!(2)),
                GateChange::new("b".into(), json!("x"), json!("y")),
                GateChange::new("c".into(), json!(null), json!(true)),
            ],
        );
        let view: Vec<_> = run
            .iter()
            .map(|c| {
                (
                    c.path.as_str(),
                    c.before.clone(),
                    c.after.clone(),
                    c.changed,
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                ("a", json!(1), json!(2), true),
                ("b", json!("x"), json!("y"), true),
                ("c", json!(null), json!(true), true),
            ]
        );
    }
}
