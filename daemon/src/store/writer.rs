//! The group-commit writer: one thread owns the write connection; every job
//! waiting when a transaction starts joins it, each in its own savepoint, and
//! callers hear back only once the group's commit is durable. Operations are
//! typed ([`Operation`]): each brings its own apply function and result type,
//! and this module only runs them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::chain;
use super::profile::{self, Phase};
use crate::audit::{Entry, Head, NewEntry};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::model::{Decision, Target};
use crate::state::StateCache;

/// What the writer thread needs besides its connection.
pub struct WriterContext {
    /// In-memory state kept in step with commits.
    pub cache: Arc<StateCache>,
    /// Log the chain head every this many entries (0: never).
    pub head_log_every: u64,
    /// The clock stamping rows and audit entries; also handed to whoever
    /// holds the store ([`crate::store::Store::clock`]) so expiry logic reads the same time.
    pub clock: Clock,
}

/// Jobs the writer may fold into one transaction.
const MAX_GROUP: usize = 512;

/// A write the store can run: a state change with its audit entries, or a bare
/// audit entry. [`crate::store::Store::write`] answers with the operation's own
/// [`Operation::Effect`].
pub trait Operation: Send + 'static {
    /// What the caller gets back once the change is durable.
    type Effect: Send + 'static;

    /// Applies the change inside the open transaction (already in the
    /// operation's savepoint). An error undoes everything this call did.
    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Effect>;
}

/// Two operations that commit together or not at all, in order.
impl<A: Operation, B: Operation> Operation for (A, B) {
    type Effect = (A::Effect, B::Effect);

    fn apply(self, tx: &mut Tx<'_>) -> Result<Self::Effect> {
        let a = self.0.apply(tx)?;
        let b = self.1.apply(tx)?;
        Ok((a, b))
    }
}

/// One operation's view of the open transaction: the connection, the audit
/// chain as it stands after the operations before it, the clock, and what to
/// publish once the group commits.
pub struct Tx<'a> {
    conn: &'a Connection,
    clock: &'a Clock,
    chain: Head,
    entries: Vec<Arc<Entry>>,
    cache_updates: Vec<(Target, Decision)>,
}

impl<'a> Tx<'a> {
    /// The write connection, inside the transaction.
    pub(crate) fn conn(&self) -> &'a Connection {
        self.conn
    }

    /// Now, in the stored format, from the store's clock.
    pub(crate) fn now(&self) -> String {
        self.clock.ts()
    }

    /// Appends an audit entry to the chain; it is broadcast after the commit.
    pub(crate) fn append(&mut self, new: &NewEntry) -> Result<Arc<Entry>> {
        let entry = chain::insert(self.conn, &self.chain, new, self.clock.ts())?;
        self.chain.seq = entry.seq;
        self.chain.hash.clone_from(&entry.hash);
        let entry = Arc::new(entry);
        self.entries.push(entry.clone());
        Ok(entry)
    }

    /// Records a decision for the in-memory state, applied after the commit.
    pub(crate) fn cache(&mut self, target: Target, decision: Decision) {
        self.cache_updates.push((target, decision));
    }
}

/// A queued operation with its caller's reply channel, its type erased so one
/// queue carries every kind of operation.
pub(super) trait Job: Send {
    /// Applies the operation, keeping its effect for [`Job::answer`].
    fn run(&mut self, tx: &mut Tx<'_>) -> Result<()>;
    /// Answers the caller: the kept effect on success, else the error.
    fn answer(self: Box<Self>, outcome: Result<()>);
    /// When the job was queued (profiling only).
    fn queued_at(&self) -> Option<Instant>;
}

/// A job's answer, with when it was sent (profiling only).
pub(super) type Answer<E> = (Result<E>, Option<Instant>);

struct Typed<O: Operation> {
    op: Option<O>,
    effect: Option<O::Effect>,
    reply: oneshot::Sender<Answer<O::Effect>>,
    queued: Option<Instant>,
}

/// Wraps an operation for the queue; the receiver gets its effect.
pub(super) fn job<O: Operation>(op: O) -> (Box<dyn Job>, oneshot::Receiver<Answer<O::Effect>>) {
    let (reply, rx) = oneshot::channel();
    let job = Typed {
        op: Some(op),
        effect: None,
        reply,
        queued: profile::start(),
    };
    (Box::new(job), rx)
}

impl<O: Operation> Job for Typed<O> {
    fn run(&mut self, tx: &mut Tx<'_>) -> Result<()> {
        let op = self
            .op
            .take()
            .ok_or_else(|| Error::Internal("a write operation ran twice".into()))?;
        self.effect = Some(op.apply(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<()>) {
        let Typed { effect, reply, .. } = *self;
        let result = outcome.and_then(|()| {
            effect.ok_or_else(|| Error::Internal("a write operation left no result".into()))
        });
        // A caller that went away no longer needs the answer; the work is done.
        let _ = reply.send((result, profile::start()));
    }

    fn queued_at(&self) -> Option<Instant> {
        self.queued
    }
}

pub(super) struct Writer {
    conn: Connection,
    cache: Arc<StateCache>,
    clock: Clock,
    head_log_every: u64,
    head: Arc<Mutex<Head>>,
    chain: Head,
    entries: broadcast::Sender<Arc<Entry>>,
}

/// What one successful operation leaves to publish after the commit.
struct Staged {
    entries: Vec<Arc<Entry>>,
    cache_updates: Vec<(Target, Decision)>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        ctx: WriterContext,
        head: Arc<Mutex<Head>>,
        entries: broadcast::Sender<Arc<Entry>>,
    ) -> Self {
        let chain = head.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Self {
            conn,
            cache: ctx.cache,
            clock: ctx.clock,
            head_log_every: ctx.head_log_every,
            head,
            chain,
            entries,
        }
    }

    /// Serves the queue until every sender is gone, then closes the database.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Box<dyn Job>>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        self.close();
    }

    /// Applies every job in one transaction, each in its own savepoint so one
    /// failing job does not take the others down (a lone job needs none);
    /// commits once; publishes; and only then answers the callers.
    fn commit_group(&mut self, jobs: Vec<Box<dyn Job>>) {
        profile::group(jobs.len());
        for job in &jobs {
            profile::record(Phase::Handoff, job.queued_at());
        }
        let mut chain = self.chain.clone();
        let begin = profile::start();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                for job in jobs {
                    job.answer(Err(Error::store("beginning a transaction")(clone_err(&e))));
                }
                return;
            }
        };
        profile::record(Phase::Begin, begin);
        // A lone job needs no savepoint: if it fails, the whole transaction
        // (only its own work) is rolled back instead.
        let alone = jobs.len() == 1;
        let mut done: Vec<(Box<dyn Job>, Result<Staged>)> = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let statements = profile::start();
            let mut op_tx = Tx {
                conn: &tx,
                clock: &self.clock,
                chain: chain.clone(),
                entries: Vec::new(),
                cache_updates: Vec::new(),
            };
            let run = if alone {
                job.run(&mut op_tx)
            } else {
                in_savepoint(&tx, || job.run(&mut op_tx))
            };
            let result = run.map(|()| {
                chain = op_tx.chain;
                Staged {
                    entries: op_tx.entries,
                    cache_updates: op_tx.cache_updates,
                }
            });
            profile::record(Phase::Statements, statements);
            done.push((job, result));
        }
        if alone && done.iter().all(|(_, r)| r.is_err()) {
            // Its failure is its answer; nothing of it may commit.
            drop(tx);
            for (job, result) in done {
                job.answer(result.map(|_| ()));
            }
            return;
        }
        let committing = profile::start();
        let committed = commit(tx);
        profile::record(Phase::Commit, committing);
        if let Err(e) = committed {
            tracing::error!(error = %e, "group commit failed; every change in it was rolled back");
            for (job, result) in done {
                job.answer(result.and_then(|_| Err(Error::store("committing")(clone_err(&e)))));
            }
            return;
        }
        let publishing = profile::start();
        self.publish(chain, &mut done);
        profile::record(Phase::Publish, publishing);
        for (job, result) in done {
            job.answer(result.map(|_| ()));
        }
    }

    /// Durable now: the new head, the in-memory state and the live entries.
    fn publish(&mut self, chain: Head, done: &mut [(Box<dyn Job>, Result<Staged>)]) {
        let before = self.chain.seq;
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = chain.clone();
        if self.head_log_every > 0
            && before / self.head_log_every != chain.seq / self.head_log_every
        {
            tracing::info!(audit_head = %chain, "audit chain head");
        }
        self.chain = chain;
        for (_, staged) in done.iter_mut() {
            let Ok(staged) = staged else { continue };
            for (target, decision) in staged.cache_updates.drain(..) {
                self.cache.set(&target, decision);
            }
            for entry in staged.entries.drain(..) {
                // No subscribers is fine.
                let _ = self.entries.send(entry);
            }
        }
    }

    fn close(self) {
        tracing::info!(audit_head = %self.chain, "store closing");
        profile::dump();
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "WAL checkpoint at close failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }
}

/// Runs `f` in a savepoint: released when it succeeds, rolled back when it fails.
fn in_savepoint(tx: &Transaction<'_>, f: impl FnOnce() -> Result<()>) -> Result<()> {
    // Cached statements: a savepoint per operation would cost a parse each otherwise.
    let exec = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
    exec("SAVEPOINT op").map_err(Error::store("opening a savepoint"))?;
    match f() {
        Ok(()) => exec("RELEASE op")
            .map(|_| ())
            .map_err(Error::store("releasing a savepoint")),
        Err(e) => {
            if let Err(undo) = exec("ROLLBACK TO op").and_then(|_| exec("RELEASE op")) {
                tracing::error!(error = %undo, "rolling back a failed operation");
            }
            Err(e)
        }
    }
}

fn commit(tx: Transaction<'_>) -> rusqlite::Result<()> {
    tx.commit()
}

/// rusqlite errors are not Clone; keep the code and message.
fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}
