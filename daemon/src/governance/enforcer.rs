//! The one home for "change enforcement": building the write, committing it
//! and publishing [`EnforcementChanged`] once it committed. Operators (through
//! the step-up gate in [`super::enforcement`]), admission and the step-up
//! driver all change enforcement through [`Enforcer`].

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::Result;
use crate::events::EnforcementChanged;
use crate::metrics::{DecisionKind, Metrics};
use crate::model::{Actor, EnforcementAction, EnforcementState, Target};
use crate::store::profile::{self, Phase};
use crate::store::{Operation, SetEnforcement, Store};

pub use crate::store::Enforced;

/// Commits enforcement changes and publishes them to runtime enforcers.
#[derive(Debug, Clone)]
pub struct Enforcer {
    store: Store,
    changes: broadcast::Sender<EnforcementChanged>,
    metrics: Arc<Metrics>,
}

impl Enforcer {
    /// An enforcer writing to `store`, publishing on `changes` and counting
    /// decisions in `metrics`.
    pub fn new(
        store: Store,
        changes: broadcast::Sender<EnforcementChanged>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            changes,
            metrics,
        }
    }

    /// The daemon's metrics, for the decisions governance counts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
    ) -> SetEnforcement {
        SetEnforcement {
            target: target.clone(),
            action,
            reason,
            actor,
            details,
        }
    }

    /// Commits a change of `target`'s enforcement and publishes it when the
    /// state changed.
    pub async fn commit(
        &self,
        target: &Target,
        action: EnforcementAction,
        reason: String,
        actor: Actor,
        details: serde_json::Value,
    ) -> Result<Enforced> {
        let enforced = self
            .store
            .write(Self::op(target, action, reason, actor, details))
            .await?;
        self.published(target, Some(&enforced));
        Ok(enforced)
    }

    /// Commits a change of `target`'s enforcement together with `with` in one
    /// transaction (both or neither), and publishes it when the state changed.
    pub async fn commit_with<W: Operation>(
        &self,
        target: &Target,
        change: (EnforcementAction, String, Actor, serde_json::Value),
        with: W,
    ) -> Result<(Enforced, W::Effect)> {
        let (action, reason, actor, details) = change;
        let (enforced, other) = self
            .store
            .write((Self::op(target, action, reason, actor, details), with))
            .await?;
        self.published(target, Some(&enforced));
        Ok((enforced, other))
    }

    /// Publishes the change an enforcement write committed (possibly inside
    /// another write); returns whether it did.
    pub fn published(&self, target: &Target, committed: Option<&Enforced>) -> bool {
        if let Some(enforced) = committed {
            let outcome = match (enforced.changed, enforced.decision.state) {
                (false, _) => "unchanged",
                (true, EnforcementState::Blocked) => "blocked",
                (true, EnforcementState::Allowed) => "allowed",
                (true, EnforcementState::None) => "released",
            };
            self.metrics.decision(DecisionKind::Enforcement, outcome);
        }
        match committed {
            Some(enforced) if enforced.changed => {
                let started = profile::start();
                self.publish(target, enforced.decision.state);
                profile::record(Phase::FanOut, started);
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
