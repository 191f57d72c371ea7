//! What a sink sends: an audit entry as the `audit export` JSON object plus
//! `host_id`, the periodic head record, and the per-sink entry filter.

use serde_json::{Value, json};

use super::settings::SinkSettings;
use crate::audit::Entry;
use crate::model::Severity;

/// An entry as one JSON object: the fields of an `audit export` line
/// (`seq`, `ts`, `action`, `target`, `severity`, `outcome`, `reason`,
/// `details`, `actor`, `prev_hash`, `hash`) plus `host_id`.
pub fn entry_object(entry: &Entry, host_id: &str) -> Value {
    let target = if entry.target_kind.is_empty() {
        Value::Null
    } else {
        json!({"kind": entry.target_kind, "name": entry.target_name})
    };
    let parsed = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.to_owned()));
    json!({
        "seq": entry.seq,
        "ts": entry.ts,
        "action": entry.action,
        "target": target,
        "severity": (!entry.severity.is_empty()).then_some(entry.severity.as_str()),
        "outcome": entry.outcome,
        "reason": entry.reason,
        "details": parsed(&entry.details),
        "actor": parsed(&entry.actor),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "host_id": host_id,
    })
}

/// A head record: the chain's `seq:hash` at the last entry this sink has
/// examined, so a receiver can tell a cut-off tail from a quiet host.
/// `filtered` says gaps in the seqs are expected (the sink has a filter).
pub fn head_object(host_id: &str, seq: u64, hash: &str, ts: &str, filtered: bool) -> Value {
    json!({
        "type": "head",
        "host_id": host_id,
        "seq": seq,
        "hash": hash,
        "ts": ts,
        "filtered": filtered,
    })
}

/// The entries a sink sends.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    actions: Vec<String>,
    outcomes: Vec<String>,
    min_severity: Option<Severity>,
    target_kinds: Vec<String>,
}

impl Filter {
    /// The filter of a sink's settings.
    pub fn from_settings(s: &SinkSettings) -> Self {
        Self {
            actions: s.actions.clone(),
            outcomes: s.outcomes.clone(),
            min_severity: s.min_severity,
            target_kinds: s.target_kinds.clone(),
        }
    }

    /// True when the filter lets every entry through.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
            && self.outcomes.is_empty()
            && self.min_severity.is_none()
            && self.target_kinds.is_empty()
    }

    /// Whether `entry` is sent.
    pub fn matches(&self, entry: &Entry) -> bool {
        let listed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        listed(&self.actions, &entry.action)
            && listed(&self.outcomes, &entry.outcome)
            && listed(&self.target_kinds, &entry.target_kind)
            && self.min_severity.is_none_or(|min| {
                serde_json::from_value::<Severity>(Value::String(entry.severity.clone()))
                    .is_ok_and(|s| s >= min)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, severity: &str, kind: &str) -> Entry {
        Entry {
            seq: 1,
            ts: "t".into(),
            action: action.into(),
            target_kind: kind.into(),
            target_name: "n".into(),
            severity: severity.into(),
            outcome: "success".into(),
            reason: String::new(),
            details: "{}".into(),
            actor: "{\"id\":\"system\"}".into(),
            actor_id: "system".into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn filters_select_by_action_severity_and_kind() {
        let f = Filter {
            actions: vec!["block".into()],
            min_severity: Some(Severity::High),
            target_kinds: vec!["skill".into()],
            ..Filter::default()
        };
        assert!(f.matches(&entry("block", "CRITICAL", "skill")));
        assert!(!f.matches(&entry("block", "MEDIUM", "skill")));
        assert!(!f.matches(&entry("block", "", "skill")));
        assert!(!f.matches(&entry("allow", "HIGH", "skill")));
        assert!(!f.matches(&entry("block", "HIGH", "mcp")));
        assert!(Filter::default().matches(&entry("x", "", "")));
    }

    #[test]
    fn the_object_carries_the_chain_fields_and_host() {
        let v = entry_object(&entry("block", "", ""), "h1");
        assert_eq!(v["host_id"], "h1");
        assert_eq!(v["target"], Value::Null);
        assert_eq!(v["severity"], Value::Null);
        assert_eq!(v["actor"]["id"], "system");
        for k in ["seq", "prev_hash", "hash"] {
            assert!(v.get(k).is_some());
        }
    }
}
