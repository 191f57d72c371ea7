//! Audit export bookkeeping in the store: each sink's cursor (the last seq its
//! receiver accepted) and the host id every exported record carries.

use rusqlite::{OptionalExtension, params};

use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::error::{Error, Result};

/// Moves sink `name`'s cursor forward to `seq` (never back).
#[derive(Debug, Clone)]
pub struct AdvanceExportCursor {
    /// `[export.<name>]`.
    pub name: String,
    /// Last seq the receiver accepted.
    pub seq: u64,
}

impl Operation for AdvanceExportCursor {
    type Effect = ();

    fn apply(self, tx: &mut Tx<'_>) -> Result<()> {
        let seq = i64::try_from(self.seq)
            .map_err(|_| Error::Internal("export cursor out of range".into()))?;
        let now = tx.now();
        tx.conn()
            .prepare_cached(
                "INSERT INTO export_cursors (name, seq, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq), updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![self.name, seq, now]))
            .map_err(Error::store("advancing an export cursor"))?;
        Ok(())
    }
}

impl Store {
    /// Sink `name`'s cursor (0 when it never delivered).
    pub async fn export_cursor(&self, name: String) -> Result<u64> {
        self.read(move |c| {
            c.query_row(
                "SELECT seq FROM export_cursors WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|s| s.unwrap_or(0).max(0) as u64)
            .map_err(Error::store("reading an export cursor"))
        })
        .await
    }

    /// The host id made when the store was created (or upgraded to version 7):
    /// 32 hex digits, as stable as the audit chain it names.
    pub async fn export_host_id(&self) -> Result<String> {
        self.read(|c| {
            c.query_row("SELECT host_id FROM export_host WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(Error::store("reading the host id"))
        })
        .await
    }
}
