//! The writer: applies state changes and their audit entries in one
//! transaction, many callers per commit.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::broadcast;

use super::connections::{
    self, ConnectionDecl, GrantRow, GrantStatus, LinkedAccountRow, SealedSubject,
};
use super::stepup::{self as stepups, StepUpRow};
use super::{FINDING_COLUMNS, FindingRow, WriterContext, finding_row};
use crate::audit::{Entry, Head, NewEntry};
use crate::error::{Error, Result};
use crate::model::{
    Actor, Decision, EnforcementAction, EnforcementState, Severity, Target, TargetKind, format_ts,
    now_ts,
};
use crate::state::StateCache;

/// One finding as submitted by a scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFinding {
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
}

/// Where a scan report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOrigin {
    /// A scan the daemon ran (`ScanTarget`, install, the watcher).
    Daemon,
    /// `SubmitScanReport` from a local peer.
    Peer,
}

/// A state change (always with its audit entry) or a bare audit entry.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Block, allow or unblock a target.
    SetEnforcement {
        /// Target.
        target: Target,
        /// What to do.
        action: EnforcementAction,
        /// Why.
        reason: String,
        /// Who.
        actor: Actor,
        /// Extra audit details (merged into the entry's details).
        details: serde_json::Value,
    },
    /// Record a scanner's findings for a target, replacing that scanner's
    /// previous open findings for it, except those the protection invariant keeps.
    ScanReport {
        /// Scanner name.
        scanner: String,
        /// Target.
        target: Target,
        /// Findings.
        findings: Vec<NewFinding>,
        /// Who submitted it.
        actor: Actor,
        /// Whether the daemon scanned it or a peer submitted it.
        origin: ReportOrigin,
        /// Open findings at or above this stay open unless the report carries
        /// them again (same rule, place and at least that severity); from
        /// [`crate::protection::Protection::report_keeps_open_at`].
        keep_open_at: Option<Severity>,
    },
    /// Dismiss a finding.
    DismissFinding {
        /// Finding id.
        id: u64,
        /// Why.
        reason: String,
        /// Who.
        actor: Actor,
    },
    /// Record targets seen elsewhere (no decision).
    RegisterTargets {
        /// Targets.
        targets: Vec<Target>,
        /// Who reported them.
        actor: Actor,
        /// Where they were seen.
        source: String,
    },
    /// Only an audit entry (refusals, observations, monitor decisions).
    Audit(NewEntry),
    /// Open a step-up request, or join the pending one for the same target and
    /// action; a new request is refused when a cap is reached.
    StepUpOpen {
        /// The request.
        row: Box<StepUpRow>,
        /// Caps on pending requests (`None`: the daemon's own proposals).
        caps: Option<stepups::PendingCaps>,
    },
    /// Record that the request went to the provider.
    StepUpSent {
        /// Request id.
        id: String,
        /// The provider's handle.
        auth_req_id: String,
        /// Local deadline, seconds since the epoch.
        deadline: i64,
        /// Poll interval, seconds.
        interval_secs: u64,
    },
    /// End a pending step-up: its outcome, its audit entry, and the change it
    /// commits (if any), all in one transaction.
    StepUpClose {
        /// Request id.
        id: String,
        /// `approved`, `denied`, `timed_out`, `error`, `cancelled`.
        status: String,
        /// Why.
        reason: String,
        /// Who approved (validated ID token claims), if anyone.
        approver: Option<serde_json::Value>,
        /// Who ends it (the daemon, or the operator who cancelled).
        actor: Actor,
        /// The change to commit with it.
        commit: Option<Box<WriteOp>>,
        /// Extra audit details.
        details: serde_json::Value,
    },
    /// Several ops that commit together or not at all.
    All(Vec<WriteOp>),
    /// Declare (or re-declare) connections an MCP server may use.
    GrantConnections {
        /// MCP server name.
        server: String,
        /// The connections and their scopes.
        grants: Vec<ConnectionDecl>,
        /// Who approved (`sub` of the CIBA approver, or the operator).
        approved_by: String,
        /// The approver's sealed refresh token, for unattended exchanges.
        subject: Option<SealedSubject>,
        /// Who made the change.
        actor: Actor,
        /// Extra audit details.
        details: serde_json::Value,
    },
    /// A grant re-declared by someone other than the approver whose refresh
    /// token it keeps: that credential is dropped (and audited) until the new
    /// declaration is approved.
    DropForeignCredentials {
        /// MCP server name.
        server: String,
        /// The connections re-declared.
        connections: Vec<String>,
        /// The declaring operator (`sub` or local actor id): their own credential stays.
        keep_sub: String,
        /// Who re-declared.
        actor: Actor,
    },
    /// Revoke a grant and drop its stored subject credential.
    RevokeConnection {
        /// MCP server name.
        server: String,
        /// Connection name.
        connection: String,
        /// Why.
        reason: String,
        /// Who.
        actor: Actor,
    },
    /// Tokens handed out for a grant, the grant's health after an exchange,
    /// and (for exchanges with the provider) their audit entry.
    ConnectionUsed {
        /// MCP server name.
        server: String,
        /// Connection name.
        connection: String,
        /// Tokens handed out.
        uses: u64,
        /// Scopes the provider granted (after a successful exchange).
        granted_scopes: Option<Vec<String>>,
        /// New health, when an exchange decided it.
        status: Option<(GrantStatus, String)>,
        /// Audit entry for the exchange.
        audit: Option<NewEntry>,
    },
    /// An operator linked an account (Connected Accounts).
    LinkAccount {
        /// The account.
        account: LinkedAccountRow,
        /// Who.
        actor: Actor,
    },
}

/// Stored grant credentials dropped: (connection, whose credential) pairs.
pub type DroppedCredentials = Vec<(String, String)>;

/// What a committed job did.
#[derive(Debug, Clone)]
pub enum WriteEffect {
    /// Enforcement result.
    Enforcement {
        /// Decision now in force.
        decision: Decision,
        /// False when the target already was in that state.
        changed: bool,
        /// Audit entry written.
        entry: Arc<Entry>,
        /// Open findings of the target, and their highest severity.
        open_findings: (u64, Option<Severity>),
    },
    /// Findings stored.
    Findings {
        /// The stored findings with ids.
        findings: Vec<FindingRow>,
        /// Audit entry written.
        entry: Arc<Entry>,
    },
    /// The dismissed finding.
    Dismissed {
        /// The finding after dismissal.
        finding: Box<FindingRow>,
        /// Audit entry written.
        entry: Arc<Entry>,
    },
    /// Targets registered (only new ones are audited).
    Registered {
        /// Newly created targets.
        created: Vec<Target>,
    },
    /// Audit entry appended.
    Audited {
        /// The entry.
        entry: Arc<Entry>,
    },
    /// A step-up opened (`joined` when an identical one was already pending).
    StepUpOpened {
        /// The request (new or existing).
        row: Box<StepUpRow>,
        /// True when it joined a pending request.
        joined: bool,
    },
    /// A step-up not opened: a pending-request cap is reached (nothing written).
    StepUpRefused(Box<stepups::CapRefusal>),
    /// A step-up's provider handle was recorded.
    StepUpSent,
    /// Every effect of an [`WriteOp::All`], in order.
    All(Vec<WriteEffect>),
    /// Grants recorded.
    Granted {
        /// The grants as stored now.
        grants: Vec<GrantRow>,
        /// Audit entry written.
        entry: Arc<Entry>,
    },
    /// A grant revoked.
    ConnectionRevoked {
        /// The grant after revocation.
        grant: Box<GrantRow>,
        /// Audit entry written.
        entry: Arc<Entry>,
    },
    /// Use recorded.
    ConnectionUsed,
    /// Stored credentials dropped.
    CredentialsDropped {
        /// What was dropped.
        dropped: DroppedCredentials,
    },
    /// A linked account recorded.
    AccountLinked {
        /// Audit entry written.
        entry: Arc<Entry>,
    },
    /// A step-up ended.
    StepUpClosed {
        /// The request after closing.
        row: Box<StepUpRow>,
        /// What its commit did, if it committed something.
        committed: Option<Box<WriteEffect>>,
        /// The step-up's audit entry.
        entry: Arc<Entry>,
    },
}

pub(super) struct Writer {
    conn: Connection,
    cache: Arc<StateCache>,
    head_log_every: u64,
    head: Arc<Mutex<Head>>,
    chain: Head,
    entries: broadcast::Sender<Arc<Entry>>,
}

/// Staged results of one job inside the open transaction.
struct Staged {
    effect: WriteEffect,
    entries: Vec<Arc<Entry>>,
    cache_updates: Vec<(Target, Decision)>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        ctx: WriterContext,
        head: Arc<Mutex<Head>>,
        entries: broadcast::Sender<Arc<Entry>>,
    ) -> rusqlite::Result<Self> {
        let chain = head.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Self {
            conn,
            cache: ctx.cache,
            head_log_every: ctx.head_log_every,
            head,
            chain,
            entries,
        })
    }

    /// Applies every op in one transaction, each in its own savepoint so one
    /// failing op does not take the others down; then commits once.
    pub(super) fn commit_group(&mut self, ops: Vec<WriteOp>) -> Vec<Result<WriteEffect>> {
        let mut chain = self.chain.clone();
        let mut staged: Vec<Result<Staged>> = Vec::with_capacity(ops.len());
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                return ops
                    .iter()
                    .map(|_| Err(Error::store("beginning a transaction")(clone_err(&e))))
                    .collect();
            }
        };
        for op in ops {
            let mut job_chain = chain.clone();
            // Cached statements: a savepoint per op would cost a parse each otherwise.
            let result = (|| {
                tx.prepare_cached("SAVEPOINT op")
                    .and_then(|mut s| s.execute([]))
                    .map_err(Error::store("opening a savepoint"))?;
                match apply(&tx, op, &mut job_chain) {
                    Ok(out) => {
                        tx.prepare_cached("RELEASE op")
                            .and_then(|mut s| s.execute([]))
                            .map_err(Error::store("releasing a savepoint"))?;
                        Ok(out)
                    }
                    Err(e) => {
                        let undone = tx
                            .prepare_cached("ROLLBACK TO op")
                            .and_then(|mut s| s.execute([]))
                            .and_then(|_| {
                                tx.prepare_cached("RELEASE op")
                                    .and_then(|mut s| s.execute([]))
                            });
                        if let Err(undo) = undone {
                            tracing::error!(error = %undo, "rolling back a failed operation");
                        }
                        Err(e)
                    }
                }
            })();
            if result.is_ok() {
                chain = job_chain;
            }
            staged.push(result);
        }
        if let Err(e) = commit(tx) {
            tracing::error!(error = %e, "group commit failed; every change in it was rolled back");
            return staged
                .into_iter()
                .map(|s| s.and_then(|_| Err(Error::store("committing")(clone_err(&e)))))
                .collect();
        }
        // Durable now: publish to memory, followers and the journal.
        let before = self.chain.seq;
        self.chain = chain.clone();
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = chain.clone();
        if self.head_log_every > 0
            && before / self.head_log_every != chain.seq / self.head_log_every
        {
            tracing::info!(audit_head = %chain, "audit chain head");
        }
        staged
            .into_iter()
            .map(|s| {
                s.map(|s| {
                    for (target, decision) in s.cache_updates {
                        self.cache.set(&target, decision);
                    }
                    for entry in s.entries {
                        // No subscribers is fine.
                        let _ = self.entries.send(entry);
                    }
                    s.effect
                })
            })
            .collect()
    }

    pub(super) fn close(self) {
        tracing::info!(audit_head = %self.chain, "store closing");
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "WAL checkpoint at close failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the database failed");
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

fn append(conn: &Connection, chain: &mut Head, new: &NewEntry) -> Result<Arc<Entry>> {
    let seq = chain.seq + 1;
    let entry = Entry::seal(new, seq, now_ts(), &chain.hash)
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
    chain.seq = seq;
    chain.hash.clone_from(&entry.hash);
    Ok(Arc::new(entry))
}

fn current_decision(conn: &Connection, target: &Target) -> Result<Option<Decision>> {
    conn.prepare_cached(
        "SELECT state, reason, decided_by, decided_at FROM targets WHERE kind = ?1 AND name = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![target.kind.as_str(), target.name], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
    })
    .map_err(Error::store("reading a target"))?
    .map(|(state, reason, decided_by, decided_at)| {
        Ok(Decision {
            state: EnforcementState::parse(&state)
                .ok_or_else(|| Error::Internal(format!("unknown stored state {state:?}")))?,
            reason,
            decided_by,
            decided_at,
        })
    })
    .transpose()
}

fn ensure_target(conn: &Connection, target: &Target, now: &str) -> Result<bool> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO targets (kind, name, created_at) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![target.kind.as_str(), target.name, now]))
    .map(|n| n > 0)
    .map_err(Error::store("registering a target"))
}

/// Drops the stored credentials of `server`'s `connections` not owned by
/// `keep_sub`, with one audit entry naming whose they were.
fn drop_foreign_credentials<'a>(
    conn: &Connection,
    chain: &mut Head,
    server: &str,
    connections: impl Iterator<Item = &'a str>,
    keep_sub: &str,
    actor: &Actor,
) -> Result<(DroppedCredentials, Option<Arc<Entry>>)> {
    let mut dropped = Vec::new();
    for c in connections {
        if let Some(owner) = connections::drop_subject_unless(conn, server, c, keep_sub)? {
            dropped.push((c.to_owned(), owner));
        }
    }
    if dropped.is_empty() {
        return Ok((dropped, None));
    }
    let entry = append(
        conn,
        chain,
        &NewEntry {
            action: "connection-credential-dropped".into(),
            target: Some(Target {
                kind: TargetKind::Mcp,
                name: server.to_owned(),
            }),
            severity: None,
            outcome: "success".into(),
            reason: format!(
                "re-declared by {}: the previous approver's stored credential no longer starts it unattended until the new declaration is approved",
                actor.name
            ),
            details: serde_json::json!({
                "dropped": dropped
                    .iter()
                    .map(|(c, sub)| serde_json::json!({"connection": c, "subject_sub": sub}))
                    .collect::<Vec<_>>(),
                "declared_by": keep_sub,
                "subject_credential_dropped": true,
            }),
            actor: actor.clone(),
        },
    )?;
    Ok((dropped, Some(entry)))
}

fn merge_details(base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    match (base, extra) {
        (serde_json::Value::Object(mut a), serde_json::Value::Object(b)) => {
            a.extend(b);
            serde_json::Value::Object(a)
        }
        (a, serde_json::Value::Null) => a,
        (a, b) => serde_json::json!({"base": a, "extra": b}),
    }
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

/// The first pending-request cap a new request would exceed, checked in the
/// writer so concurrent requests cannot slip past it.
fn cap_reached(
    conn: &Connection,
    row: &StepUpRow,
    caps: Option<stepups::PendingCaps>,
) -> Result<Option<stepups::CapRefusal>> {
    let Some(caps) = caps else {
        return Ok(None);
    };
    let refusal = |cap, limit, pending, key: String, what: String| stepups::CapRefusal {
        cap,
        limit,
        pending,
        key,
        what,
        action: row.action,
        target: row.target.clone(),
        requester: row.requester.clone(),
    };
    let mine = stepups::pending_by_requester(conn, &row.requester.id)?;
    if mine >= u64::from(caps.per_requester) {
        return Ok(Some(refusal(
            "max_pending_per_requester",
            caps.per_requester,
            mine,
            format!("requester:{}", row.requester.id),
            format!("{} has {mine} pending", row.requester.id),
        )));
    }
    let on_target = stepups::pending_on_target(conn, &row.target)?;
    if on_target >= u64::from(caps.per_target) {
        return Ok(Some(refusal(
            "max_pending_per_target",
            caps.per_target,
            on_target,
            format!("target:{}", row.target),
            format!("{} has {on_target} pending", row.target),
        )));
    }
    Ok(None)
}

fn apply(conn: &Connection, op: WriteOp, chain: &mut Head) -> Result<Staged> {
    match op {
        WriteOp::SetEnforcement {
            target,
            action,
            reason,
            actor,
            details,
        } => {
            let now = now_ts();
            let previous = current_decision(conn, &target)?;
            let previous_state = previous
                .as_ref()
                .map_or(EnforcementState::None, |d| d.state);
            let wanted = action.resulting_state();
            let changed = previous_state != wanted;
            let decision = if changed {
                let decision = Decision {
                    state: wanted,
                    reason: reason.clone(),
                    decided_by: actor.id.clone(),
                    decided_at: now.clone(),
                };
                ensure_target(conn, &target, &now)?;
                conn.prepare_cached(
                    "UPDATE targets SET state = ?3, reason = ?4, decided_by = ?5, decided_at = ?6
                     WHERE kind = ?1 AND name = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        target.kind.as_str(),
                        target.name,
                        decision.state.as_str(),
                        decision.reason,
                        decision.decided_by,
                        decision.decided_at,
                    ])
                })
                .map_err(Error::store("updating a target"))?;
                decision
            } else {
                previous.unwrap_or_default()
            };
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: action.audit_action().to_owned(),
                    target: Some(target.clone()),
                    severity: None,
                    outcome: if changed { "success" } else { "unchanged" }.to_owned(),
                    reason,
                    details: merge_details(
                        serde_json::json!({
                            "previous_state": previous_state.as_str(),
                            "state": decision.state.as_str(),
                        }),
                        details,
                    ),
                    actor,
                },
            )?;
            let open_findings = conn
                .prepare_cached(
                    "SELECT count(*), max(severity) FROM findings
                     WHERE kind = ?1 AND name = ?2 AND dismissed_at IS NULL",
                )
                .and_then(|mut s| {
                    s.query_row(params![target.kind.as_str(), target.name], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
                    })
                })
                .map(|(n, max)| (n.max(0) as u64, max.and_then(Severity::from_rank)))
                .map_err(Error::store("counting findings"))?;
            Ok(Staged {
                cache_updates: if changed {
                    vec![(target, decision.clone())]
                } else {
                    vec![]
                },
                entries: vec![entry.clone()],
                effect: WriteEffect::Enforcement {
                    decision,
                    changed,
                    entry,
                    open_findings,
                },
            })
        }
        WriteOp::ScanReport {
            scanner,
            target,
            findings,
            actor,
            origin,
            keep_open_at,
        } => {
            let now = now_ts();
            let created = ensure_target(conn, &target, &now)?;
            let kept = match keep_open_at {
                Some(keep) => kept_findings(conn, &target, &scanner, keep, &findings)?,
                None => Vec::new(),
            };
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
                        serde_json::json!(kept).to_string()
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
            let mut ids = Vec::with_capacity(findings.len());
            for f in &findings {
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
                ids.push(conn.last_insert_rowid());
            }
            let stored = findings
                .into_iter()
                .zip(ids)
                .map(|(f, id)| FindingRow {
                    id: id.max(0) as u64,
                    target: target.clone(),
                    scanner: scanner.clone(),
                    rule_id: f.rule_id,
                    severity: f.severity,
                    title: f.title,
                    description: f.description,
                    location: f.location,
                    line: f.line,
                    category: f.category,
                    snippet: f.snippet,
                    created_at: now.clone(),
                    dismissed: None,
                })
                .collect::<Vec<_>>();
            let max = stored.iter().map(|f| f.severity).max();
            let mut by_severity = serde_json::Map::new();
            for f in &stored {
                let slot = by_severity
                    .entry(f.severity.as_str())
                    .or_insert(serde_json::json!(0));
                *slot = serde_json::json!(slot.as_u64().unwrap_or(0) + 1);
            }
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: "scan-report".into(),
                    target: Some(target.clone()),
                    severity: max,
                    outcome: "recorded".into(),
                    reason: format!("{} finding(s) from {scanner}", stored.len()),
                    details: serde_json::json!({
                        "scanner": scanner,
                        "findings": stored.len(),
                        "by_severity": by_severity,
                        "replaced": replaced,
                        "finding_ids": stored.iter().map(|f| f.id).collect::<Vec<_>>(),
                        "new_target": created,
                        "daemon_scan": origin == ReportOrigin::Daemon,
                        // Open findings at or above min_severity the report left out or
                        // lowered: they stay open until a human-approved dismissal.
                        "kept_open": kept,
                        "peer": peer,
                    }),
                    actor,
                },
            )?;
            let cache_updates = if created {
                vec![(target, Decision::default())]
            } else {
                vec![]
            };
            Ok(Staged {
                cache_updates,
                entries: vec![entry.clone()],
                effect: WriteEffect::Findings {
                    findings: stored,
                    entry,
                },
            })
        }
        WriteOp::DismissFinding { id, reason, actor } => {
            let now = now_ts();
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
            let entry = append(
                conn,
                chain,
                &NewEntry {
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
                },
            )?;
            let finding = FindingRow {
                dismissed: Some((actor.id, now, reason)),
                ..row
            };
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![entry.clone()],
                effect: WriteEffect::Dismissed {
                    finding: Box::new(finding),
                    entry,
                },
            })
        }
        WriteOp::RegisterTargets {
            targets,
            actor,
            source,
        } => {
            let now = now_ts();
            let mut created = Vec::new();
            let mut entries = Vec::new();
            for target in targets {
                if ensure_target(conn, &target, &now)? {
                    entries.push(append(
                        conn,
                        chain,
                        &NewEntry {
                            action: "target-discovered".into(),
                            target: Some(target.clone()),
                            severity: None,
                            outcome: "recorded".into(),
                            reason: format!("seen in {source}"),
                            details: serde_json::json!({"source": source}),
                            actor: actor.clone(),
                        },
                    )?);
                    created.push(target);
                }
            }
            Ok(Staged {
                cache_updates: created
                    .iter()
                    .map(|t| (t.clone(), Decision::default()))
                    .collect(),
                entries,
                effect: WriteEffect::Registered { created },
            })
        }
        WriteOp::StepUpOpen { row, caps } => {
            if let Some(existing) =
                stepups::pending_for(conn, &row.target, row.action, &row.payload)?
            {
                return Ok(Staged {
                    cache_updates: vec![],
                    entries: vec![],
                    effect: WriteEffect::StepUpOpened {
                        row: Box::new(existing),
                        joined: true,
                    },
                });
            }
            if let Some(refusal) = cap_reached(conn, &row, caps)? {
                return Ok(Staged {
                    cache_updates: vec![],
                    entries: vec![],
                    effect: WriteEffect::StepUpRefused(Box::new(refusal)),
                });
            }
            stepups::insert(conn, &row)?;
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: "stepup-requested".into(),
                    target: Some(row.target.clone()),
                    severity: None,
                    outcome: "pending".into(),
                    reason: row.reason.clone(),
                    details: serde_json::json!({
                        "request_id": row.id,
                        "action": row.action.as_str(),
                        "binding_message": row.binding_message,
                        "approver": {"sub": row.approver_sub},
                        "finding_id": row.finding_id,
                    }),
                    actor: row.requester.clone(),
                },
            )?;
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![entry],
                effect: WriteEffect::StepUpOpened { row, joined: false },
            })
        }
        WriteOp::StepUpSent {
            id,
            auth_req_id,
            deadline,
            interval_secs,
        } => {
            conn.prepare_cached(
                "UPDATE stepups SET auth_req_id = ?2, deadline = ?3, interval_secs = ?4 WHERE id = ?1 AND status = 'pending'",
            )
            .and_then(|mut s| s.execute(params![id, auth_req_id, deadline, interval_secs as i64]))
            .map_err(Error::store("updating a step-up"))?;
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![],
                effect: WriteEffect::StepUpSent,
            })
        }
        WriteOp::StepUpClose {
            id,
            status,
            reason,
            approver,
            actor,
            commit,
            details,
        } => {
            let row =
                stepups::get(conn, &id)?.ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
            if row.status != "pending" {
                return Err(Error::FailedPrecondition(format!(
                    "step-up {id} already ended: {}",
                    row.status
                )));
            }
            let now = now_ts();
            conn.prepare_cached(
                "UPDATE stepups SET status = ?2, outcome_reason = ?3, decided_at = ?4, approver = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, status, reason, now, approver.as_ref().map(|a| a.to_string())]))
            .map_err(Error::store("closing a step-up"))?;
            let mut staged_entries = Vec::new();
            let mut cache_updates = Vec::new();
            let committed = match commit {
                Some(op) => {
                    let inner = apply(conn, *op, chain)?;
                    staged_entries.extend(inner.entries);
                    cache_updates.extend(inner.cache_updates);
                    Some(Box::new(inner.effect))
                }
                None => None,
            };
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: format!("stepup-{}", status.replace('_', "-")),
                    target: Some(row.target.clone()),
                    severity: None,
                    outcome: status.clone(),
                    reason: reason.clone(),
                    details: merge_details(
                        serde_json::json!({
                            "request_id": row.id,
                            "action": row.action.as_str(),
                            "binding_message": row.binding_message,
                            "human_confirmed": status == "approved",
                            "approver": approver.clone().unwrap_or_else(|| serde_json::json!({"sub": row.approver_sub})),
                            "requester": {"id": row.requester.id, "name": row.requester.name, "email": row.requester.email},
                            "committed": committed.is_some(),
                        }),
                        details,
                    ),
                    actor,
                },
            )?;
            staged_entries.push(entry.clone());
            let row = StepUpRow {
                status,
                outcome_reason: reason,
                decided_at: Some(now),
                approver,
                ..row
            };
            Ok(Staged {
                cache_updates,
                entries: staged_entries,
                effect: WriteEffect::StepUpClosed {
                    row: Box::new(row),
                    committed,
                    entry,
                },
            })
        }
        WriteOp::All(ops) => {
            let mut all = Staged {
                cache_updates: vec![],
                entries: vec![],
                effect: WriteEffect::All(Vec::with_capacity(ops.len())),
            };
            let mut effects = Vec::with_capacity(ops.len());
            for op in ops {
                let staged = apply(conn, op, chain)?;
                all.cache_updates.extend(staged.cache_updates);
                all.entries.extend(staged.entries);
                effects.push(staged.effect);
            }
            all.effect = WriteEffect::All(effects);
            Ok(all)
        }
        WriteOp::GrantConnections {
            server,
            grants,
            approved_by,
            subject,
            actor,
            details,
        } => {
            let now = now_ts();
            let target = Target {
                kind: TargetKind::Mcp,
                name: server.clone(),
            };
            ensure_target(conn, &target, &now)?;
            // A declaration approved by someone else does not inherit the
            // previous approver's credential.
            let mut entries = Vec::new();
            if subject.is_none() {
                entries.extend(
                    drop_foreign_credentials(
                        conn,
                        chain,
                        &server,
                        grants.iter().map(|g| g.connection.as_str()),
                        &approved_by,
                        &actor,
                    )?
                    .1,
                );
            }
            for g in &grants {
                connections::upsert(conn, &server, g, &approved_by, subject.as_ref(), &now)?;
            }
            let stored = grants
                .iter()
                .map(|g| {
                    connections::get(conn, &server, &g.connection)?.ok_or_else(|| {
                        Error::Internal(format!("grant {server}/{} vanished", g.connection))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: "connection-grant".into(),
                    target: Some(target),
                    severity: None,
                    outcome: "success".into(),
                    reason: format!(
                        "may use {}",
                        grants
                            .iter()
                            .map(|g| g.connection.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    details: merge_details(
                        serde_json::json!({
                            "connections": grants,
                            "approved_by": approved_by,
                            "unattended": subject.is_some(),
                        }),
                        details,
                    ),
                    actor,
                },
            )?;
            entries.push(entry.clone());
            Ok(Staged {
                cache_updates: vec![],
                entries,
                effect: WriteEffect::Granted {
                    grants: stored,
                    entry,
                },
            })
        }
        WriteOp::DropForeignCredentials {
            server,
            connections,
            keep_sub,
            actor,
        } => {
            let (dropped, entry) = drop_foreign_credentials(
                conn,
                chain,
                &server,
                connections.iter().map(String::as_str),
                &keep_sub,
                &actor,
            )?;
            Ok(Staged {
                cache_updates: vec![],
                entries: entry.into_iter().collect(),
                effect: WriteEffect::CredentialsDropped { dropped },
            })
        }
        WriteOp::RevokeConnection {
            server,
            connection,
            reason,
            actor,
        } => {
            if !connections::revoke(conn, &server, &connection, &reason)? {
                return Err(Error::NotFound(format!(
                    "{server} has no grant for connection {connection}"
                )));
            }
            let grant = connections::get(conn, &server, &connection)?
                .ok_or_else(|| Error::Internal(format!("grant {server}/{connection} vanished")))?;
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: "connection-revoke".into(),
                    target: Some(Target {
                        kind: TargetKind::Mcp,
                        name: server,
                    }),
                    severity: None,
                    outcome: "success".into(),
                    reason,
                    details: serde_json::json!({
                        "connection": connection,
                        "subject_credential_dropped": true,
                    }),
                    actor,
                },
            )?;
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![entry.clone()],
                effect: WriteEffect::ConnectionRevoked {
                    grant: Box::new(grant),
                    entry,
                },
            })
        }
        WriteOp::ConnectionUsed {
            server,
            connection,
            uses,
            granted_scopes,
            status,
            audit,
        } => {
            connections::record_use(
                conn,
                &server,
                &connection,
                uses,
                granted_scopes.as_deref(),
                status.as_ref().map(|(s, r)| (*s, r.as_str())),
                &now_ts(),
            )?;
            let entries = match audit {
                Some(new) => vec![append(conn, chain, &new)?],
                None => vec![],
            };
            Ok(Staged {
                cache_updates: vec![],
                entries,
                effect: WriteEffect::ConnectionUsed,
            })
        }
        WriteOp::LinkAccount { account, actor } => {
            connections::link_account(conn, &account)?;
            let entry = append(
                conn,
                chain,
                &NewEntry {
                    action: "account-linked".into(),
                    target: None,
                    severity: None,
                    outcome: "success".into(),
                    reason: format!("linked a {} account", account.connection),
                    details: serde_json::json!({
                        "connection": account.connection,
                        "account_id": account.account_id,
                    }),
                    actor,
                },
            )?;
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![entry.clone()],
                effect: WriteEffect::AccountLinked { entry },
            })
        }
        WriteOp::Audit(new) => {
            let entry = append(conn, chain, &new)?;
            Ok(Staged {
                cache_updates: vec![],
                entries: vec![entry.clone()],
                effect: WriteEffect::Audited { entry },
            })
        }
    }
}

/// Normalises a caller's RFC 3339 bound to the stored timestamp format, so
/// string comparison orders correctly.
pub fn normalise_since(since: &str) -> Result<String> {
    Ok(format_ts(crate::model::parse_rfc3339("since", since)?))
}
