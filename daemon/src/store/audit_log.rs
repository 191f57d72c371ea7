//! The audit log in the store: bare audit entries as an operation, and
//! reading, paging and verifying the chain (appending is [`super::chain`]).

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::{Entry, Head, NewEntry, Verification, Verifier};
use crate::clock::{format_ts, parse_rfc3339};
use crate::error::{Error, Result};
use crate::model::Target;

/// Columns of an audit entry, in the order [`entry_row`] reads them.
const ENTRY_COLUMNS: &str = "seq, ts, action, target_kind, target_name, severity, outcome, reason, details, actor, actor_id, prev_hash, hash";

/// Audit query filters.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// At most this many, newest first.
    pub limit: u32,
    /// Only entries at or after this (fixed-format) timestamp.
    pub since: Option<String>,
    /// Only entries whose actor id or name equals this.
    pub actor: Option<String>,
    /// Only entries about this target.
    pub target: Option<Target>,
}

/// Only an audit entry (refusals, observations, monitor decisions); the
/// effect is the sealed entry.
#[derive(Debug, Clone)]
pub struct Audit(pub NewEntry);

impl Operation for Audit {
    type Effect = Arc<Entry>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Arc<Entry>> {
        tx.append(&self.0)
    }
}

/// Extra details merged into an entry's own (the extra's keys win).
pub(super) fn merge_details(
    base: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    match (base, extra) {
        (serde_json::Value::Object(mut a), serde_json::Value::Object(b)) => {
            a.extend(b);
            serde_json::Value::Object(a)
        }
        (a, serde_json::Value::Null) => a,
        (a, b) => serde_json::json!({"base": a, "extra": b}),
    }
}

/// Normalises a caller's RFC 3339 bound to the stored timestamp format, so
/// string comparison orders correctly.
pub fn normalise_since(since: &str) -> Result<String> {
    Ok(format_ts(parse_rfc3339("since", since)?))
}

impl Store {
    /// Audit entries, newest first.
    pub async fn list_audit(&self, q: AuditQuery) -> Result<Vec<Entry>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit
                     WHERE (?1 IS NULL OR ts >= ?1)
                       AND (?2 IS NULL OR actor_id = ?2 OR json_extract(actor, '$.name') = ?2)
                       AND (?3 IS NULL OR (target_kind = ?3 AND target_name = ?4))
                     ORDER BY seq DESC LIMIT ?5"
                ))
                .map_err(Error::store("listing audit entries"))?;
            let rows = stmt
                .query_map(
                    params![
                        q.since,
                        q.actor,
                        q.target.as_ref().map(|t| t.kind.as_str()),
                        q.target.as_ref().map(|t| t.name.as_str()),
                        i64::from(q.limit),
                    ],
                    entry_row,
                )
                .map_err(Error::store("listing audit entries"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("listing audit entries"))
        })
        .await
    }

    /// Up to `limit` entries with seq > `after`, oldest first.
    pub async fn audit_page(&self, after: u64, limit: u32) -> Result<Vec<Entry>> {
        self.read(move |c| read_page(c, after, limit)).await
    }

    /// Walks the whole chain, optionally against a head recorded earlier.
    pub async fn verify_audit(&self, expected: Option<Head>) -> Result<Verification> {
        self.read(move |c| {
            let mut verifier = Verifier::default();
            let mut after = 0u64;
            'pages: loop {
                let page = read_page(c, after, 2000)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for entry in &page {
                    if !verifier.push(entry) {
                        break 'pages;
                    }
                    if let Some(exp) = &expected
                        && entry.seq == exp.seq
                        && entry.hash != exp.hash
                    {
                        verifier.fail_head(entry.seq, &exp.hash);
                        break 'pages;
                    }
                }
            }
            Ok(verifier.finish(expected.as_ref()))
        })
        .await
    }
}

/// Entries after `after` (a caller's unsigned cursor: one beyond the largest
/// storable seq has nothing after it).
fn read_page(c: &Connection, after: u64, limit: u32) -> Result<Vec<Entry>> {
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .map_err(Error::store("reading audit entries"))?;
    let rows = stmt
        .query_map(params![after, i64::from(limit)], entry_row)
        .map_err(Error::store("reading audit entries"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("reading audit entries"))
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get::<_, i64>(0)?.max(0) as u64,
        ts: r.get(1)?,
        action: r.get(2)?,
        target_kind: r.get(3)?,
        target_name: r.get(4)?,
        severity: r.get(5)?,
        outcome: r.get(6)?,
        reason: r.get(7)?,
        details: r.get(8)?,
        actor: r.get(9)?,
        actor_id: r.get(10)?,
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}
