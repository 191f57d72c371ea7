//! Scan reports: a scanner's findings for a target replace that scanner's
//! previous open findings for it (except those the protection invariant keeps
//! open), with one audit entry for the report.

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::enforcement::ensure_target;
use super::findings::{FINDING_COLUMNS, FindingRow, finding_row};
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Severity, Target};

/// One finding as submitted by a scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFinding {
    /// The scanner's rule id.
    pub rule_id: String,
    /// How bad the scanner says it is.
    pub severity: Severity,
    /// One-line summary.
    pub title: String,
    /// What was found and why it matters.
    pub description: String,
    /// File or place.
    pub location: String,
    /// Line, 0 if none.
    pub line: u32,
    /// The scanner's category.
    pub category: String,
    /// Redacted excerpt.
    pub snippet: String,
}

/// Where a scan report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOrigin {
    /// A scan the daemon ran (`ScanTarget`, install, the watcher).
    Daemon,
    /// `SubmitScanReport` from a local peer.
    Peer,
}

/// Record a scanner's findings for a target, replacing that scanner's
/// previous open findings for it, except those the protection invariant keeps.
#[derive(Debug, Clone)]
pub struct ScanReport {
    /// Scanner name.
    pub scanner: String,
    /// The skill or MCP server scanned.
    pub target: Target,
    /// What the scanner found.
    pub findings: Vec<NewFinding>,
    /// Who submitted it.
    pub actor: Actor,
    /// Whether the daemon scanned it or a peer submitted it.
    pub origin: ReportOrigin,
    /// Open findings at or above this stay open unless the report carries
    /// them again (same rule, place and at least that severity); from
    /// [`crate::governance::protection::Protection::report_keeps_open_at`].
    pub keep_open_at: Option<Severity>,
}

/// What a [`ScanReport`] stored.
#[derive(Debug, Clone)]
pub struct ReportStored {
    /// The stored findings with ids.
    pub findings: Vec<FindingRow>,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

impl Operation for ScanReport {
    type Effect = ReportStored;

    fn apply(self, tx: &mut Tx<'_>) -> Result<ReportStored> {
        let Self {
            scanner,
            target,
            findings,
            actor,
            origin,
            keep_open_at,
        } = self;
        let conn = tx.conn();
        let now = tx.now();
        let created = ensure_target(tx, &target)?;
        let kept = match keep_open_at {
            Some(keep) => kept_findings(conn, &target, &scanner, keep, &findings)?,
            None => Vec::new(),
        };
        // Findings carried again unchanged keep their row, so the id an operator
        // was shown (`finding dismiss ID`) still names them after a re-scan.
        let (unchanged, findings) = split_unchanged(conn, &target, &scanner, findings)?;
        let keep_rows: Vec<u64> = kept
            .iter()
            .chain(unchanged.iter().map(|f| &f.id))
            .copied()
            .collect();
        let replaced = conn
            .prepare_cached(
                "DELETE FROM findings WHERE kind = ?1 AND name = ?2 AND scanner = ?3 AND dismissed_at IS NULL
                   AND id NOT IN (SELECT value FROM json_each(?4))",
            )
            .and_then(|mut s| {
                s.execute(params![
                    target.kind.as_str(),
                    target.name,
                    scanner,
                    serde_json::json!(keep_rows).to_string()
                ])
            })
            .map_err(Error::store("replacing findings"))?;
        let peer = match origin {
            ReportOrigin::Daemon => serde_json::Value::Null,
            ReportOrigin::Peer => serde_json::json!({
                "uid": actor.uid,
                "pid": actor.pid,
                "daemon_scanned": daemon_scanned(conn, &target)?,
            }),
        };
        let inserted = insert_findings(conn, &target, &scanner, findings, &now)?;
        let new_ids: Vec<u64> = inserted.iter().map(|f| f.id).collect();
        let mut stored = unchanged;
        stored.extend(inserted);
        stored.sort_by_key(|f| f.id);
        let mut by_severity = serde_json::Map::new();
        for f in &stored {
            let slot = by_severity
                .entry(f.severity.as_str())
                .or_insert(serde_json::json!(0));
            *slot = serde_json::json!(slot.as_u64().unwrap_or(0) + 1);
        }
        let entry = tx.append(&NewEntry {
            action: "scan-report".into(),
            target: Some(target.clone()),
            severity: stored.iter().map(|f| f.severity).max(),
            outcome: "recorded".into(),
            reason: format!("{} finding(s) from {scanner}", stored.len()),
            details: serde_json::json!({
                "scanner": scanner,
                "findings": stored.len(),
                "by_severity": by_severity,
                "replaced": replaced,
                "finding_ids": stored.iter().map(|f| f.id).collect::<Vec<_>>(),
                "new_finding_ids": new_ids,
                "new_target": created,
                "daemon_scan": origin == ReportOrigin::Daemon,
                // Open findings at or above min_severity the report left out or
                // lowered: they stay open until a human-approved dismissal.
                "kept_open": kept,
                "peer": peer,
            }),
            actor,
        })?;
        Ok(ReportStored {
            findings: stored,
            entry,
        })
    }
}

/// Inserts the report's findings, returning them as stored (with ids).
fn insert_findings(
    conn: &Connection,
    target: &Target,
    scanner: &str,
    findings: Vec<NewFinding>,
    now: &str,
) -> Result<Vec<FindingRow>> {
    let mut stored = Vec::with_capacity(findings.len());
    for f in findings {
        conn.prepare_cached(
            "INSERT INTO findings (kind, name, scanner, rule_id, severity, title, description, location,
                                   line, category, snippet, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut s| {
            s.execute(params![
                target.kind.as_str(),
                target.name,
                scanner,
                f.rule_id,
                f.severity as i64,
                f.title,
                f.description,
                f.location,
                i64::from(f.line),
                f.category,
                f.snippet,
                now,
            ])
        })
        .map_err(Error::store("storing a finding"))?;
        stored.push(FindingRow {
            id: conn.last_insert_rowid().max(0) as u64,
            target: target.clone(),
            scanner: scanner.to_owned(),
            rule_id: f.rule_id,
            severity: f.severity,
            title: f.title,
            description: f.description,
            location: f.location,
            line: f.line,
            category: f.category,
            snippet: f.snippet,
            created_at: now.to_owned(),
            dismissed: None,
        });
    }
    Ok(stored)
}

/// Splits `incoming` into the open findings of `scanner` on `target` it
/// carries again with every field equal (returned as stored, ids kept) and the
/// findings to insert. Each stored row matches at most one incoming finding.
fn split_unchanged(
    conn: &Connection,
    target: &Target,
    scanner: &str,
    incoming: Vec<NewFinding>,
) -> Result<(Vec<FindingRow>, Vec<NewFinding>)> {
    let mut open: Vec<FindingRow> = conn
        .prepare_cached(&format!(
            "SELECT {FINDING_COLUMNS} FROM findings
             WHERE kind = ?1 AND name = ?2 AND scanner = ?3 AND dismissed_at IS NULL ORDER BY id"
        ))
        .and_then(|mut s| {
            s.query_map(
                params![target.kind.as_str(), target.name, scanner],
                finding_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(Error::store("reading findings"))?
        .into_iter()
        .collect::<Result<_>>()?;
    let mut unchanged = Vec::new();
    let mut fresh = Vec::new();
    for f in incoming {
        match open.iter().position(|row| same_finding(row, &f)) {
            Some(i) => unchanged.push(open.swap_remove(i)),
            None => fresh.push(f),
        }
    }
    Ok((unchanged, fresh))
}

fn same_finding(row: &FindingRow, f: &NewFinding) -> bool {
    row.rule_id == f.rule_id
        && row.severity == f.severity
        && row.title == f.title
        && row.description == f.description
        && row.location == f.location
        && row.line == f.line
        && row.category == f.category
        && row.snippet == f.snippet
}

/// Open findings of `scanner` on `target` at or above `keep` that the new
/// report does not carry again (same rule and location, at least as severe; the
/// line is ignored so an edit above a finding does not duplicate it).
fn kept_findings(
    conn: &Connection,
    target: &Target,
    scanner: &str,
    keep: Severity,
    incoming: &[NewFinding],
) -> Result<Vec<u64>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, rule_id, location, severity FROM findings
             WHERE kind = ?1 AND name = ?2 AND scanner = ?3 AND dismissed_at IS NULL AND severity >= ?4",
        )
        .map_err(Error::store("reading findings"))?;
    let rows = stmt
        .query_map(
            params![target.kind.as_str(), target.name, scanner, keep as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .map_err(Error::store("reading findings"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("reading findings"))?;
    Ok(rows
        .into_iter()
        .filter(|(_, rule, location, severity)| {
            !incoming.iter().any(|f| {
                f.rule_id == *rule && f.location == *location && f.severity as i64 >= *severity
            })
        })
        .map(|(id, ..)| id.max(0) as u64)
        .collect())
}

/// Whether the daemon itself ever scanned `target` (an audited daemon scan report).
fn daemon_scanned(conn: &Connection, target: &Target) -> Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM audit WHERE target_kind = ?1 AND target_name = ?2
           AND action = 'scan-report' AND json_extract(details, '$.daemon_scan') = 1)",
    )
    .and_then(|mut s| s.query_row(params![target.kind.as_str(), target.name], |r| r.get(0)))
    .map_err(Error::store("reading the audit log"))
}
