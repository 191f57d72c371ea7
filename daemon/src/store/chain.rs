//! Appending to the audit hash chain inside the writer's transaction, and
//! reading its head when the store opens. The one place rows enter `audit`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::audit::{Entry, Head, NewEntry};
use crate::error::{Error, Result};

/// Seals `new` as the entry after `chain` and inserts it; the caller advances
/// its chain to the returned entry.
pub(super) fn insert(conn: &Connection, chain: &Head, new: &NewEntry, ts: String) -> Result<Entry> {
    let entry = Entry::seal(new, chain.seq + 1, ts, &chain.hash)
        .map_err(|e| Error::Internal(format!("encoding an audit entry: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO audit (seq, ts, action, target_kind, target_name, severity, outcome, reason, details,
                            actor, actor_id, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut s| {
        s.execute(params![
            entry.seq as i64,
            entry.ts,
            entry.action,
            entry.target_kind,
            entry.target_name,
            entry.severity,
            entry.outcome,
            entry.reason,
            entry.details,
            entry.actor,
            entry.actor_id,
            entry.prev_hash,
            entry.hash,
        ])
    })
    .map_err(Error::store("appending an audit entry"))?;
    Ok(entry)
}

/// The newest entry's `seq:hash`, or the genesis head of an empty log.
pub(super) fn last_head(conn: &Connection) -> rusqlite::Result<Head> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?
        .unwrap_or_else(Head::genesis))
}
