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
pub(super) const ENTRY_COLUMNS: &str = "seq, ts, action, target_kind, target_name, severity, outcome, reason, details, actor, actor_id, prev_hash, hash";

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
    /// Audit entries, newest first. Only the filters given enter the query, so
    /// a target filter walks its index and no filter walks the newest rows; a
    /// `since` bound with few matches reads them through the time index.
    pub async fn list_audit(&self, q: AuditQuery) -> Result<Vec<Entry>> {
        self.read(move |c| {
            let (sql, args) = list_query(c, &q)?;
            let mut stmt = c
                .prepare_cached(&sql)
                .map_err(Error::store("listing audit entries"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), entry_row)
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

/// The statement and arguments answering `q`. Only the filters given enter
/// the query, so the planner sees plain conditions: no filter walks the
/// primary key back from the newest entry and stops at the limit; a target
/// filter walks `audit_target` (already in seq order); a `since` bound with
/// few matches reads them through `audit_ts` and sorts only those, and one
/// with many walks back from the newest (the clock is nearly monotonic in
/// seq, so the limit is reached early).
fn list_query(c: &Connection, q: &AuditQuery) -> Result<(String, Vec<rusqlite::types::Value>)> {
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(since) = &q.since {
        conds.push("ts >= ?");
        args.push(since.clone().into());
    }
    if let Some(actor) = &q.actor {
        conds.push("(actor_id = ? OR json_extract(actor, '$.name') = ?)");
        args.push(actor.clone().into());
        args.push(actor.clone().into());
    }
    if let Some(t) = &q.target {
        conds.push("target_kind = ? AND target_name = ?");
        args.push(t.kind.as_str().to_owned().into());
        args.push(t.name.clone().into());
    }
    let source = match &q.since {
        Some(since) if q.target.is_none() => {
            if few_since(c, since, q.limit)? {
                "audit INDEXED BY audit_ts"
            } else {
                "audit NOT INDEXED"
            }
        }
        _ => "audit",
    };
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    args.push(i64::from(q.limit).into());
    Ok((
        format!("SELECT {ENTRY_COLUMNS} FROM {source} {filter} ORDER BY seq DESC LIMIT ?"),
        args,
    ))
}

/// Whether few entries (at most a few pages' worth beyond `limit`) are at or
/// after `since`: then reading them through the time index and sorting beats
/// walking back from the newest entry (which, with few matches, reads the
/// whole log). Costs at most that many index entries.
fn few_since(c: &Connection, since: &str, limit: u32) -> Result<bool> {
    let probe = i64::from(limit).saturating_mul(4).max(1000);
    c.prepare_cached(
        "SELECT count(*) FROM (SELECT 1 FROM audit INDEXED BY audit_ts WHERE ts >= ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.query_row(params![since, probe], |r| r.get::<_, i64>(0)))
    .map(|n| n < probe)
    .map_err(Error::store("listing audit entries"))
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

pub(super) fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TargetKind;

    /// A migrated database with `n` audit rows, one a second, every third
    /// about skill "a" and the rest about skill "b".
    fn filled(n: i64) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(&dir.path().join("state.db")).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO audit (seq, ts, action, target_kind, target_name, severity,
                                        outcome, reason, details, actor, actor_id, prev_hash, hash)
                     VALUES (?1, ?2, 'observed', 'skill', ?3, '', 'recorded', '', 'null',
                             '{}', 'system', '', '')",
                )
                .unwrap();
            for seq in 1..=n {
                let ts = format!(
                    "2026-01-01T{:02}:{:02}:{:02}Z",
                    seq / 3600,
                    seq / 60 % 60,
                    seq % 60
                );
                let name = if seq % 3 == 0 { "a" } else { "b" };
                ins.execute(params![seq, ts, name]).unwrap();
            }
        }
        tx.commit().unwrap();
        (dir, conn)
    }

    /// The query plan's detail lines for `q`, as `audit list` would run it.
    fn plan(c: &Connection, q: &AuditQuery) -> String {
        let (sql, args) = list_query(c, q).unwrap();
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join(" | ")
    }

    fn query(limit: u32, since: Option<&str>, target: Option<&str>) -> AuditQuery {
        AuditQuery {
            limit,
            since: since.map(str::to_owned),
            actor: None,
            target: target.map(|name| Target {
                kind: TargetKind::Skill,
                name: name.into(),
            }),
        }
    }

    /// `audit list --limit` and `--since` never sort or scan the whole log:
    /// checked on the plan SQLite chose, not on timing.
    #[test]
    fn audit_list_plans_use_the_indexes() {
        let (_dir, c) = filled(5000);

        // --limit alone: back along the primary key from the newest, no sort.
        let p = plan(&c, &query(20, None, None));
        assert!(
            p.starts_with("SCAN audit") && !p.contains("TEMP B-TREE"),
            "{p}"
        );

        // --since with few matches: a range of the time index, sorting only those.
        let p = plan(&c, &query(20, Some("2026-01-01T01:23:00Z"), None));
        assert!(
            p.contains("SEARCH audit USING INDEX audit_ts (ts>?)"),
            "{p}"
        );

        // --since with many matches: back from the newest, no sort (the
        // limit is reached after about `limit` rows).
        let p = plan(&c, &query(20, Some("2026-01-01T00:00:00Z"), None));
        assert!(
            p.starts_with("SCAN audit") && !p.contains("TEMP B-TREE"),
            "{p}"
        );

        // A target, with or without --since: its index, already in seq order.
        for since in [
            None,
            Some("2026-01-01T01:23:00Z"),
            Some("2026-01-01T00:00:00Z"),
        ] {
            let p = plan(&c, &query(20, since, Some("a")));
            assert!(
                p.contains("USING INDEX audit_target") && !p.contains("TEMP B-TREE"),
                "{since:?}: {p}"
            );
        }
    }

    /// The probe deciding between the two `--since` plans reads at most a
    /// bounded number of index entries and answers by the match count.
    #[test]
    fn few_since_is_decided_by_the_match_count() {
        let (_dir, c) = filled(5000);
        // 5000 - 4140 = 860 entries at or after 01:09:00 (seq 4140 on).
        assert!(few_since(&c, "2026-01-01T01:09:00Z", 20).unwrap());
        assert!(!few_since(&c, "2026-01-01T00:00:00Z", 20).unwrap());
        // A limit beyond the probe's floor raises it: 4000 * 4 > 5000 matches.
        assert!(few_since(&c, "2026-01-01T00:00:00Z", 4000).unwrap());
    }
}
