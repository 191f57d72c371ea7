//! The SQLite store. One writer thread owns the write connection and commits
//! in groups ([`writer`]): every job waiting when a transaction starts joins
//! it, each in its own savepoint, and each caller is answered only after the
//! group's commit (with `synchronous = FULL`) is durable. Reads run on a small
//! pool of read-only connections inside `spawn_blocking` ([`readers`]).
//! Nothing here blocks a tokio worker.
//!
//! Each family of operations has its own module with its SQL, its
//! [`Operation`]s and their audit entries: [`enforcement`], [`findings`],
//! [`scan_reports`], [`stepup`], [`connections`], [`grant_status`], [`quarantine`],
//! [`export_cursors`], [`openclaw_setup`] and [`audit_log`].
//! [`Store::write`] answers with the operation's own effect type.
//!
//! Layers inside, no circle: [`handle`] (the `Store` type) and [`chain`] (the
//! audit chain's rows) are leaves; [`writer`] runs operations; the operation
//! families build on them; this file opens the store and is imported by none of them.

pub mod audit_log;
mod chain;
pub mod connections;
pub mod enforcement;
pub mod export_cursors;
pub mod findings;
pub mod grant_status;
mod handle;
pub mod ibom;
pub mod openclaw_setup;
pub mod profile;
pub mod quarantine;
mod readers;
pub mod scan_reports;
mod schema;
pub mod stepup;
pub mod unlink;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc};

pub use audit_log::{Audit, AuditQuery, normalise_since};
pub use connections::{
    ConnectionUsed, DropForeignCredentials, DroppedCredentials, GrantConnections, Granted,
    LinkAccount, RevokeConnection, Revoked,
};
pub use enforcement::{Enforced, RegisterTargets, SetEnforcement, TargetRow};
pub use export_cursors::AdvanceExportCursor;
pub use findings::{DismissFinding, Dismissed, FindingRow};
pub use grant_status::{
    ChangeGrantStatus, ResumeApproved, StatusChange, StatusChanged, SuspendIdle,
};
pub use handle::Store;
pub use openclaw_setup::{GateSetupRow, RecordGateSetup, RecordGateUndo};
pub use scan_reports::{NewFinding, ReportOrigin, ReportStored, ScanReport};
pub use schema::{APPLICATION_ID, OpenError, SCHEMA_VERSION};
pub use stepup::{
    Committed, StepUpClose, StepUpClosed, StepUpCommit, StepUpOpen, StepUpOpened, StepUpSent,
    StepUpStatus,
};
pub use unlink::{UnlinkAccount, Unlinked};
pub use writer::{Operation, Tx, WriterContext};

use crate::audit::{Entry, Head};
use crate::clock::Clock;
use crate::error::{Error, Result};
use readers::ReaderPool;

impl Store {
    /// Opens the database (refusing foreign or damaged files), loads the
    /// in-memory state and starts the writer thread. Blocking: call before the
    /// server starts or from `spawn_blocking`.
    pub fn open(
        path: &Path,
        ctx: WriterContext,
    ) -> Result<(Self, std::thread::JoinHandle<()>), OpenError> {
        profile::init_from_env();
        let conn = schema::open_writer(path)?;
        let sql = |source| OpenError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        enforcement::load_cache(&conn, &ctx.cache).map_err(sql)?;
        let head = chain::last_head(&conn).map_err(sql)?;
        tracing::info!(audit_head = %head, store = %path.display(), "store opened");
        let head = Arc::new(Mutex::new(head));
        let (jobs, rx) = mpsc::channel(4096);
        let (entries, _) = broadcast::channel(4096);
        let clock = ctx.clock.clone();
        let writer = writer::Writer::new(conn, ctx, head.clone(), entries.clone());
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OpenError::Refused {
                path: path.display().to_string(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let store = Self {
            jobs,
            readers: Arc::new(ReaderPool::new(path.to_owned())),
            head,
            entries,
            clock,
        };
        Ok((store, thread))
    }

    /// Runs one operation, returning its effect once it is durable (or its
    /// error, with nothing of it written).
    pub async fn write<O: Operation>(&self, op: O) -> Result<O::Effect> {
        let (job, rx) = writer::job(op);
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        let (result, answered) = rx
            .await
            .map_err(|_| Error::Internal("the store writer stopped before answering".into()))?;
        profile::record(profile::Phase::Wake, answered);
        result
    }

    /// The clock the store stamps with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The newest audit entry's `seq:hash`.
    pub fn head(&self) -> Head {
        self.head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Live audit entries, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.entries.subscribe()
    }

    /// Database path.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Runs a read on a pooled connection off the async workers.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NewEntry;
    use crate::clock::format_ts;
    use crate::model::{Actor, EnforcementAction, EnforcementState, Target, TargetKind};
    use crate::state::StateCache;
    use time::OffsetDateTime;

    fn open(dir: &Path, clock: Clock) -> (Store, std::thread::JoinHandle<()>) {
        let ctx = WriterContext {
            cache: Arc::new(StateCache::default()),
            head_log_every: 0,
            clock,
        };
        Store::open(&dir.join("state.db"), ctx).unwrap()
    }

    fn skill(name: &str) -> Target {
        Target {
            kind: TargetKind::Skill,
            name: name.into(),
        }
    }

    fn block(target: Target) -> SetEnforcement {
        SetEnforcement {
            target,
            action: EnforcementAction::Block,
            reason: "test".into(),
            actor: Actor::system(),
            details: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn operations_answer_with_their_own_effect_stamped_by_the_store_clock() {
        let dir = tempfile::tempdir().unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Clock::manual(start);
        let (store, writer) = open(dir.path(), clock.clone());

        let first = store.write(block(skill("a"))).await.unwrap();
        assert!(first.changed);
        assert_eq!(first.decision.state, EnforcementState::Blocked);
        assert_eq!(first.decision.decided_at, "2023-11-14T22:13:20.000000Z");
        assert_eq!(first.entry.ts, first.decision.decided_at);

        clock.advance(std::time::Duration::from_secs(60));
        let again = store.write(block(skill("a"))).await.unwrap();
        assert!(!again.changed, "already blocked");
        assert_eq!(again.entry.ts, "2023-11-14T22:14:20.000000Z");
        assert_eq!(again.entry.seq, first.entry.seq + 1);

        // A pair commits together: the failing half undoes the other.
        let missing = DismissFinding {
            id: 999,
            reason: "none".into(),
            actor: Actor::system(),
        };
        assert!(store.write((block(skill("b")), missing)).await.is_err());
        assert!(store.get_target(skill("b")).await.unwrap().is_none());
        assert_eq!(store.head().seq, again.entry.seq);

        let entry = store
            .write(Audit(NewEntry {
                action: "observed".into(),
                target: None,
                severity: None,
                outcome: "recorded".into(),
                reason: "test".into(),
                details: serde_json::Value::Null,
                actor: Actor::system(),
            }))
            .await
            .unwrap();
        assert_eq!(entry.seq, again.entry.seq + 1);
        assert!(store.verify_audit(Some(store.head())).await.unwrap().ok);

        drop(store);
        writer.join().unwrap();
    }

    fn observed(name: &str) -> Audit {
        Audit(NewEntry {
            action: "observed".into(),
            target: Some(skill(name)),
            severity: None,
            outcome: "recorded".into(),
            reason: "test".into(),
            details: serde_json::Value::Null,
            actor: Actor::system(),
        })
    }

    /// `audit list` answers the same whichever plan it picks: few or many
    /// entries since the bound, with the clock going backwards in between, a
    /// target filter, and every limit.
    #[tokio::test]
    async fn audit_list_filters_match_a_walk_over_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Clock::manual(start);
        let (store, writer) = open(dir.path(), clock.clone());
        for i in 0..1500u32 {
            // A step back now and then: timestamps are not monotonic in seq.
            if i % 97 == 0 {
                clock.set(start + time::Duration::seconds(i64::from(i) - 50));
            } else {
                clock.advance(std::time::Duration::from_secs(1));
            }
            let name = if i % 3 == 0 { "a" } else { "b" };
            store.write(observed(name)).await.unwrap();
        }
        let all = store.audit_page(0, 10_000).await.unwrap();
        assert_eq!(all.len(), 1500);
        for back in [3i64, 40, 700, 1400, 5000] {
            let since = format_ts(start + time::Duration::seconds(1500 - back));
            for limit in [1u32, 20, 2000] {
                for target in [None, Some(skill("a"))] {
                    let want: Vec<u64> = all
                        .iter()
                        .rev()
                        .filter(|e| e.ts >= since)
                        .filter(|e| target.as_ref().is_none_or(|t| e.target_name == t.name))
                        .take(limit as usize)
                        .map(|e| e.seq)
                        .collect();
                    let got: Vec<u64> = store
                        .list_audit(AuditQuery {
                            limit,
                            since: Some(since.clone()),
                            actor: None,
                            target: target.clone(),
                        })
                        .await
                        .unwrap()
                        .iter()
                        .map(|e| e.seq)
                        .collect();
                    assert_eq!(got, want, "since -{back}s, limit {limit}, {target:?}");
                }
            }
        }
        drop(store);
        writer.join().unwrap();
    }
}
