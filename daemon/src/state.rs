//! In-memory enforcement state: the hot read path. Kept in step with the store
//! by the writer thread, which updates it after each commit.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::model::{Decision, EnforcementState, Target, TargetKind};

/// Answer of the target check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen or no decision.
    Unknown,
    /// An operator or admission allowed it; the decision says who and why.
    Allowed(Decision),
    /// Blocked (or held by a pending step-up); the decision says who and why.
    Blocked(Decision),
}

/// Decisions by kind, then name (so a lookup by `&str` allocates nothing).
#[derive(Debug, Default)]
pub struct StateCache {
    by_kind: RwLock<HashMap<TargetKind, HashMap<String, Decision>>>,
    /// Targets held while step-ups are pending, with every holding request:
    /// they read as blocked (fail closed) until the last one ends.
    holds: RwLock<HashMap<TargetKind, HashMap<String, Vec<String>>>>,
}

impl StateCache {
    /// Records the decision now in force for a target.
    pub fn set(&self, target: &Target, decision: Decision) {
        let mut map = self.by_kind.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(target.kind)
            .or_default()
            .insert(target.name.clone(), decision);
    }

    /// Holds a target while step-up `request_id` is pending.
    pub fn hold(&self, target: &Target, request_id: &str) {
        let mut holds = self.holds.write().unwrap_or_else(PoisonError::into_inner);
        let ids = holds
            .entry(target.kind)
            .or_default()
            .entry(target.name.clone())
            .or_default();
        if !ids.iter().any(|id| id == request_id) {
            ids.push(request_id.to_owned());
        }
    }

    /// Releases the hold of `request_id`; the target stays held while another
    /// request on it is pending.
    pub fn release(&self, target: &Target, request_id: &str) {
        let mut holds = self.holds.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(names) = holds.get_mut(&target.kind)
            && let Some(ids) = names.get_mut(&target.name)
        {
            ids.retain(|id| id != request_id);
            if ids.is_empty() {
                names.remove(&target.name);
            }
        }
    }

    /// The earliest pending step-up holding a target, if any.
    pub fn held_by(&self, kind: TargetKind, name: &str) -> Option<String> {
        let holds = self.holds.read().unwrap_or_else(PoisonError::into_inner);
        holds
            .get(&kind)
            .and_then(|m| m.get(name))
            .and_then(|ids| ids.first())
            .cloned()
    }

    /// The verdict for a target.
    pub fn check(&self, kind: TargetKind, name: &str) -> Verdict {
        if let Some(id) = self.held_by(kind, name) {
            return Verdict::Blocked(Decision {
                state: EnforcementState::Blocked,
                reason: format!("pending approval {id}"),
                decided_by: "stepup".into(),
                decided_at: String::new(),
            });
        }
        let map = self.by_kind.read().unwrap_or_else(PoisonError::into_inner);
        match map.get(&kind).and_then(|m| m.get(name)) {
            None => Verdict::Unknown,
            Some(d) => match d.state {
                EnforcementState::None => Verdict::Unknown,
                EnforcementState::Allowed => Verdict::Allowed(d.clone()),
                EnforcementState::Blocked => Verdict::Blocked(d.clone()),
            },
        }
    }

    /// (targets, blocked, allowed), without touching the disk.
    pub fn counts(&self) -> (u64, u64, u64) {
        let map = self.by_kind.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = (0, 0, 0);
        for d in map.values().flat_map(|m| m.values()) {
            out.0 += 1;
            match d.state {
                EnforcementState::Blocked => out.1 += 1,
                EnforcementState::Allowed => out.2 += 1,
                EnforcementState::None => {}
            }
        }
        out
    }

    /// Every target with a block or allow decision.
    pub fn enforced(&self) -> Vec<(Target, EnforcementState)> {
        let map = self.by_kind.read().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .flat_map(|(kind, names)| {
                names
                    .iter()
                    .filter(|(_, d)| d.state != EnforcementState::None)
                    .map(|(name, d)| {
                        (
                            Target {
                                kind: *kind,
                                name: name.clone(),
                            },
                            d.state,
                        )
                    })
            })
            .collect()
    }
}
