//! Step-up requests (CIBA approvals of enforcement changes) in the store:
//! their rows and status, opening one (under the pending caps), recording that
//! it was sent, and closing it together with the change it commits.

use std::str::FromStr;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::audit_log::merge_details;
use super::connections::{ConnectionDecl, GrantConnections, Granted};
use super::enforcement::{Enforced, SetEnforcement};
use super::findings::{DismissFinding, Dismissed};
use super::grant_status::{ResumeApproved, StatusChanged};
use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result, quoted};
use crate::model::{Actor, Target};

/// What a step-up would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepUpAction {
    /// Block the target.
    Block,
    /// Allow the target.
    Allow,
    /// Remove the decision.
    Unblock,
    /// Dismiss a finding.
    Dismiss,
    /// Let an MCP server use a connection it did not declare (scope escalation).
    Grant,
    /// Serve a suspended connection grant again (asked at its next use).
    Resume,
}

impl StepUpAction {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
            Self::Unblock => "unblock",
            Self::Dismiss => "dismiss",
            Self::Grant => "grant",
            Self::Resume => "resume",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "block" => Self::Block,
            "allow" => Self::Allow,
            "unblock" => Self::Unblock,
            "dismiss" => Self::Dismiss,
            "grant" => Self::Grant,
            "resume" => Self::Resume,
            _ => return None,
        })
    }
}

/// Where a step-up request stands. Stored (and sent on the wire) as its
/// [`StepUpStatus::as_str`] text, so the schema and the RPC output keep the
/// words they always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepUpStatus {
    /// Asked, not answered yet; the target is held meanwhile.
    Pending,
    /// The approver confirmed on their device; the change committed.
    Approved,
    /// The approver refused.
    Denied,
    /// Nobody answered before the deadline.
    TimedOut,
    /// The provider failed or refused, or the answer was not acceptable.
    Error,
    /// An operator withdrew it.
    Cancelled,
}

impl StepUpStatus {
    /// Stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed_out",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the request is still open.
    pub fn is_pending(self) -> bool {
        self == Self::Pending
    }

    /// The audit action of a request ending so (`stepup-timed-out`, ...).
    fn audit_action(self) -> String {
        format!("stepup-{}", self.as_str().replace('_', "-"))
    }
}

impl std::fmt::Display for StepUpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepUpStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "timed_out" => Self::TimedOut,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(Error::Internal(format!(
                    "unknown stored step-up status {}",
                    quoted(other)
                )));
            }
        })
    }
}

impl rusqlite::ToSql for StepUpStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

/// Bounds on pending operator requests, checked when a request opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCaps {
    /// `[stepup] max_pending_per_requester`.
    pub per_requester: u32,
    /// `[stepup] max_pending_per_target`.
    pub per_target: u32,
}

/// A request not opened because a cap was reached.
#[derive(Debug, Clone)]
pub struct CapRefusal {
    /// The config key of the cap.
    pub cap: &'static str,
    /// Its value.
    pub limit: u32,
    /// Requests pending now.
    pub pending: u64,
    /// Whose requests (the requester's id or the target).
    pub key: String,
    /// Human-readable: whose requests reached the cap.
    pub what: String,
    /// Requested change.
    pub action: StepUpAction,
    /// Target of the refused request.
    pub target: Target,
    /// Who asked.
    pub requester: Actor,
}

/// A step-up request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepUpRow {
    /// Request code, e.g. `DC-4F2A91C30B7E55D1` (also in the binding message).
    pub id: String,
    /// The skill or MCP server the change is about.
    pub target: Target,
    /// Requested change.
    pub action: StepUpAction,
    /// The requester's reason.
    pub reason: String,
    /// Finding to dismiss (action `dismiss`).
    pub finding_id: Option<u64>,
    /// Who asked (the daemon itself for scan-triggered proposals).
    pub requester: Actor,
    /// `sub` of the human asked to approve.
    pub approver_sub: String,
    /// What the phone and the CLI show.
    pub binding_message: String,
    /// The provider's handle, once the request was sent. Never leaves the daemon.
    #[serde(skip)]
    pub auth_req_id: Option<String>,
    /// When asked.
    pub created_at: String,
    /// Local deadline, seconds since the epoch.
    pub deadline: i64,
    /// Poll interval, seconds.
    pub interval_secs: u64,
    /// Where it stands.
    pub status: StepUpStatus,
    /// Why it ended so.
    pub outcome_reason: String,
    /// When it ended.
    pub decided_at: Option<String>,
    /// Who approved (from the validated CIBA ID token), JSON.
    pub approver: Option<serde_json::Value>,
    /// Connections the change declares (allow of an MCP server, grant).
    pub payload: StepUpPayload,
}

/// What a step-up carries beyond its action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUpPayload {
    /// Connections to grant when approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<ConnectionDecl>,
    /// Ask for `offline_access` and keep the approver's refresh token (sealed)
    /// for unattended Token Vault exchanges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unattended: bool,
}

impl StepUpPayload {
    /// Stored form: empty for the empty payload.
    fn to_column(&self) -> String {
        if *self == Self::default() {
            String::new()
        } else {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

pub(crate) const COLUMNS: &str = "id, kind, name, action, reason, finding_id, requester, approver_sub, binding_message, \
     auth_req_id, created_at, deadline, interval_secs, status, outcome_reason, decided_at, approver, payload";

pub(crate) fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<StepUpRow>> {
    let kind: String = r.get(1)?;
    let action: String = r.get(3)?;
    let requester: String = r.get(6)?;
    let approver: Option<String> = r.get(16)?;
    let payload: String = r.get(17)?;
    let status: String = r.get(13)?;
    let (Ok(kind), Some(action), Ok(status)) = (
        kind.parse(),
        StepUpAction::parse(&action),
        status.parse::<StepUpStatus>(),
    ) else {
        return Ok(None);
    };
    Ok(Some(StepUpRow {
        id: r.get(0)?,
        target: Target {
            kind,
            name: r.get(2)?,
        },
        action,
        reason: r.get(4)?,
        finding_id: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
        requester: serde_json::from_str(&requester).unwrap_or_default(),
        approver_sub: r.get(7)?,
        binding_message: r.get(8)?,
        auth_req_id: r.get(9)?,
        created_at: r.get(10)?,
        deadline: r.get(11)?,
        interval_secs: r.get::<_, i64>(12)?.max(1) as u64,
        status,
        outcome_reason: r.get(14)?,
        decided_at: r.get(15)?,
        approver: approver.and_then(|a| serde_json::from_str(&a).ok()),
        payload: serde_json::from_str(&payload).unwrap_or_default(),
    }))
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<StepUpRow>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM stepups WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id], row).optional())
        .map(Option::flatten)
        .map_err(Error::store("reading a step-up"))
}

pub(crate) fn pending_for(
    conn: &Connection,
    target: &Target,
    action: StepUpAction,
    payload: &StepUpPayload,
) -> Result<Option<StepUpRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM stepups WHERE kind = ?1 AND name = ?2 AND action = ?3 AND payload = ?4 AND status = ?5"
    ))
    .and_then(|mut s| {
        s.query_row(
            params![
                target.kind.as_str(),
                target.name,
                action.as_str(),
                payload.to_column(),
                StepUpStatus::Pending
            ],
            row,
        )
        .optional()
    })
    .map(Option::flatten)
    .map_err(Error::store("reading a step-up"))
}

/// Pending requests of one requester (by actor id).
pub(crate) fn pending_by_requester(conn: &Connection, requester_id: &str) -> Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM stepups WHERE status = ?2 AND json_extract(requester, '$.id') = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![requester_id, StepUpStatus::Pending], |r| {
            r.get::<_, i64>(0)
        })
    })
    .map(|n| n.max(0) as u64)
    .map_err(Error::store("counting step-ups"))
}

/// Pending operator requests (not the daemon's own proposals) on one target.
pub(crate) fn pending_on_target(conn: &Connection, target: &Target) -> Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM stepups WHERE status = ?3 AND kind = ?1 AND name = ?2
           AND coalesce(json_extract(requester, '$.auth_method'), '') != 'system'",
    )
    .and_then(|mut s| {
        s.query_row(
            params![target.kind.as_str(), target.name, StepUpStatus::Pending],
            |r| r.get::<_, i64>(0),
        )
    })
    .map(|n| n.max(0) as u64)
    .map_err(Error::store("counting step-ups"))
}

pub(crate) fn insert(conn: &Connection, r: &StepUpRow) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO stepups ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            r.id,
            r.target.kind.as_str(),
            r.target.name,
            r.action.as_str(),
            r.reason,
            r.finding_id.map(|v| v as i64),
            serde_json::to_string(&r.requester).unwrap_or_default(),
            r.approver_sub,
            r.binding_message,
            r.auth_req_id,
            r.created_at,
            r.deadline,
            r.interval_secs as i64,
            r.status,
            r.outcome_reason,
            r.decided_at,
            r.approver.as_ref().map(|a| a.to_string()),
            r.payload.to_column(),
        ])
    })
    .map(|_| ())
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::FailedPrecondition(format!("step-up request id {} already exists; retry", r.id))
        }
        other => Error::store("recording a step-up")(other),
    })
}

pub(crate) fn list(conn: &Connection, only_pending: bool, limit: u32) -> Result<Vec<StepUpRow>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM stepups WHERE (?1 = 0 OR status = ?3) ORDER BY created_at DESC LIMIT ?2"
        ))
        .map_err(Error::store("listing step-ups"))?;
    let rows = stmt
        .query_map(
            params![
                i64::from(only_pending),
                i64::from(limit),
                StepUpStatus::Pending
            ],
            row,
        )
        .map_err(Error::store("listing step-ups"))?;
    Ok(rows
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("listing step-ups"))?
        .into_iter()
        .flatten()
        .collect())
}

impl Store {
    /// Step-up requests, newest first.
    pub async fn list_stepups(&self, only_pending: bool, limit: u32) -> Result<Vec<StepUpRow>> {
        self.read(move |c| list(c, only_pending, limit)).await
    }

    /// One step-up request.
    pub async fn get_stepup(&self, id: String) -> Result<Option<StepUpRow>> {
        self.read(move |c| get(c, &id)).await
    }
}

/// Open a step-up request, or join the pending one for the same target and
/// action; a new request is refused when a cap is reached.
#[derive(Debug, Clone)]
pub struct StepUpOpen {
    /// The request.
    pub row: StepUpRow,
    /// Caps on pending requests (`None`: the daemon's own proposals).
    pub caps: Option<PendingCaps>,
}

/// What a [`StepUpOpen`] did.
#[derive(Debug, Clone)]
pub enum StepUpOpened {
    /// The request is pending: new, or (`joined`) an identical one already was.
    Opened {
        /// The request (new or existing).
        row: Box<StepUpRow>,
        /// True when it joined a pending request.
        joined: bool,
    },
    /// Not opened: a pending-request cap is reached (nothing written).
    Refused(Box<CapRefusal>),
}

impl Operation for StepUpOpen {
    type Effect = StepUpOpened;

    fn apply(self, tx: &mut Tx<'_>) -> Result<StepUpOpened> {
        let Self { row, caps } = self;
        let conn = tx.conn();
        if let Some(existing) = pending_for(conn, &row.target, row.action, &row.payload)? {
            return Ok(StepUpOpened::Opened {
                row: Box::new(existing),
                joined: true,
            });
        }
        if let Some(refusal) = cap_reached(conn, &row, caps)? {
            return Ok(StepUpOpened::Refused(Box::new(refusal)));
        }
        insert(conn, &row)?;
        tx.append(&NewEntry {
            action: "stepup-requested".into(),
            target: Some(row.target.clone()),
            severity: None,
            outcome: StepUpStatus::Pending.as_str().into(),
            reason: row.reason.clone(),
            details: serde_json::json!({
                "request_id": row.id,
                "action": row.action.as_str(),
                "binding_message": row.binding_message,
                "approver": {"sub": row.approver_sub},
                "finding_id": row.finding_id,
            }),
            actor: row.requester.clone(),
        })?;
        Ok(StepUpOpened::Opened {
            row: Box::new(row),
            joined: false,
        })
    }
}

/// The first pending-request cap a new request would exceed, checked in the
/// writer so concurrent requests cannot slip past it.
fn cap_reached(
    conn: &Connection,
    row: &StepUpRow,
    caps: Option<PendingCaps>,
) -> Result<Option<CapRefusal>> {
    let Some(caps) = caps else {
        return Ok(None);
    };
    let refusal = |cap, limit, pending, key: String, what: String| CapRefusal {
        cap,
        limit,
        pending,
        key,
        what,
        action: row.action,
        target: row.target.clone(),
        requester: row.requester.clone(),
    };
    let mine = pending_by_requester(conn, &row.requester.id)?;
    if mine >= u64::from(caps.per_requester) {
        return Ok(Some(refusal(
            "max_pending_per_requester",
            caps.per_requester,
            mine,
            format!("requester:{}", row.requester.id),
            format!("{} has {mine} pending", row.requester.id),
        )));
    }
    let on_target = pending_on_target(conn, &row.target)?;
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

/// Record that the request went to the provider.
#[derive(Debug, Clone)]
pub struct StepUpSent {
    /// Request id.
    pub id: String,
    /// The provider's handle.
    pub auth_req_id: String,
    /// Local deadline, seconds since the epoch.
    pub deadline: i64,
    /// Poll interval, seconds.
    pub interval_secs: u64,
}

impl Operation for StepUpSent {
    type Effect = ();

    fn apply(self, tx: &mut Tx<'_>) -> Result<()> {
        tx.conn()
            .prepare_cached(
                "UPDATE stepups SET auth_req_id = ?2, deadline = ?3, interval_secs = ?4 WHERE id = ?1 AND status = ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    self.id,
                    self.auth_req_id,
                    self.deadline,
                    self.interval_secs as i64,
                    StepUpStatus::Pending
                ])
            })
            .map(|_| ())
            .map_err(Error::store("updating a step-up"))
    }
}

/// The change an ending step-up commits with it.
#[derive(Debug, Clone)]
pub enum StepUpCommit {
    /// A block, allow or unblock.
    Enforce(SetEnforcement),
    /// An allow of an MCP server with the connections it declared.
    EnforceAndGrant(SetEnforcement, Box<GrantConnections>),
    /// A scope escalation: connections granted.
    Grant(GrantConnections),
    /// A dismissal.
    Dismiss(DismissFinding),
    /// A suspended grant resumed by its approver.
    Resume(ResumeApproved),
}

/// What a [`StepUpCommit`] did.
#[derive(Debug, Clone)]
pub enum Committed {
    /// The decision set.
    Enforced(Enforced),
    /// The decision set and the grants recorded.
    EnforcedAndGranted(Enforced, Granted),
    /// The grants recorded.
    Granted(Granted),
    /// The finding dismissed.
    Dismissed(Dismissed),
    /// The grant resumed (`None`: it was no longer suspended; nothing changed).
    Resumed(Option<StatusChanged>),
}

impl Committed {
    /// The enforcement change, if the commit made one.
    pub fn enforced(&self) -> Option<&Enforced> {
        match self {
            Self::Enforced(e) | Self::EnforcedAndGranted(e, _) => Some(e),
            Self::Granted(_) | Self::Dismissed(_) | Self::Resumed(_) => None,
        }
    }
}

impl Operation for StepUpCommit {
    type Effect = Committed;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Committed> {
        Ok(match self {
            Self::Enforce(op) => Committed::Enforced(op.apply(tx)?),
            Self::EnforceAndGrant(enforce, grant) => {
                let (e, g) = (enforce, *grant).apply(tx)?;
                Committed::EnforcedAndGranted(e, g)
            }
            Self::Grant(op) => Committed::Granted(op.apply(tx)?),
            Self::Dismiss(op) => Committed::Dismissed(op.apply(tx)?),
            Self::Resume(op) => Committed::Resumed(op.apply(tx)?),
        })
    }
}

/// End a pending step-up: its outcome, its audit entry, and the change it
/// commits (if any), all in one transaction.
#[derive(Debug, Clone)]
pub struct StepUpClose {
    /// Request id.
    pub id: String,
    /// How it ended (never [`StepUpStatus::Pending`]).
    pub status: StepUpStatus,
    /// Why it ended so.
    pub reason: String,
    /// Who approved (validated ID token claims), if anyone.
    pub approver: Option<serde_json::Value>,
    /// Who ends it (the daemon, or the operator who cancelled).
    pub actor: Actor,
    /// The change to commit with it.
    pub commit: Option<StepUpCommit>,
    /// Extra audit details.
    pub details: serde_json::Value,
}

/// What a [`StepUpClose`] did.
#[derive(Debug, Clone)]
pub struct StepUpClosed {
    /// The request after closing.
    pub row: Box<StepUpRow>,
    /// What its commit did, if it committed something.
    pub committed: Option<Committed>,
    /// The step-up's audit entry.
    pub entry: Arc<Entry>,
}

impl Operation for StepUpClose {
    type Effect = StepUpClosed;

    fn apply(self, tx: &mut Tx<'_>) -> Result<StepUpClosed> {
        let Self {
            id,
            status,
            reason,
            approver,
            actor,
            commit,
            details,
        } = self;
        let conn = tx.conn();
        let row = get(conn, &id)?.ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
        if !row.status.is_pending() {
            return Err(Error::FailedPrecondition(format!(
                "step-up {id} already ended: {}",
                row.status
            )));
        }
        let now = tx.now();
        conn.prepare_cached(
            "UPDATE stepups SET status = ?2, outcome_reason = ?3, decided_at = ?4, approver = ?5 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                status,
                reason,
                now,
                approver.as_ref().map(|a| a.to_string())
            ])
        })
        .map_err(Error::store("closing a step-up"))?;
        let committed = commit.map(|op| op.apply(tx)).transpose()?;
        let entry = tx.append(&NewEntry {
            action: status.audit_action(),
            target: Some(row.target.clone()),
            severity: None,
            outcome: status.as_str().to_owned(),
            reason: reason.clone(),
            details: merge_details(
                serde_json::json!({
                    "request_id": row.id,
                    "action": row.action.as_str(),
                    "binding_message": row.binding_message,
                    "human_confirmed": status == StepUpStatus::Approved,
                    "approver": approver.clone().unwrap_or_else(|| serde_json::json!({"sub": row.approver_sub})),
                    "requester": {"id": row.requester.id, "name": row.requester.name, "email": row.requester.email},
                    "committed": committed.is_some(),
                }),
                details,
            ),
            actor,
        })?;
        let row = StepUpRow {
            status,
            outcome_reason: reason,
            decided_at: Some(now),
            approver,
            ..row
        };
        Ok(StepUpClosed {
            row: Box::new(row),
            committed,
            entry,
        })
    }
}
