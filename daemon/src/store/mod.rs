//! The SQLite store. One writer thread owns the write connection and commits
//! in groups: every job waiting when a transaction starts joins it, each in its
//! own savepoint, and each caller is answered only after the group's commit
//! (with `synchronous = FULL`) is durable. Reads run on a small pool of
//! read-only connections inside `spawn_blocking`. Nothing here blocks a tokio
//! worker.

pub mod connections;
mod schema;
pub mod stepup;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use schema::{APPLICATION_ID, OpenError, SCHEMA_VERSION};
pub use write::{NewFinding, ReportOrigin, WriteEffect, WriteOp, normalise_since};

use crate::audit::{Entry, Head, Verification, Verifier};
use crate::error::{Error, Result};
use crate::model::{Decision, EnforcementState, Severity, Target, TargetKind};
use crate::state::StateCache;

/// Columns of a finding, in the order [`finding_row`] reads them.
pub(crate) const FINDING_COLUMNS: &str = "id, kind, name, scanner, rule_id, severity, title, description, \
     location, line, category, snippet, created_at, dismissed_by, dismissed_at, dismiss_reason";

/// A target with its open-findings summary, in the order [`target_row`] reads it.
const TARGET_SUMMARY: &str = "SELECT t.kind, t.name, t.state, t.reason, t.decided_by, t.decided_at, \
     count(f.id), max(f.severity) FROM targets t LEFT JOIN findings f \
     ON f.kind = t.kind AND f.name = t.name AND f.dismissed_at IS NULL";

/// Columns of an audit entry, in the order [`entry_row`] reads them.
const ENTRY_COLUMNS: &str = "seq, ts, action, target_kind, target_name, severity, outcome, reason, details, actor, actor_id, prev_hash, hash";

/// Jobs the writer may fold into one transaction.
const MAX_GROUP: usize = 512;
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// A stored finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FindingRow {
    /// Id.
    pub id: u64,
    /// Target.
    pub target: Target,
    /// Scanner name.
    pub scanner: String,
    /// Rule id.
    pub rule_id: String,
    /// Severity.
    pub severity: Severity,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// File or place.
    pub location: String,
    /// Line, 0 if none.
    pub line: u32,
    /// Category.
    pub category: String,
    /// Redacted excerpt.
    pub snippet: String,
    /// When recorded.
    pub created_at: String,
    /// Dismissal, if any: (by, at, reason).
    pub dismissed: Option<(String, String, String)>,
}

/// A target with its decision and open findings summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    /// Target.
    pub target: Target,
    /// Decision.
    pub decision: Decision,
    /// Open (undismissed) findings.
    pub open_findings: u64,
    /// Highest open severity.
    pub max_open_severity: Option<Severity>,
}

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

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteEffect>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    readers: Arc<ReaderPool>,
    head: Arc<Mutex<Head>>,
    entries: broadcast::Sender<Arc<Entry>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds concurrent reads to the pool size, so connections are reused
    /// rather than opened and dropped under load.
    permits: tokio::sync::Semaphore,
}

/// What the writer thread needs besides its connection.
pub struct WriterContext {
    /// In-memory state kept in step with commits.
    pub cache: Arc<StateCache>,
    /// Log the chain head every this many entries (0: never).
    pub head_log_every: u64,
}

impl Store {
    /// Opens the database (refusing foreign or damaged files), loads the
    /// in-memory state and starts the writer thread. Blocking: call before the
    /// server starts or from `spawn_blocking`.
    pub fn open(
        path: &Path,
        ctx: WriterContext,
    ) -> Result<(Self, std::thread::JoinHandle<()>), OpenError> {
        let conn = schema::open_writer(path)?;
        let sql = |source| OpenError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        load_cache(&conn, &ctx.cache).map_err(sql)?;
        let head = last_head(&conn).map_err(sql)?;
        tracing::info!(audit_head = %head, store = %path.display(), "store opened");
        let head = Arc::new(Mutex::new(head));
        let (jobs, rx) = mpsc::channel(4096);
        let (entries, _) = broadcast::channel(4096);
        let writer = write::Writer::new(conn, ctx, head.clone(), entries.clone()).map_err(sql)?;
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| OpenError::Refused {
                path: path.display().to_string(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let store = Self {
            jobs,
            readers: Arc::new(ReaderPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(MAX_IDLE_READERS),
            }),
            head,
            entries,
        };
        Ok((store, thread))
    }

    /// Runs one write job, returning once it is durable (or failed as a whole).
    pub async fn write(&self, op: WriteOp) -> Result<WriteEffect> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the store writer stopped before answering".into()))?
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
        let pool = self.readers.clone();
        let _permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// Undismissed findings, for `status`.
    pub async fn open_findings(&self) -> Result<u64> {
        self.read(|c| {
            c.query_row(
                "SELECT count(*) FROM findings WHERE dismissed_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(Error::store("counting findings"))
        })
        .await
    }

    /// Targets, optionally of one kind, ordered by kind and name.
    pub async fn list_targets(&self, kind: Option<TargetKind>) -> Result<Vec<TargetRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{TARGET_SUMMARY} WHERE (?1 IS NULL OR t.kind = ?1)
                     GROUP BY t.kind, t.name ORDER BY t.kind, t.name"
                ))
                .map_err(Error::store("listing targets"))?;
            let rows = stmt
                .query_map(params![kind.map(TargetKind::as_str)], target_row)
                .map_err(Error::store("listing targets"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("listing targets"))?
                .into_iter()
                .collect()
        })
        .await
    }

    /// One target, or `None`.
    pub async fn get_target(&self, target: Target) -> Result<Option<TargetRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{TARGET_SUMMARY} WHERE t.kind = ?1 AND t.name = ?2 GROUP BY t.kind, t.name"
                ))
                .map_err(Error::store("reading a target"))?;
            stmt.query_row(params![target.kind.as_str(), target.name], target_row)
                .optional()
                .map_err(Error::store("reading a target"))?
                .transpose()
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

    /// Step-up requests, newest first.
    pub async fn list_stepups(
        &self,
        only_pending: bool,
        limit: u32,
    ) -> Result<Vec<stepup::StepUpRow>> {
        self.read(move |c| stepup::list(c, only_pending, limit))
            .await
    }

    /// One step-up request.
    /// Connection grants, of one server or all.
    pub async fn list_grants(&self, server: Option<String>) -> Result<Vec<connections::GrantRow>> {
        self.read(move |c| connections::list(c, server.as_deref()))
            .await
    }

    /// One server's grant for one connection.
    pub async fn get_grant(
        &self,
        server: String,
        connection: String,
    ) -> Result<Option<connections::GrantRow>> {
        self.read(move |c| connections::get(c, &server, &connection))
            .await
    }

    /// Accounts operators linked.
    pub async fn list_linked_accounts(&self) -> Result<Vec<connections::LinkedAccountRow>> {
        self.read(connections::list_accounts).await
    }

    pub async fn get_stepup(&self, id: String) -> Result<Option<stepup::StepUpRow>> {
        self.read(move |c| stepup::get(c, &id)).await
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

impl ReaderPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        schema::open_reader(&self.path).map_err(Error::store("opening a read connection"))
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

fn writer_loop(mut writer: write::Writer, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|j| (j.op, j.reply)).unzip();
        let results = writer.commit_group(ops);
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that went away no longer needs the answer; the work is done.
            let _ = reply.send(result);
        }
    }
    writer.close();
}

fn load_cache(conn: &Connection, cache: &StateCache) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare("SELECT kind, name, state, reason, decided_by, decided_at FROM targets")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    for row in rows {
        let (kind, name, state, reason, decided_by, decided_at) = row?;
        let (Ok(kind), Some(state)) = (kind.parse::<TargetKind>(), EnforcementState::parse(&state))
        else {
            tracing::warn!(%kind, %name, %state, "skipping a target row with unknown kind or state");
            continue;
        };
        cache.set(
            &Target { kind, name },
            Decision {
                state,
                reason,
                decided_by,
                decided_at,
            },
        );
    }
    Ok(())
}

fn last_head(conn: &Connection) -> rusqlite::Result<Head> {
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

fn target_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TargetRow>> {
    let kind: String = r.get(0)?;
    let state: String = r.get(2)?;
    let max: Option<i64> = r.get(7)?;
    Ok((|| {
        Ok(TargetRow {
            target: Target {
                kind: kind.parse()?,
                name: r.get(1).map_err(Error::store("reading a target"))?,
            },
            decision: Decision {
                state: EnforcementState::parse(&state)
                    .ok_or_else(|| Error::Internal(format!("unknown stored state {state:?}")))?,
                reason: r.get(3).map_err(Error::store("reading a target"))?,
                decided_by: r.get(4).map_err(Error::store("reading a target"))?,
                decided_at: r.get(5).map_err(Error::store("reading a target"))?,
            },
            open_findings: r
                .get::<_, i64>(6)
                .map_err(Error::store("reading a target"))?
                .max(0) as u64,
            max_open_severity: max.and_then(Severity::from_rank),
        })
    })())
}

pub(crate) fn finding_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FindingRow>> {
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
