//! `openclaw setup`: puts the gate into the gateway through the daemon's
//! connection (plugin loaded, enabled and configured; exec policy that asks),
//! records what it changed durably before writing, and undoes exactly that.

use crate::error::{Error, Result};
use crate::model::Actor;
use crate::openclaw::{GateChange, GateError, GateSpec};
use crate::store::{RecordGateSetup, RecordGateUndo};

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
        let (docs, changes) = self
            .openclaw
            .gate_plan(&spec, None)
            .await
            .map_err(gate_error)?;
        if dry_run {
            return Ok(SetupOutcome {
                changes,
                plugin: None,
                audit_seq: 0,
            });
        }
        // The values found are durable before the gateway is touched.
        let audit_seq = self
            .store
            .write(RecordGateSetup {
                spec: spec.clone(),
                changes: changes.clone(),
                actor,
            })
            .await?;
        let applied = self.openclaw.gate_apply(&docs, &changes, true).await;
        // Reconciliation keeps the gate from now on (it retries a failed write too).
        self.openclaw.set_gate_spec(Some(spec));
        let view = applied.map_err(gate_error)?;
        Ok(SetupOutcome {
            changes,
            plugin: Some(view.plugin),
            audit_seq,
        })
    }

    async fn openclaw_setup_undo(&self, actor: Actor, dry_run: bool) -> Result<SetupOutcome> {
        let row = self
            .store
            .gate_setup()
            .await?
            .filter(|r| r.active)
            .ok_or_else(|| {
                Error::FailedPrecondition("openclaw setup is not in effect: nothing to undo".into())
            })?;
        let (docs, changes) = self
            .openclaw
            .gate_plan(&row.spec, Some(&row.originals))
            .await
            .map_err(gate_error)?;
        if dry_run {
            return Ok(SetupOutcome {
                changes,
                plugin: None,
                audit_seq: 0,
            });
        }
        if self.stepups.enabled() {
            // Undo lowers protection for every agent at once.
            return Err(Error::FailedPrecondition(
                "undoing openclaw setup lowers protection and needs a human approval; with [stepup] enabled it is refused (turn the gate off by hand in OpenClaw if you must)".into(),
            ));
        }
        let kept = self.openclaw.gate_spec();
        self.openclaw.set_gate_spec(None);
        let view = match self.openclaw.gate_apply(&docs, &changes, false).await {
            Ok(v) => v,
            Err(e) => {
                self.openclaw.set_gate_spec(kept);
                return Err(gate_error(e));
            }
        };
        let audit_seq = self
            .store
            .write(RecordGateUndo {
                changes: changes.clone(),
                actor,
            })
            .await?;
        Ok(SetupOutcome {
            changes,
            plugin: Some(view.plugin),
            audit_seq,
        })
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
