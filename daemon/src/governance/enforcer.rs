//! The one home for "change enforcement": building the write, committing it
//! and publishing [`EnforcementChanged`] once it committed. Operators (through
//! the step-up gate in [`super::enforcement`]), admission and the step-up
//! driver all change enforcement through [`Enforcer`].

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::audit::Entry;
use crate::error::{Error, Result};
use crate::events::EnforcementChanged;
use crate::model::{Actor, Decision, EnforcementAction, EnforcementState, Severity, Target};
use crate::store::{Store, WriteEffect, WriteOp};

/// A committed enforcement write and what it left in force.
#[derive(Debug)]
pub struct Enforced {
    /// The decision now in force.
    pub decision: Decision,
    /// False when the target already was in that state (nothing was published).
    pub changed: bool,
    /// The audit entry of the change.
    pub entry: Arc<Entry>,
    /// Open findings of the target, and their highest severity.
    pub open_findings: (u64, Option<Severity>),
}

/// Commits enforcement changes and publishes them to runtime enforcers.
#[derive(Debug, Clone)]
pub struct Enforcer {
    store: Store,
    changes: broadcast::Sender<EnforcementChanged>,
}

impl Enforcer {
    /// An enforcer writing to `store` and publishing on `changes`.
    pub fn new(store: Store, changes: broadcast::Sender<EnforcementChanged>) -> Self {
        Self { store, changes }
    }

    /// A receiver of every committed change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EnforcementChanged> {
        self.changes.subscribe()
    }

    /// The write that changes `target`'s enforcement, for callers that commit
    /// it inside a larger write (a step-up's close) and then call
    /// [`Enforcer::published`].
    pub fn op(
        target: &Target,
        action: EnforcementAction,
        reason: String,
        actor: Actor,
        details: serde_json::Value,
    ) -> WriteOp {
        WriteOp::SetEnforcement {
            target: target.clone(),
            action,
            reason,
            actor,
            details,
        }
    }

    /// Commits a change of `target`'s enforcement, together with `with` in the
    /// same transaction, and publishes it when the state changed.
    pub async fn commit(
        &self,
        target: &Target,
        action: EnforcementAction,
        reason: String,
        actor: Actor,
        details: serde_json::Value,
        with: Vec<WriteOp>,
    ) -> Result<Enforced> {
        let enforce = Self::op(target, action, reason, actor, details);
        let effect = if with.is_empty() {
            self.store.write(enforce).await?
        } else {
            let mut ops = vec![enforce];
            ops.extend(with);
            match self.store.write(WriteOp::All(ops)).await? {
                WriteEffect::All(effects) => effects
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("empty write effect".into()))?,
                other => return Err(unexpected(&other)),
            }
        };
        let WriteEffect::Enforcement {
            decision,
            changed,
            entry,
            open_findings,
        } = effect
        else {
            return Err(unexpected(&effect));
        };
        if changed {
            self.publish(target, decision.state);
        }
        Ok(Enforced {
            decision,
            changed,
            entry,
            open_findings,
        })
    }

    /// Publishes the change an enforcement write committed inside another
    /// write (`committed` is that write's effect); returns whether it did.
    pub fn published(&self, target: &Target, committed: Option<WriteEffect>) -> bool {
        let committed = match committed {
            Some(WriteEffect::All(effects)) => effects.into_iter().next(),
            other => other,
        };
        match committed {
            Some(WriteEffect::Enforcement {
                decision,
                changed: true,
                ..
            }) => {
                self.publish(target, decision.state);
                true
            }
            _ => false,
        }
    }

    /// Tells runtime enforcers `target` is now in `state` (a released hold
    /// with no decision is published as [`EnforcementState::None`]).
    pub fn publish(&self, target: &Target, state: EnforcementState) {
        // Nobody listening (no runtime enforcer) is fine.
        let _ = self.changes.send(EnforcementChanged {
            target: target.clone(),
            state,
        });
    }
}

/// The error for a write effect of the wrong kind (a bug).
pub(crate) fn unexpected(effect: &WriteEffect) -> Error {
    Error::Internal(format!("unexpected write effect {effect:?}"))
}
