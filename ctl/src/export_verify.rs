//! `audit verify --from-export FILE`: checks a JSON-lines audit export (from
//! the `file` sink, a syslog receiver's MSG field, `audit export`, …) without
//! the daemon: every entry's hash is recomputed from its fields, each entry
//! must follow the one before it (seq + 1, `prev_hash` = previous `hash`), and
//! head records must match the entry they name and not point past the end.
//! Duplicates (at-least-once delivery) are accepted when identical.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Must match the daemon's encoding tag (daemon/src/audit.rs).
const ENCODING_TAG: &str = "defenseclaw-audit-v1";
/// Longest line read (an exported record is far smaller).
const MAX_LINE: usize = 4 * 1024 * 1024;

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// No problem found.
    pub ok: bool,
    /// Distinct entries checked.
    pub entries_checked: u64,
    /// Identical repeats skipped.
    pub duplicates: u64,
    /// Head records checked.
    pub heads_checked: u64,
    /// The host the records name (the first seen).
    pub host_id: Option<String>,
    /// Last entry's `seq:hash`.
    pub last: Option<String>,
    /// First bad (edited or missing) seq.
    pub first_bad_seq: Option<u64>,
    /// What is wrong.
    pub problem: Option<String>,
}

/// Verifies the export in `path` ("-" for stdin).
pub fn verify_file(path: &Path) -> Result<ExportReport, String> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        ))
    };
    verify_lines(reader)
}

/// Verifies JSON lines from `reader`.
pub fn verify_lines(mut reader: impl BufRead) -> Result<ExportReport, String> {
    // Entries by seq (repeats must be identical); heads kept for the end.
    let mut entries: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut heads: Vec<(u64, String)> = Vec::new();
    let mut report = ExportReport {
        ok: true,
        entries_checked: 0,
        duplicates: 0,
        heads_checked: 0,
        host_id: None,
        last: None,
        first_bad_seq: None,
        problem: None,
    };
    let mut filtered = false;
    let fail = |report: &mut ExportReport, seq: u64, why: String| {
        if report.first_bad_seq.is_none_or(|s| seq < s) {
            report.ok = false;
            report.first_bad_seq = Some(seq);
            report.problem = Some(why);
        }
    };
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the export: {e}"))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.len() > MAX_LINE {
            return Err(format!("line {number} is longer than {MAX_LINE} bytes"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("line {number} is not a JSON object: {e}"))?;
        if let Some(h) = v.get("host_id").and_then(Value::as_str) {
            match &report.host_id {
                None => report.host_id = Some(h.to_owned()),
                Some(first) if first != h => {
                    return Err(format!(
                        "line {number} is from host {h}, the export started with host {first}: verify one host at a time"
                    ));
                }
                Some(_) => {}
            }
        }
        let seq = v
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("line {number} has no seq"))?;
        let hash = v
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("line {number} has no hash"))?
            .to_owned();
        if v.get("type").and_then(Value::as_str) == Some("head") {
            filtered |= v.get("filtered").and_then(Value::as_bool) == Some(true);
            heads.push((seq, hash));
            continue;
        }
        let prev = v
            .get("prev_hash")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("line {number} has no prev_hash"))?
            .to_owned();
        match canonical_hash(&v) {
            Some(h) if h == hash => {}
            _ => fail(
                &mut report,
                seq,
                format!("entry {seq} was modified: its hash does not match its content"),
            ),
        }
        match entries.get(&seq) {
            Some((h, p)) if *h == hash && *p == prev => report.duplicates += 1,
            Some(_) => fail(
                &mut report,
                seq,
                format!("entry {seq} appears twice with different content"),
            ),
            None => {
                entries.insert(seq, (hash, prev));
            }
        }
    }
    // Continuity over the distinct entries, in seq order.
    let mut previous: Option<(u64, &str)> = None;
    for (&seq, (hash, prev)) in &entries {
        match previous {
            None if seq == 1 && prev != GENESIS => {
                fail(&mut report, 1, "entry 1 does not start the chain".into());
            }
            Some((p_seq, p_hash)) if seq == p_seq + 1 && prev != p_hash => fail(
                &mut report,
                seq,
                format!(
                    "entry {seq} does not follow entry {p_seq} (inserted, replaced or reordered)"
                ),
            ),
            Some((p_seq, _)) if seq > p_seq + 1 && !filtered => fail(
                &mut report,
                p_seq + 1,
                format!(
                    "entry {} is missing: the export jumps from {p_seq} to {seq}",
                    p_seq + 1
                ),
            ),
            _ => {}
        }
        previous = Some((seq, hash));
        report.entries_checked += 1;
    }
    report.last = previous.map(|(s, h)| format!("{s}:{h}"));
    let last_seq = previous.map_or(0, |p| p.0);
    for (seq, hash) in heads {
        report.heads_checked += 1;
        match entries.get(&seq) {
            Some((h, _)) if *h != hash => fail(
                &mut report,
                seq,
                format!("entry {seq} differs from the head record naming it"),
            ),
            None if seq > last_seq => fail(
                &mut report,
                last_seq + 1,
                format!(
                    "the export was cut off: a head record names entry {seq}, the export ends at {last_seq}"
                ),
            ),
            None if !filtered && seq > 0 => fail(
                &mut report,
                seq,
                format!("entry {seq} is missing: a head record names it"),
            ),
            _ => {}
        }
    }
    Ok(report)
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of the daemon's canonical encoding, rebuilt from an exported object.
fn canonical_hash(v: &Value) -> Option<String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (kind, name) = match v.get("target")? {
        Value::Null => (String::new(), String::new()),
        t => (
            t.get("kind")?.as_str()?.to_owned(),
            t.get("name")?.as_str()?.to_owned(),
        ),
    };
    let severity = match v.get("severity")? {
        Value::Null => String::new(),
        s => s.as_str()?.to_owned(),
    };
    // Details are stored as canonical JSON (sorted keys), which re-encoding gives back.
    let details = match v.get("details")? {
        Value::Null => "{}".to_owned(),
        d => serde_json::to_string(d).ok()?,
    };
    let encoded = serde_json::json!([
        ENCODING_TAG,
        v.get("seq")?.as_u64()?,
        s("ts")?,
        s("action")?,
        kind,
        name,
        severity,
        s("outcome")?,
        s("reason")?,
        details,
        canonical_actor(v.get("actor")?)?,
        s("prev_hash")?,
    ])
    .to_string();
    Some(hex(&Sha256::digest(encoded.as_bytes())))
}

/// The actor in the daemon's field order (the order is part of the hash).
fn canonical_actor(a: &Value) -> Option<String> {
    let obj = a.as_object()?;
    let mut parts = Vec::new();
    for key in ["id", "name", "auth_method", "uid", "gid", "pid"] {
        parts.push(format!(
            "{}:{}",
            serde_json::to_string(key).ok()?,
            serde_json::to_string(obj.get(key).unwrap_or(&Value::Null)).ok()?
        ));
    }
    for key in ["email", "issuer", "client_id"] {
        if let Some(value) = obj.get(key).filter(|v| !v.is_null()) {
            parts.push(format!(
                "{}:{}",
                serde_json::to_string(key).ok()?,
                serde_json::to_string(value).ok()?
            ));
        }
    }
    Some(format!("{{{}}}", parts.join(",")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
