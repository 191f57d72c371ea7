//! The one read the Auth-IBOM needs: the audit entries it is derived from, the
//! audit head, the grants' live counters and the linked accounts, all from one
//! read transaction so they agree with each other.

use rusqlite::{Connection, OptionalExtension};

use super::audit_log::{ENTRY_COLUMNS, entry_row};
use super::connections::{GrantRow, LinkedAccountRow, list, list_accounts};
use super::handle::Store;
use crate::audit::{Entry, GENESIS_HASH, Head};
use crate::error::{Error, Result};

/// Most audit entries one inventory reads (token exchanges dominate); beyond
/// it the export is refused rather than growing without bound.
pub const MAX_IBOM_ENTRIES: usize = 1_000_000;

/// Everything one Auth-IBOM is built from, as of one moment.
#[derive(Debug, Clone)]
pub struct IbomSnapshot {
    /// The newest audit entry when it was read.
    pub head: Head,
    /// Entries with one of `actions`, oldest first, none past `head`.
    pub entries: Vec<Entry>,
    /// Every grant as stored now (live counters).
    pub grants: Vec<GrantRow>,
    /// Every linked account as stored now.
    pub accounts: Vec<LinkedAccountRow>,
}

fn snapshot(c: &Connection, actions: &[&str]) -> Result<IbomSnapshot> {
    let tx = c
        .unchecked_transaction()
        .map_err(Error::store("starting the inventory read"))?;
    let head = tx
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
        .optional()
        .map_err(Error::store("reading the audit head"))?
        .unwrap_or_else(|| Head {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        });
    let marks = vec!["?"; actions.len()].join(", ");
    let mut stmt = tx
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM audit WHERE action IN ({marks}) ORDER BY seq"
        ))
        .map_err(Error::store("reading the inventory's audit entries"))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(actions.iter()), entry_row)
        .map_err(Error::store("reading the inventory's audit entries"))?;
    let mut entries = Vec::new();
    for row in rows {
        if entries.len() == MAX_IBOM_ENTRIES {
            return Err(Error::ResourceExhausted(format!(
                "the inventory would read more than {MAX_IBOM_ENTRIES} audit entries"
            )));
        }
        entries.push(row.map_err(Error::store("reading the inventory's audit entries"))?);
    }
    drop(stmt);
    let grants = list(&tx, None)?;
    let accounts = list_accounts(&tx)?;
    Ok(IbomSnapshot {
        head,
        entries,
        grants,
        accounts,
    })
}

impl Store {
    /// The audit entries with one of `actions`, the head, the grants and the
    /// linked accounts, read together.
    pub async fn ibom_snapshot(&self, actions: &'static [&'static str]) -> Result<IbomSnapshot> {
        self.read(move |c| snapshot(c, actions)).await
    }
}
