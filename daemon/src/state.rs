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

/// Decisions by kind, then name (so a lookup by `&str` allocates nothing),
/// with the counts `status` reports kept beside them (no walk over the map).
#[derive(Debug, Default)]
pub struct StateCache {
    by_kind: RwLock<Decisions>,
    /// Targets held while step-ups are pending, with every holding request:
    /// they read as blocked (fail closed) until the last one ends.
    holds: RwLock<HashMap<TargetKind, HashMap<String, Vec<String>>>>,
}

/// The decisions and their counts, changed together under one lock.
#[derive(Debug, Default)]
struct Decisions {
    map: HashMap<TargetKind, HashMap<String, Decision>>,
    /// (targets, blocked, allowed).
    counts: (u64, u64, u64),
}

impl Decisions {
    fn tally(&mut self, state: EnforcementState, up: bool) {
        let slot = match state {
            EnforcementState::Blocked => &mut self.counts.1,
            EnforcementState::Allowed => &mut self.counts.2,
            EnforcementState::None => return,
        };
        *slot = if up {
            slot.saturating_add(1)
        } else {
            slot.saturating_sub(1)
        };
    }
}

impl StateCache {
    /// Records the decision now in force for a target.
    pub fn set(&self, target: &Target, decision: Decision) {
        let mut guard = self.by_kind.write().unwrap_or_else(PoisonError::into_inner);
        let d = &mut *guard;
        let new_state = decision.state;
        let names = d.map.entry(target.kind).or_default();
        let old_state = match names.get_mut(target.name.as_str()) {
            Some(slot) => Some(std::mem::replace(slot, decision).state),
            None => {
                names.insert(target.name.clone(), decision);
                None
            }
        };
        match old_state {
            Some(old) => d.tally(old, false),
            None => d.counts.0 += 1,
        }
        d.tally(new_state, true);
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
        let d = self.by_kind.read().unwrap_or_else(PoisonError::into_inner);
        match d.map.get(&kind).and_then(|m| m.get(name)) {
            None => Verdict::Unknown,
            Some(d) => match d.state {
                EnforcementState::None => Verdict::Unknown,
                EnforcementState::Allowed => Verdict::Allowed(d.clone()),
                EnforcementState::Blocked => Verdict::Blocked(d.clone()),
            },
        }
    }

    /// (targets, blocked, allowed), without touching the disk or walking the
    /// targets: kept up to date by [`StateCache::set`].
    pub fn counts(&self) -> (u64, u64, u64) {
        self.by_kind
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .counts
    }

    /// Every target with a block or allow decision.
    pub fn enforced(&self) -> Vec<(Target, EnforcementState)> {
        let d = self.by_kind.read().unwrap_or_else(PoisonError::into_inner);
        d.map
            .iter()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn skill(name: &str) -> Target {
        Target {
            kind: TargetKind::Skill,
            name: name.into(),
        }
    }

    fn decided(state: EnforcementState) -> Decision {
        Decision {
            state,
            ..Decision::default()
        }
    }

    /// The kept counts always equal a walk over the decisions.
    #[test]
    fn counts_follow_every_change() {
        let cache = StateCache::default();
        let walk = |c: &StateCache| {
            let d = c.by_kind.read().unwrap();
            let all: Vec<_> = d.map.values().flat_map(|m| m.values()).collect();
            (
                all.len() as u64,
                all.iter()
                    .filter(|d| d.state == EnforcementState::Blocked)
                    .count() as u64,
                all.iter()
                    .filter(|d| d.state == EnforcementState::Allowed)
                    .count() as u64,
            )
        };
        let steps = [
            ("a", EnforcementState::Blocked),
            ("b", EnforcementState::None),
            ("a", EnforcementState::Blocked),
            ("a", EnforcementState::Allowed),
            ("b", EnforcementState::Blocked),
            ("a", EnforcementState::None),
            ("c", EnforcementState::Allowed),
        ];
        for (name, state) in steps {
            cache.set(&skill(name), decided(state));
            assert_eq!(cache.counts(), walk(&cache), "after {name} -> {state:?}");
        }
        assert_eq!(cache.counts(), (3, 1, 1));
    }
}
