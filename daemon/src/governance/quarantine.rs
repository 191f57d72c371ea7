//! Quarantine: moving a skill's folder out of the agent's reach into
//! `<state dir>/quarantine/<name>` and back, recorded and audited. Only a
//! folder the daemon knows as a skill ([`KnownSkills`]) is moved; nothing is
//! ever replaced (a name clash is an error); a move across file systems is a
//! copy that never leaves half-written state ([`crate::fs_move`]).
//!
//! Quarantine and restore do not change enforcement: a blocked skill that is
//! restored is still blocked (a restore never lowers protection, so it needs
//! no step-up); unblocking stays `skill unblock`, with its own rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result, quoted};
use crate::fs_move::{self, MoveError, MoveLimits, Moved};
use crate::governance::skill_dirs::{KnownSkills, Located};
use crate::model::Actor;
use crate::store::Store;
use crate::store::quarantine::{
    QuarantineBegin, QuarantineRow, QuarantineSettle, QuarantineState, RestoreBegin, Settled,
};

/// The quarantine service.
#[derive(Debug)]
pub struct Quarantine {
    store: Store,
    dir: PathBuf,
    known: Arc<KnownSkills>,
    limits: MoveLimits,
}

/// A folder moved into or out of quarantine.
#[derive(Debug, Clone)]
pub struct QuarantineOutcome {
    /// The record as it stands (after a restore: as it was).
    pub record: QuarantineRow,
    /// `renamed` or `copied`.
    pub how: &'static str,
    /// What the move skipped or could not keep.
    pub notes: Vec<String>,
    /// The audit entry.
    pub audit_seq: u64,
}

fn move_error(e: MoveError) -> Error {
    match e {
        MoveError::Exists { .. } | MoveError::TooLarge { .. } => {
            Error::FailedPrecondition(e.to_string())
        }
        MoveError::Missing { .. } => Error::NotFound(e.to_string()),
        MoveError::NotAFolder { .. } => Error::invalid("path", e.to_string()),
        MoveError::Io { .. } => Error::Unavailable(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a quarantine task failed: {e}")))
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

impl Quarantine {
    /// Quarantine under `<state_dir>/quarantine`, moving only folders `known` lists.
    pub fn new(store: Store, state_dir: &Path, known: Arc<KnownSkills>, max_bytes: u64) -> Self {
        Self {
            store,
            dir: state_dir.join("quarantine"),
            known,
            limits: MoveLimits {
                max_bytes,
                ..MoveLimits::default()
            },
        }
    }

    /// The known skill folders and roots.
    pub fn known(&self) -> &Arc<KnownSkills> {
        &self.known
    }

    /// The folder of `name`: the one given (which must be a known skill
    /// folder named `name`) or the one the daemon knows.
    async fn source(&self, name: &str, path: Option<PathBuf>) -> Result<PathBuf> {
        match path {
            Some(path) => {
                if !path.is_absolute() {
                    return Err(Error::invalid("path", "must be absolute"));
                }
                if path.file_name().is_none_or(|f| f != name) {
                    return Err(Error::invalid(
                        "path",
                        "must end in the skill's folder, whose name is the skill's name",
                    ));
                }
                // The parent as the kernel resolves it; the folder itself is never followed.
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let canonical = blocking(move || std::fs::canonicalize(parent))
                    .await?
                    .map_err(|e| Error::invalid("path", format!("cannot resolve its folder: {e}")))?
                    .join(name);
                if self.known.is_known(&path) || self.known.is_known(&canonical) {
                    Ok(canonical)
                } else {
                    Err(Error::FailedPrecondition(format!(
                        "{} is not a skill folder the daemon knows (reported by OpenClaw or in a watched directory); only those are quarantined",
                        path.display()
                    )))
                }
            }
            None => match self.known.locate(name) {
                Located::One(p) => Ok(p),
                Located::None => Err(Error::NotFound(format!(
                    "a folder for skill {} in OpenClaw's skills or the watched directories",
                    quoted(name)
                ))),
                Located::Several(ps) => Err(Error::FailedPrecondition(format!(
                    "skill {} has several folders ({}); name one with --path",
                    quoted(name),
                    ps.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            },
        }
    }

    /// Settles a record a crash left mid-move from what is on disk.
    async fn settle_stale(&self, row: &QuarantineRow, actor: &Actor) -> Result<()> {
        let (original, stored) = (
            PathBuf::from(&row.original_path),
            PathBuf::from(&row.stored_path),
        );
        let state = row.state;
        let settled = blocking(move || {
            let (o, s) = (exists(&original), exists(&stored));
            match state {
                // The stored folder appears only complete (renamed into place):
                // the move got that far; finish it.
                QuarantineState::Moving if s => {
                    if o {
                        let _ = std::fs::remove_dir_all(&original);
                    }
                    Settled::Quarantined
                }
                QuarantineState::Moving => Settled::NotQuarantined,
                QuarantineState::Restoring if o => {
                    if s {
                        let _ = std::fs::remove_dir_all(&stored);
                    }
                    Settled::Restored
                }
                QuarantineState::Restoring | QuarantineState::Quarantined => {
                    Settled::StillQuarantined
                }
            }
        })
        .await?;
        if row.state == QuarantineState::Quarantined {
            return Ok(());
        }
        self.store
            .write(QuarantineSettle {
                name: row.name.clone(),
                settled,
                action: "skill-quarantine-recovered",
                outcome: "success",
                reason: format!(
                    "an interrupted {} was settled from the folders on disk",
                    row.state.as_str()
                ),
                details: serde_json::json!({
                    "original_path": row.original_path,
                    "stored_path": row.stored_path,
                    "settled": format!("{settled:?}"),
                }),
                actor: actor.clone(),
            })
            .await?;
        Ok(())
    }

    /// Moves the skill's folder into quarantine.
    pub async fn quarantine(
        &self,
        actor: Actor,
        name: &str,
        path: Option<PathBuf>,
        reason: String,
    ) -> Result<QuarantineOutcome> {
        crate::names::target_name("name", name)?;
        if let Some(row) = self.store.quarantined(name).await? {
            self.settle_stale(&row, &actor).await?;
            if let Some(row) = self.store.quarantined(name).await? {
                return Err(Error::FailedPrecondition(format!(
                    "a skill named {} is already quarantined (from {}); restore it first",
                    quoted(name),
                    row.original_path
                )));
            }
        }
        let src = self.source(name, path).await?;
        let dir = self.dir.clone();
        let stored = dir.join(name);
        let stored_exists = {
            let stored = stored.clone();
            blocking(move || -> Result<bool> {
                crate::paths::ensure_private_dir(&dir).map_err(Error::Unavailable)?;
                fs_move::clean_partials(&dir);
                Ok(exists(&stored))
            })
            .await??
        };
        if stored_exists && self.store.quarantined(name).await?.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "{} exists without a record; move it away first (nothing was replaced)",
                stored.display()
            )));
        }
        let record = self
            .store
            .write(QuarantineBegin {
                name: name.to_owned(),
                original_path: src.display().to_string(),
                stored_path: stored.display().to_string(),
                reason: reason.clone(),
                actor: actor.clone(),
            })
            .await?;
        let limits = self.limits;
        let (from, to) = (src.clone(), stored.clone());
        let moved = blocking(move || fs_move::move_dir(&from, &to, &limits)).await?;
        self.settle_move(
            actor,
            record,
            moved,
            "skill-quarantine",
            Settled::Quarantined,
            Settled::NotQuarantined,
            reason,
        )
        .await
    }

    /// Moves a quarantined skill's folder back where it was. Enforcement is
    /// unchanged: a blocked skill stays blocked.
    pub async fn restore(&self, actor: Actor, name: &str) -> Result<QuarantineOutcome> {
        crate::names::target_name("name", name)?;
        let row = self
            .store
            .quarantined(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("quarantined skill {}", quoted(name))))?;
        if row.state != QuarantineState::Quarantined {
            self.settle_stale(&row, &actor).await?;
            if self.store.quarantined(name).await?.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "skill {} was not in quarantine (an interrupted move was settled); nothing to restore",
                    quoted(name)
                )));
            }
        }
        let record = self
            .store
            .write(RestoreBegin {
                name: name.to_owned(),
            })
            .await?;
        let limits = self.limits;
        let (from, to) = (
            PathBuf::from(&record.stored_path),
            PathBuf::from(&record.original_path),
        );
        let moved = blocking(move || {
            if to.parent().is_some_and(|p| !p.is_dir()) {
                return Err(MoveError::Missing {
                    path: to
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                });
            }
            fs_move::move_dir(&from, &to, &limits)
        })
        .await?;
        self.settle_move(
            actor,
            record,
            moved,
            "skill-restore",
            Settled::Restored,
            Settled::StillQuarantined,
            "restored from quarantine; enforcement unchanged".into(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_move(
        &self,
        actor: Actor,
        mut record: QuarantineRow,
        moved: std::result::Result<Moved, MoveError>,
        action: &'static str,
        done: Settled,
        failed: Settled,
        reason: String,
    ) -> Result<QuarantineOutcome> {
        let mut details = serde_json::json!({
            "original_path": record.original_path,
            "stored_path": record.stored_path,
            "peer": {"uid": actor.uid, "pid": actor.pid},
        });
        match moved {
            Ok(m) => {
                details["how"] = m.how.as_str().into();
                details["notes"] = serde_json::json!(m.notes);
                let entry = self
                    .store
                    .write(QuarantineSettle {
                        name: record.name.clone(),
                        settled: done,
                        action,
                        outcome: "success",
                        reason,
                        details,
                        actor,
                    })
                    .await?;
                record.state = QuarantineState::Quarantined;
                Ok(QuarantineOutcome {
                    record,
                    how: m.how.as_str(),
                    notes: m.notes,
                    audit_seq: entry.seq,
                })
            }
            Err(e) => {
                let err = move_error(e);
                let written = self
                    .store
                    .write(QuarantineSettle {
                        name: record.name.clone(),
                        settled: failed,
                        action,
                        outcome: "error",
                        reason: err.to_string(),
                        details,
                        actor,
                    })
                    .await;
                if let Err(w) = written {
                    tracing::error!(error = %w, skill = %record.name, "could not record a failed quarantine move");
                }
                Err(err)
            }
        }
    }

    /// Every quarantined skill.
    pub async fn list(&self) -> Result<Vec<QuarantineRow>> {
        self.store.list_quarantined().await
    }
}
