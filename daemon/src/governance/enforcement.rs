//! An operator's change of enforcement: the step-up gate first (a protected
//! change, or a grant that keeps a sealed credential, waits for a human), then
//! the commit through [`Enforcer`](super::enforcer::Enforcer).

use super::Governance;
use super::protection::{Change, Ruling};
use crate::error::Result;
use crate::model::{Actor, EnforcementAction, Target};
use crate::store::connections::ConnectionDecl;
use crate::store::stepup::{StepUpAction, StepUpPayload, StepUpRow};
use crate::store::{DropForeignCredentials, GrantConnections, TargetRow};

/// What an operator's enforcement change came to.
#[derive(Debug)]
pub enum EnforcementOutcome {
    /// The change committed (or the target already was in that state).
    Done {
        /// The target with the decision now in force.
        summary: TargetRow,
        /// False when nothing changed.
        changed: bool,
        /// The audit entry of the change.
        audit_seq: u64,
    },
    /// The change waits for a human's approval.
    Pending {
        /// The step-up request holding it (boxed: a row is large).
        request: Box<StepUpRow>,
        /// The target as it stands meanwhile, when the daemon knows it.
        summary: Option<TargetRow>,
    },
}

impl Governance {
    /// An operator blocks, allows or unblocks a target, granting `connections`
    /// with an allow of an MCP server. The step-up gate comes first: a change
    /// the protection rule holds (or a grant that keeps a sealed credential)
    /// waits for a human; anything else commits at once.
    pub async fn set_enforcement(
        &self,
        actor: Actor,
        target: Target,
        action: EnforcementAction,
        reason: String,
        connections: Vec<ConnectionDecl>,
    ) -> Result<EnforcementOutcome> {
        if !connections.is_empty() {
            self.drop_foreign_credentials(&target.name, &connections, &actor)
                .await?;
        }
        // Granting credentials to a server keeps the approver's refresh token
        // (sealed) when it can: that takes a human approval.
        let unattended = !connections.is_empty() && self.vault.wants_unattended();
        let change = match action {
            EnforcementAction::Block => Change::Block,
            EnforcementAction::Allow => Change::Allow,
            EnforcementAction::Unblock => Change::Unblock,
        };
        let ruling = self.stepups.protection().rule(&target, change).await?;
        if unattended || ruling == Ruling::NeedsApproval {
            let action = match action {
                EnforcementAction::Block => StepUpAction::Block,
                EnforcementAction::Allow => StepUpAction::Allow,
                EnforcementAction::Unblock => StepUpAction::Unblock,
            };
            let payload = StepUpPayload {
                connections,
                unattended,
            };
            let request = self
                .stepups
                .request(actor, target.clone(), action, reason, None, payload)
                .await?;
            let summary = self.store.get_target(target).await?;
            return Ok(EnforcementOutcome::Pending {
                request: Box::new(request),
                summary,
            });
        }
        let done = if connections.is_empty() {
            self.enforcer
                .commit(&target, action, reason, actor, serde_json::Value::Null)
                .await?
        } else {
            let grant = GrantConnections {
                server: target.name.clone(),
                grants: connections,
                approved_by: actor.id.clone(),
                subject: None,
                actor: actor.clone(),
                details: serde_json::json!({"human_confirmed": false}),
            };
            let change = (action, reason, actor, serde_json::Value::Null);
            let done = self.enforcer.commit_with(&target, change, grant).await?.0;
            // A grant on an already allowed server publishes no change: the
            // Token Vault wiring in OpenClaw is checked either way.
            self.openclaw.rewire_mcp();
            done
        };
        Ok(EnforcementOutcome::Done {
            summary: TargetRow {
                target,
                decision: done.decision,
                open_findings: done.open_findings.0,
                max_open_severity: done.open_findings.1,
            },
            changed: done.changed,
            audit_seq: done.entry.seq,
        })
    }

    /// A re-declaration by anyone but the approver whose refresh token a grant
    /// keeps drops that credential (and its cached tokens) at once, approved or not.
    async fn drop_foreign_credentials(
        &self,
        server: &str,
        connections: &[ConnectionDecl],
        actor: &Actor,
    ) -> Result<()> {
        let dropped = self
            .store
            .write(DropForeignCredentials {
                server: server.to_owned(),
                connections: connections.iter().map(|c| c.connection.clone()).collect(),
                keep_sub: actor.id.clone(),
                actor: actor.clone(),
            })
            .await?;
        for (connection, _) in &dropped {
            self.vault.forget_others(server, connection, &actor.id);
        }
        Ok(())
    }
}
