//! Quarantined skill folders: where each came from and where it is kept, so
//! a restore knows where to put it back. A row is written before the folder
//! moves (state `moving` / `restoring`) and settled after, with the audit
//! entry naming the operator; a row left unsettled by a crash is settled from
//! what is on disk by the next quarantine or restore of that name.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Target, TargetKind};

/// Where a quarantined folder is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineState {
    /// Being moved into quarantine.
    Moving,
    /// In quarantine.
    Quarantined,
    /// Being moved back.
    Restoring,
}

impl QuarantineState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Moving => "moving",
            Self::Quarantined => "quarantined",
            Self::Restoring => "restoring",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "moving" => Self::Moving,
            "restoring" => Self::Restoring,
            _ => Self::Quarantined,
        }
    }
}

/// One quarantined skill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// The skill's name (its folder's).
    pub name: String,
    /// Where the folder was.
    pub original_path: String,
    /// Where it is kept.
    pub stored_path: String,
    /// Moving, quarantined or restoring.
    pub state: QuarantineState,
    /// Why it was quarantined.
    pub reason: String,
    /// Who quarantined it.
    pub quarantined_by: String,
    /// When.
    pub quarantined_at: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QuarantineRow> {
    Ok(QuarantineRow {
        name: r.get(0)?,
        original_path: r.get(1)?,
        stored_path: r.get(2)?,
        state: QuarantineState::parse(&r.get::<_, String>(3)?),
        reason: r.get(4)?,
        quarantined_by: r.get(5)?,
        quarantined_at: r.get(6)?,
    })
}

const COLUMNS: &str =
    "name, original_path, stored_path, state, reason, quarantined_by, quarantined_at";

/// The quarantine row of `name`, if any.
pub(crate) fn get(conn: &Connection, name: &str) -> Result<Option<QuarantineRow>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM quarantine WHERE name = ?1"))
        .and_then(|mut s| s.query_row(params![name], row).optional())
        .map_err(Error::store("reading a quarantine record"))
}

/// Every quarantine row, by name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<QuarantineRow>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM quarantine ORDER BY name"))
        .map_err(Error::store("listing quarantined skills"))?;
    let rows = stmt
        .query_map([], row)
        .map_err(Error::store("listing quarantined skills"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("listing quarantined skills"))
}

/// Records the intent to quarantine a folder, before it moves. Refused when
/// the name already has a record (a name clash: nothing is replaced).
#[derive(Debug, Clone)]
pub struct QuarantineBegin {
    /// The skill.
    pub name: String,
    /// Where the folder is.
    pub original_path: String,
    /// Where it will be kept.
    pub stored_path: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: Actor,
}

impl Operation for QuarantineBegin {
    type Effect = QuarantineRow;

    fn apply(self, tx: &mut Tx<'_>) -> Result<QuarantineRow> {
        let conn = tx.conn();
        if let Some(existing) = get(conn, &self.name)? {
            return Err(Error::FailedPrecondition(format!(
                "a skill named {} is already quarantined (from {}); restore it first",
                crate::error::quoted(&self.name),
                existing.original_path
            )));
        }
        let now = tx.now();
        conn.execute(
            "INSERT INTO quarantine (name, original_path, stored_path, state, reason, quarantined_by, quarantined_at)
             VALUES (?1, ?2, ?3, 'moving', ?4, ?5, ?6)",
            params![
                self.name,
                self.original_path,
                self.stored_path,
                self.reason,
                self.actor.id,
                now
            ],
        )
        .map_err(Error::store("recording a quarantine"))?;
        Ok(QuarantineRow {
            name: self.name,
            original_path: self.original_path,
            stored_path: self.stored_path,
            state: QuarantineState::Moving,
            reason: self.reason,
            quarantined_by: self.actor.id,
            quarantined_at: now,
        })
    }
}

/// Marks a quarantined skill as being restored, before it moves back.
#[derive(Debug, Clone)]
pub struct RestoreBegin {
    /// The skill.
    pub name: String,
}

impl Operation for RestoreBegin {
    type Effect = QuarantineRow;

    fn apply(self, tx: &mut Tx<'_>) -> Result<QuarantineRow> {
        let conn = tx.conn();
        let mut row = get(conn, &self.name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "quarantined skill {}",
                crate::error::quoted(&self.name)
            ))
        })?;
        conn.execute(
            "UPDATE quarantine SET state = 'restoring' WHERE name = ?1",
            params![self.name],
        )
        .map_err(Error::store("recording a restore"))?;
        row.state = QuarantineState::Restoring;
        Ok(row)
    }
}

/// How a move into or out of quarantine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The folder is in quarantine.
    Quarantined,
    /// The folder did not move; the record is dropped.
    NotQuarantined,
    /// The folder is back where it was; the record is dropped.
    Restored,
    /// The folder stayed in quarantine.
    StillQuarantined,
}

/// Settles a record after the move (or after finding what a crash left) and
/// writes the audit entry.
#[derive(Debug, Clone)]
pub struct QuarantineSettle {
    /// The skill.
    pub name: String,
    /// How it ended.
    pub settled: Settled,
    /// The audit entry's action (`skill-quarantine`, `skill-restore`).
    pub action: &'static str,
    /// `success`, `error`, `refused`.
    pub outcome: &'static str,
    /// Why / what failed.
    pub reason: String,
    /// Paths, how it moved, notes.
    pub details: serde_json::Value,
    /// Who.
    pub actor: Actor,
}

impl Operation for QuarantineSettle {
    type Effect = Arc<Entry>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Arc<Entry>> {
        let conn = tx.conn();
        let sql = match self.settled {
            Settled::Quarantined | Settled::StillQuarantined => {
                "UPDATE quarantine SET state = 'quarantined' WHERE name = ?1"
            }
            Settled::NotQuarantined | Settled::Restored => "DELETE FROM quarantine WHERE name = ?1",
        };
        conn.execute(sql, params![self.name])
            .map_err(Error::store("settling a quarantine record"))?;
        tx.append(&NewEntry {
            action: self.action.to_owned(),
            target: Some(Target {
                kind: TargetKind::Skill,
                name: self.name,
            }),
            severity: None,
            outcome: self.outcome.to_owned(),
            reason: self.reason,
            details: self.details,
            actor: self.actor,
        })
    }
}

impl super::handle::Store {
    /// The quarantine record of `name`.
    pub async fn quarantined(&self, name: &str) -> Result<Option<QuarantineRow>> {
        let name = name.to_owned();
        self.read(move |c| get(c, &name)).await
    }

    /// Every quarantine record.
    pub async fn list_quarantined(&self) -> Result<Vec<QuarantineRow>> {
        self.read(list).await
    }
}
