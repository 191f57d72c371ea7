//! Stored step-up requests (CIBA approvals of enforcement changes).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::connections::ConnectionDecl;

use crate::error::{Error, Result};
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
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "block" => Self::Block,
            "allow" => Self::Allow,
            "unblock" => Self::Unblock,
            "dismiss" => Self::Dismiss,
            "grant" => Self::Grant,
            _ => return None,
        })
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
    /// Target.
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
    /// `pending`, `approved`, `denied`, `timed_out`, `error`, `cancelled`.
    pub status: String,
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
    let (Ok(kind), Some(action)) = (kind.parse(), StepUpAction::parse(&action)) else {
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
        status: r.get(13)?,
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
        "SELECT {COLUMNS} FROM stepups WHERE kind = ?1 AND name = ?2 AND action = ?3 AND payload = ?4 AND status = 'pending'"
    ))
    .and_then(|mut s| {
        s.query_row(
            params![target.kind.as_str(), target.name, action.as_str(), payload.to_column()],
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
        "SELECT count(*) FROM stepups WHERE status = 'pending' AND json_extract(requester, '$.id') = ?1",
    )
    .and_then(|mut s| s.query_row(params![requester_id], |r| r.get::<_, i64>(0)))
    .map(|n| n.max(0) as u64)
    .map_err(Error::store("counting step-ups"))
}

/// Pending operator requests (not the daemon's own proposals) on one target.
pub(crate) fn pending_on_target(conn: &Connection, target: &Target) -> Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM stepups WHERE status = 'pending' AND kind = ?1 AND name = ?2
           AND coalesce(json_extract(requester, '$.auth_method'), '') != 'system'",
    )
    .and_then(|mut s| {
        s.query_row(params![target.kind.as_str(), target.name], |r| {
            r.get::<_, i64>(0)
        })
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
            "SELECT {COLUMNS} FROM stepups WHERE (?1 = 0 OR status = 'pending') ORDER BY created_at DESC LIMIT ?2"
        ))
        .map_err(Error::store("listing step-ups"))?;
    let rows = stmt
        .query_map(params![i64::from(only_pending), i64::from(limit)], row)
        .map_err(Error::store("listing step-ups"))?;
    Ok(rows
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("listing step-ups"))?
        .into_iter()
        .flatten()
        .collect())
}
