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
    /// Explicitly allowed.
    Allowed(Decision),
    /// Blocked.
    Blocked(Decision),
}

/// Decisions by kind, then name (so a lookup by `&str` allocates nothing).
#[derive(Debug, Default)]
pub struct StateCache {
    by_kind: RwLock<HashMap<TargetKind, HashMap<String, Decision>>>,
    /// Targets held while a step-up is pending: they read as blocked (fail closed).
    holds: RwLock<HashMap<TargetKind, HashMap<String, String>>>,
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
        holds
            .entry(target.kind)
            .or_default()
            .insert(target.name.clone(), request_id.to_owned());
    }

    /// Releases the hold of `request_id` (another request's hold stays).
    pub fn release(&self, target: &Target, request_id: &str) {
        let mut holds = self.holds.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(names) = holds.get_mut(&target.kind)
            && names.get(&target.name).is_some_and(|id| id == request_id)
        {
            names.remove(&target.name);
        }
    }

    /// The pending step-up holding a target, if any.
    pub fn held_by(&self, kind: TargetKind, name: &str) -> Option<String> {
        let holds = self.holds.read().unwrap_or_else(PoisonError::into_inner);
        holds.get(&kind).and_then(|m| m.get(name)).cloned()
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
