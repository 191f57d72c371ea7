//! Stored findings: reading them, and dismissing one (with its audit entry).
//! Storing a scanner's findings is [`super::scan_reports`].

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Severity, Target};

/// Columns of a finding, in the order [`finding_row`] reads them.
pub(super) const FINDING_COLUMNS: &str = "id, kind, name, scanner, rule_id, severity, title, description, \
     location, line, category, snippet, created_at, dismissed_by, dismissed_at, dismiss_reason";

/// A stored finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FindingRow {
    /// Rowid, the handle operators dismiss it by.
    pub id: u64,
    /// The skill or MCP server it was found in.
    pub target: Target,
    /// Scanner name.
    pub scanner: String,
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
    /// When recorded.
    pub created_at: String,
    /// Dismissal, if any: (by, at, reason).
    pub dismissed: Option<(String, String, String)>,
}

/// Dismiss a finding.
#[derive(Debug, Clone)]
pub struct DismissFinding {
    /// Finding id.
    pub id: u64,
    /// Why it no longer counts.
    pub reason: String,
    /// Who dismissed it.
    pub actor: Actor,
}

/// What a [`DismissFinding`] did.
#[derive(Debug, Clone)]
pub struct Dismissed {
    /// The finding after dismissal.
    pub finding: Box<FindingRow>,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

impl Operation for DismissFinding {
    type Effect = Dismissed;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Dismissed> {
        let Self { id, reason, actor } = self;
        let conn = tx.conn();
        let now = tx.now();
        let rowid = i64::try_from(id).map_err(|_| Error::NotFound(format!("finding {id}")))?;
        let row = conn
            .prepare_cached(&format!(
                "SELECT {FINDING_COLUMNS} FROM findings WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![rowid], finding_row).optional())
            .map_err(Error::store("reading a finding"))?
            .ok_or_else(|| Error::NotFound(format!("finding {id}")))??;
        if row.dismissed.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "finding {id} is already dismissed"
            )));
        }
        conn.prepare_cached(
            "UPDATE findings SET dismissed_by = ?2, dismissed_at = ?3, dismiss_reason = ?4 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![rowid, actor.id, now, reason]))
        .map_err(Error::store("dismissing a finding"))?;
        let entry = tx.append(&NewEntry {
            action: "dismiss-finding".into(),
            target: Some(row.target.clone()),
            severity: Some(row.severity),
            outcome: "success".into(),
            reason: reason.clone(),
            details: serde_json::json!({
                "finding_id": id,
                "rule_id": row.rule_id,
                "scanner": row.scanner,
                "title": row.title,
            }),
            actor: actor.clone(),
        })?;
        let finding = FindingRow {
            dismissed: Some((actor.id, now, reason)),
            ..row
        };
        Ok(Dismissed {
            finding: Box::new(finding),
            entry,
        })
    }
}

impl Store {
    /// Undismissed findings, for `status`: the counter the findings' triggers
    /// keep in the same transaction (one row, whatever the store's size).
    pub async fn open_findings(&self) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached("SELECT value FROM counters WHERE name = 'open_findings'")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(Error::store("counting findings"))
        })
        .await
    }

    /// Findings, optionally for one target and at or above a severity.
    pub async fn list_findings(
        &self,
        target: Option<Target>,
        min_severity: Option<Severity>,
        include_dismissed: bool,
    ) -> Result<Vec<FindingRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {FINDING_COLUMNS} FROM findings
                     WHERE (?1 IS NULL OR (kind = ?1 AND name = ?2))
                       AND severity >= ?3
                       AND (?4 OR dismissed_at IS NULL)
                     ORDER BY severity DESC, id"
                ))
                .map_err(Error::store("listing findings"))?;
            let rows = stmt
                .query_map(
                    params![
                        target.as_ref().map(|t| t.kind.as_str()),
                        target.as_ref().map(|t| t.name.as_str()),
                        min_severity.map_or(0, |s| s as i64),
                        include_dismissed,
                    ],
                    finding_row,
                )
                .map_err(Error::store("listing findings"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("listing findings"))?
                .into_iter()
                .collect()
        })
        .await
    }

    /// One finding.
    pub async fn get_finding(&self, id: u64) -> Result<Option<FindingRow>> {
        // Ids are SQLite rowids: one beyond i64 names nothing.
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {FINDING_COLUMNS} FROM findings WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row(params![id], finding_row).optional())
            .map_err(Error::store("reading a finding"))?
            .transpose()
        })
        .await
    }
}

/// Reads a finding row; the inner error names a row this build cannot read
/// (an unknown kind or severity).
pub(super) fn finding_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FindingRow>> {
    let kind: String = r.get(1)?;
    let severity: i64 = r.get(5)?;
    let dismissed_by: Option<String> = r.get(13)?;
    let dismissed_at: Option<String> = r.get(14)?;
    let dismiss_reason: Option<String> = r.get(15)?;
    let id: i64 = r.get(0)?;
    let line: i64 = r.get(9)?;
    let row = FindingRow {
        id: id.max(0) as u64,
        target: Target {
            kind: match kind.parse() {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            },
            name: r.get(2)?,
        },
        scanner: r.get(3)?,
        rule_id: r.get(4)?,
        severity: match Severity::from_rank(severity) {
            Some(s) => s,
            None => {
                return Ok(Err(Error::Internal(format!(
                    "unknown stored severity {severity}"
                ))));
            }
        },
        title: r.get(6)?,
        description: r.get(7)?,
        location: r.get(8)?,
        line: u32::try_from(line).unwrap_or(0),
        category: r.get(10)?,
        snippet: r.get(11)?,
        created_at: r.get(12)?,
        dismissed: match (dismissed_by, dismissed_at) {
            (Some(by), Some(at)) => Some((by, at, dismiss_reason.unwrap_or_default())),
            _ => None,
        },
    };
    Ok(Ok(row))
}
