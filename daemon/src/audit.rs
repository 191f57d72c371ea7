//! The tamper-evident audit chain: entry encoding, hashing and verification.
//!
//! `hash = SHA-256(canonical encoding of the entry, including prev_hash)`, and
//! each entry's `prev_hash` is the previous entry's `hash`, starting from
//! [`GENESIS_HASH`]. The canonical encoding is a JSON array of the stored
//! column values in a fixed order, so verification recomputes it from exactly
//! what is stored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Actor, Severity, Target};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Domain separator and version of the encoding.
const ENCODING_TAG: &str = "defenseclaw-audit-v1";

/// An entry to append; the store assigns seq, ts and the hashes.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// What happened: `block`, `allow`, `unblock`, `scan-report`, `dismiss-finding`, …
    pub action: String,
    /// What it happened to.
    pub target: Option<Target>,
    /// Severity where relevant.
    pub severity: Option<Severity>,
    /// `success`, `unchanged`, `denied`, `refused`, …
    pub outcome: String,
    /// Why, in the actor's words.
    pub reason: String,
    /// Structured details (a JSON object).
    pub details: serde_json::Value,
    /// Who did it (hashed into the entry).
    pub actor: Actor,
}

/// A stored entry, exactly as its columns hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// RFC 3339.
    pub ts: String,
    /// Action name.
    pub action: String,
    /// `skill`, `mcp` or empty.
    pub target_kind: String,
    /// Target name or empty.
    pub target_name: String,
    /// Severity name or empty.
    pub severity: String,
    /// How it ended: `success`, `unchanged`, `denied`, …
    pub outcome: String,
    /// Why, in the actor's words.
    pub reason: String,
    /// Canonical JSON of the details object.
    pub details: String,
    /// Canonical JSON of the actor.
    pub actor: String,
    /// Id of the actor, duplicated for indexed filtering (covered by `actor`).
    pub actor_id: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

impl Entry {
    /// Builds the stored form of `new` at `seq`, chained after `prev_hash`.
    pub fn seal(
        new: &NewEntry,
        seq: u64,
        ts: String,
        prev_hash: &str,
    ) -> Result<Self, serde_json::Error> {
        // serde_json's default map is ordered, so re-encoding sorts object keys.
        let details = match &new.details {
            serde_json::Value::Null => "{}".to_owned(),
            other => {
                serde_json::to_string(&serde_json::from_value::<serde_json::Value>(other.clone())?)?
            }
        };
        let actor = serde_json::to_string(&new.actor)?;
        let mut entry = Self {
            seq,
            ts,
            action: new.action.clone(),
            target_kind: new
                .target
                .as_ref()
                .map(|t| t.kind.as_str().to_owned())
                .unwrap_or_default(),
            target_name: new
                .target
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            severity: new
                .severity
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            outcome: new.outcome.clone(),
            reason: new.reason.clone(),
            details,
            actor,
            actor_id: new.actor.id.clone(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        Ok(entry)
    }

    /// SHA-256 over the canonical encoding, hex.
    pub fn compute_hash(&self) -> String {
        let encoded = serde_json::json!([
            ENCODING_TAG,
            self.seq,
            self.ts,
            self.action,
            self.target_kind,
            self.target_name,
            self.severity,
            self.outcome,
            self.reason,
            self.details,
            self.actor,
            self.prev_hash,
        ])
        .to_string();
        hex::encode(Sha256::digest(encoded.as_bytes()))
    }

    /// The actor, decoded.
    pub fn actor(&self) -> Actor {
        serde_json::from_str(&self.actor).unwrap_or_default()
    }
}

/// `seq:hash`, a point of the chain recorded elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Head {
    /// Sequence number (0 for an empty log).
    pub seq: u64,
    /// Hash of that entry (the genesis hash for an empty log).
    pub hash: String,
}

impl Head {
    /// The head of an empty log.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Parses `SEQ:HASH`.
    pub fn parse(s: &str) -> Option<Self> {
        let (seq, hash) = s.trim().split_once(':')?;
        let seq = seq.parse().ok()?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// True when every entry checks out (and the expected head, if given, matches).
    pub ok: bool,
    /// Entries walked.
    pub entries_checked: u64,
    /// Last entry walked.
    pub head: Head,
    /// The first entry found broken.
    pub first_bad_seq: Option<u64>,
    /// What is wrong, in words.
    pub problem: Option<String>,
}

/// Incremental chain verifier: feed entries in stored (seq) order.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: u64,
    prev_hash: String,
    checked: u64,
    failure: Option<(u64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            checked: 0,
            failure: None,
        }
    }
}

impl Verifier {
    /// Checks the next stored entry. Returns false once a problem is found.
    pub fn push(&mut self, entry: &Entry) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let problem = if entry.seq != self.expected_seq {
            if entry.seq > self.expected_seq {
                Some((
                    self.expected_seq,
                    format!(
                        "entry {} is missing (deleted): the log jumps from {} to {}",
                        self.expected_seq,
                        self.expected_seq.saturating_sub(1),
                        entry.seq
                    ),
                ))
            } else {
                Some((entry.seq, format!("entry {} is out of order", entry.seq)))
            }
        } else if entry.prev_hash != self.prev_hash {
            Some((
                entry.seq,
                format!(
                    "entry {} does not follow entry {} (inserted, replaced or reordered)",
                    entry.seq,
                    entry.seq.saturating_sub(1)
                ),
            ))
        } else if entry.compute_hash() != entry.hash {
            Some((
                entry.seq,
                format!(
                    "entry {} was modified: its hash does not match its content",
                    entry.seq
                ),
            ))
        } else if serde_json::from_str::<Actor>(&entry.actor)
            .map(|a| a.id)
            .ok()
            .as_deref()
            != Some(entry.actor_id.as_str())
        {
            Some((
                entry.seq,
                format!(
                    "entry {} was modified: actor_id does not match the hashed actor",
                    entry.seq
                ),
            ))
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.failure = Some(p);
                false
            }
            None => {
                self.prev_hash.clone_from(&entry.hash);
                self.expected_seq += 1;
                self.checked += 1;
                true
            }
        }
    }

    /// Finishes, optionally checking a head recorded earlier.
    pub fn finish(self, expected_head: Option<&Head>) -> Verification {
        let head = Head {
            seq: self.expected_seq - 1,
            hash: self.prev_hash.clone(),
        };
        let mut failure = self.failure;
        if failure.is_none()
            && let Some(expected) = expected_head
            && expected.seq > head.seq
        {
            failure = Some((
                head.seq + 1,
                format!(
                    "the log was truncated: head {} was recorded, but the log ends at entry {}",
                    expected.seq, head.seq
                ),
            ));
        }
        Verification {
            ok: failure.is_none(),
            entries_checked: self.checked,
            head,
            first_bad_seq: failure.as_ref().map(|f| f.0),
            problem: failure.map(|f| f.1),
        }
    }

    /// Hash of the entry at `seq` if it has been walked and the chain was intact so far.
    pub fn current(&self) -> (u64, &str) {
        (self.expected_seq - 1, &self.prev_hash)
    }

    /// Records a mismatch against a head recorded earlier.
    pub fn fail_head(&mut self, seq: u64, expected_hash: &str) {
        if self.failure.is_none() {
            self.failure = Some((
                seq,
                format!(
                    "entry {seq} differs from the recorded head (expected hash {expected_hash})"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TargetKind;

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let new = NewEntry {
                    action: "block".into(),
                    target: Some(Target {
                        kind: TargetKind::Skill,
                        name: format!("s{seq}"),
                    }),
                    severity: None,
                    outcome: "success".into(),
                    reason: "r".into(),
                    details: serde_json::json!({"b": 1, "a": 2}),
                    actor: Actor::system(),
                };
                let e = Entry::seal(&new, seq, "2026-01-01T00:00:00Z".into(), &prev).unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(entries: &[Entry], head: Option<&Head>) -> Verification {
        let mut v = Verifier::default();
        for e in entries {
            if !v.push(e) {
                break;
            }
        }
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies_and_details_are_canonical() {
        let c = chain(5);
        assert!(c[0].details.starts_with("{\"a\":2"));
        let v = verify(&c, None);
        assert!(v.ok);
        assert_eq!(v.head.seq, 5);
    }

    #[test]
    fn tampering_is_located() {
        let mut c = chain(5);
        c[2].reason = "changed".into();
        assert_eq!(verify(&c, None).first_bad_seq, Some(3));

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c, None).first_bad_seq, Some(2));

        let mut c = chain(5);
        let (a, b) = (c[1].clone(), c[2].clone());
        c[1] = Entry { seq: 2, ..b };
        c[2] = Entry { seq: 3, ..a };
        assert_eq!(verify(&c, None).first_bad_seq, Some(2));

        let c = chain(5);
        let head = Head {
            seq: 5,
            hash: c[4].hash.clone(),
        };
        assert!(verify(&c, Some(&head)).ok);
        assert_eq!(verify(&c[..3], Some(&head)).first_bad_seq, Some(4));
    }

    #[test]
    fn head_parse() {
        assert!(Head::parse("3:abc").is_none());
        let h = Head::parse(&format!("7:{}", "A".repeat(64))).unwrap();
        assert_eq!(h.seq, 7);
        assert_eq!(h.hash, "a".repeat(64));
    }
}
