//! The protection invariant, decided in one place.
//!
//! With step-up on: for a target whose open findings reach `[stepup] min_severity`
//! (a *protected* target), nothing an operator does lowers its protection unless
//! a human approves it (`human_confirmed: true` on the step-up's audit entry), and
//! while that approval is pending the target is held (it reads as blocked).
//!
//! Every path that could lower protection asks [`Protection::rule`] before it
//! builds a write: `SetEnforcement` (allow, unblock; a block waits for the human
//! too, held meanwhile), `DismissFinding`, admission on install and the
//! `[admission] allow_list`, and the cancel of a pending request. Scan reports
//! cannot close a protected finding at all: [`Protection::report_keeps_open_at`]
//! makes the writer keep every open finding at or above `min_severity` that a
//! report leaves out or lowers (it stays open, marked in the audit entry as kept)
//! until a dismissal a human approved. Reports still add findings and replace the
//! lower ones; a kept finding is replaced only when the report carries it again
//! (same rule and place, at least as severe).
//!
//! With step-up off there is no human gate: changes commit as the operator asks
//! and a report replaces its scanner's open findings.

use crate::error::Result;
use crate::model::{Severity, Target};
use crate::store::Store;
use crate::store::stepup::StepUpAction;

/// A change an operator (or the daemon on an operator's behalf) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Block the target.
    Block,
    /// Allow the target (`SetEnforcement`, an install admission, an allow-list match).
    Allow,
    /// Remove the target's decision.
    Unblock,
    /// Dismiss one of the target's open findings.
    Dismiss,
    /// End a pending step-up of this action without an answer from the approver.
    Cancel(StepUpAction),
}

/// What the invariant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ruling {
    /// Commit now.
    Commit,
    /// Open (or join) a step-up; the target is held until it ends.
    NeedsApproval,
    /// End the request as the fail-closed outcome: the block commits with
    /// `human_confirmed: false` (a cancel of a pending block, the daemon's own
    /// proposals included).
    FailClosed,
}

/// The invariant's settings and the target state it reads.
#[derive(Debug, Clone)]
pub struct Protection {
    enabled: bool,
    min_severity: Severity,
    store: Store,
}

impl Protection {
    /// `enabled` is whether step-up is on (and can reach a provider).
    pub fn new(enabled: bool, min_severity: Severity, store: Store) -> Self {
        Self {
            enabled,
            min_severity,
            store,
        }
    }

    /// Whether a human gate exists at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether open findings up to `max_open` make a target protected.
    pub fn protects(&self, max_open: Option<Severity>) -> bool {
        self.enabled && max_open.is_some_and(|m| m >= self.min_severity)
    }

    /// The severity from which a scan report never closes an open finding
    /// (`None`: step-up off, reports replace their scanner's findings).
    pub fn report_keeps_open_at(&self) -> Option<Severity> {
        self.enabled.then_some(self.min_severity)
    }

    /// Whether `target` is protected now (reads the store).
    pub async fn protected(&self, target: &Target) -> Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        let row = self.store.get_target(target.clone()).await?;
        Ok(self.protects(row.and_then(|r| r.max_open_severity)))
    }

    /// Decides `change` on `target`.
    pub async fn rule(&self, target: &Target, change: Change) -> Result<Ruling> {
        Ok(match change {
            _ if !self.enabled => Ruling::Commit,
            // Ending the wait for a block never leaves the target unblocked.
            Change::Cancel(StepUpAction::Block) => Ruling::FailClosed,
            // A cancelled allow, unblock or dismissal commits nothing.
            Change::Cancel(_) => Ruling::Commit,
            Change::Block | Change::Allow | Change::Unblock | Change::Dismiss => {
                if self.protected(target).await? {
                    Ruling::NeedsApproval
                } else {
                    Ruling::Commit
                }
            }
        })
    }
}
