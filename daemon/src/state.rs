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
}

impl StateCache {
    /// Records the decision now in force for a target.
    pub fn set(&self, target: &Target, decision: Decision) {
        let mut map = self.by_kind.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(target.kind)
            .or_default()
            .insert(target.name.clone(), decision);
    }

    /// The verdict for a target.
    pub fn check(&self, kind: TargetKind, name: &str) -> Verdict {
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
