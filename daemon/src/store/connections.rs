//! Token Vault grants (which external connections an MCP server may use) and the
//! accounts operators linked. Connection names, scopes and account ids only: no
//! provider token is ever stored, and the one Auth0 credential kept for
//! unattended use is sealed (AES-256-GCM) before it reaches this module.

use std::fmt;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::audit_log::merge_details;
use super::enforcement::ensure_target;
use super::handle::Store;
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Target, TargetKind};

/// A connection an MCP server may use, with the provider scopes asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDecl {
    /// Auth0 connection name.
    pub connection: String,
    /// Provider scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A grant's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    /// Usable.
    Active,
    /// Not served until resumed (by hand, after idling, or by the approver over CIBA).
    Suspended,
    /// Revoked by an operator.
    Revoked,
    /// The account behind it was unlinked at the provider.
    Unlinked,
    /// The last exchange failed in a way only a person can fix (reconnect, re-approve).
    Broken,
}

impl GrantStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::Unlinked => "unlinked",
            Self::Broken => "broken",
        }
    }

    /// From the stored name; anything unknown reads as active, as it always has.
    fn parse(s: &str) -> Self {
        match s {
            "suspended" => Self::Suspended,
            "revoked" => Self::Revoked,
            "unlinked" => Self::Unlinked,
            "broken" => Self::Broken,
            _ => Self::Active,
        }
    }

    /// Whether only a person (an operator, or the approver) can make the grant
    /// usable again: an exchange's outcome never changes these.
    pub fn held(self) -> bool {
        matches!(self, Self::Suspended | Self::Revoked | Self::Unlinked)
    }
}

impl rusqlite::ToSql for GrantStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

/// The sealed Auth0 refresh token of the operator who approved a grant.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSubject {
    /// Whose credential it is.
    pub sub: String,
    /// AES-256-GCM output (see [`crate::governance::vault::seal`]).
    pub sealed: Vec<u8>,
}

impl fmt::Debug for SealedSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSubject")
            .field("sub", &self.sub)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .finish()
    }
}

/// One server's grant for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// MCP server name.
    pub server: String,
    /// Connection name.
    pub connection: String,
    /// Scopes declared by the operator.
    pub declared_scopes: Vec<String>,
    /// Scopes the provider granted in the last successful exchange.
    pub granted_scopes: Vec<String>,
    /// Who approved it (`sub`, or the local actor id).
    pub approved_by: String,
    /// When it was approved.
    pub approved_at: String,
    /// Last token handed out.
    pub last_used: Option<String>,
    /// Tokens handed out.
    pub use_count: u64,
    /// Active, suspended, revoked, unlinked or broken.
    pub status: GrantStatus,
    /// Why it is not active.
    pub status_reason: String,
    /// When the status last changed by a person's or the daemon's decision
    /// (declared, suspended, resumed); `None` for grants older than that record.
    pub status_changed_at: Option<String>,
    /// The stored subject credential, if any.
    pub subject: Option<SealedSubject>,
}

/// An account an operator linked through Connected Accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkedAccountRow {
    /// The operator.
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// Auth0's connected account id.
    pub account_id: String,
    /// When it was recorded.
    pub linked_at: String,
}

const GRANT_COLUMNS: &str = "server, connection, declared_scopes, granted_scopes, approved_by, approved_at, \
     last_used, use_count, status, status_reason, subject_sub, subject_sealed, status_changed_at";

fn words(s: &str) -> Vec<String> {
    s.split_ascii_whitespace().map(str::to_owned).collect()
}

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRow> {
    let sub: Option<String> = r.get(10)?;
    let sealed: Option<Vec<u8>> = r.get(11)?;
    Ok(GrantRow {
        server: r.get(0)?,
        connection: r.get(1)?,
        declared_scopes: words(&r.get::<_, String>(2)?),
        granted_scopes: words(&r.get::<_, String>(3)?),
        approved_by: r.get(4)?,
        approved_at: r.get(5)?,
        last_used: r.get(6)?,
        use_count: r.get::<_, i64>(7)?.max(0) as u64,
        status: GrantStatus::parse(&r.get::<_, String>(8)?),
        status_reason: r.get(9)?,
        status_changed_at: r.get(12)?,
        subject: match (sub, sealed) {
            (Some(sub), Some(sealed)) => Some(SealedSubject { sub, sealed }),
            _ => None,
        },
    })
}

pub(crate) fn get(conn: &Connection, server: &str, connection: &str) -> Result<Option<GrantRow>> {
    conn.prepare_cached(&format!(
        "SELECT {GRANT_COLUMNS} FROM connection_grants WHERE server = ?1 AND connection = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![server, connection], grant_row)
            .optional()
    })
    .map_err(Error::store("reading a connection grant"))
}

pub(crate) fn list(conn: &Connection, server: Option<&str>) -> Result<Vec<GrantRow>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS} FROM connection_grants WHERE (?1 IS NULL OR server = ?1)
             ORDER BY server, connection"
        ))
        .map_err(Error::store("listing connection grants"))?;
    let rows = stmt
        .query_map(params![server], grant_row)
        .map_err(Error::store("listing connection grants"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("listing connection grants"))
}

pub(crate) fn list_accounts(conn: &Connection) -> Result<Vec<LinkedAccountRow>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT sub, connection, account_id, linked_at FROM linked_accounts ORDER BY sub, connection",
        )
        .map_err(Error::store("listing linked accounts"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(LinkedAccountRow {
                sub: r.get(0)?,
                connection: r.get(1)?,
                account_id: r.get(2)?,
                linked_at: r.get(3)?,
            })
        })
        .map_err(Error::store("listing linked accounts"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(Error::store("listing linked accounts"))
}

/// Declares (or re-declares) a grant as active; usage counters survive.
/// A stored subject is replaced only when a new one is given.
pub(crate) fn upsert(
    conn: &Connection,
    server: &str,
    decl: &ConnectionDecl,
    approved_by: &str,
    subject: Option<&SealedSubject>,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO connection_grants (server, connection, declared_scopes, approved_by, approved_at, status,
                                        subject_sub, subject_sealed, status_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?8, ?6, ?7, ?5)
         ON CONFLICT (server, connection) DO UPDATE SET
             declared_scopes = excluded.declared_scopes,
             approved_by = excluded.approved_by,
             approved_at = excluded.approved_at,
             status = ?8,
             status_reason = '',
             status_changed_at = excluded.status_changed_at,
             subject_sub = coalesce(excluded.subject_sub, subject_sub),
             subject_sealed = coalesce(excluded.subject_sealed, subject_sealed)",
    )
    .and_then(|mut s| {
        s.execute(params![
            server,
            decl.connection,
            decl.scopes.join(" "),
            approved_by,
            now,
            subject.map(|s| s.sub.as_str()),
            subject.map(|s| s.sealed.as_slice()),
            GrantStatus::Active,
        ])
    })
    .map(|_| ())
    .map_err(Error::store("recording a connection grant"))
}

/// Forgets a grant's stored subject credential unless it is `keep_sub`'s;
/// returns whose credential was dropped.
pub(crate) fn drop_subject_unless(
    conn: &Connection,
    server: &str,
    connection: &str,
    keep_sub: &str,
) -> Result<Option<String>> {
    let Some(owner) = get(conn, server, connection)?
        .and_then(|g| g.subject)
        .map(|s| s.sub)
        .filter(|sub| sub != keep_sub)
    else {
        return Ok(None);
    };
    conn.prepare_cached(
        "UPDATE connection_grants SET subject_sub = NULL, subject_sealed = NULL
         WHERE server = ?1 AND connection = ?2",
    )
    .and_then(|mut s| s.execute(params![server, connection]))
    .map_err(Error::store("dropping a grant's stored credential"))?;
    Ok(Some(owner))
}

/// Marks a grant revoked and forgets its stored subject credential.
pub(crate) fn revoke(
    conn: &Connection,
    server: &str,
    connection: &str,
    reason: &str,
    now: &str,
) -> Result<bool> {
    conn.prepare_cached(
        "UPDATE connection_grants SET status = ?4, status_reason = ?3, subject_sub = NULL, subject_sealed = NULL,
                                      status_changed_at = ?5
         WHERE server = ?1 AND connection = ?2",
    )
    .and_then(|mut s| s.execute(params![server, connection, reason, GrantStatus::Revoked, now]))
    .map(|n| n > 0)
    .map_err(Error::store("revoking a connection grant"))
}

/// Records tokens handed out, and the grant's health after an exchange.
pub(crate) fn record_use(
    conn: &Connection,
    server: &str,
    connection: &str,
    uses: u64,
    granted_scopes: Option<&[String]>,
    status: Option<(GrantStatus, &str)>,
    now: &str,
) -> Result<()> {
    let (status, reason) = match status {
        Some((s, r)) => (Some(s.as_str()), Some(r)),
        None => (None, None),
    };
    conn.prepare_cached(
        "UPDATE connection_grants SET
             use_count = use_count + ?3,
             last_used = CASE WHEN ?3 > 0 THEN ?4 ELSE last_used END,
             granted_scopes = coalesce(?5, granted_scopes),
             status = CASE WHEN status IN (?8, ?9, ?10) THEN status ELSE coalesce(?6, status) END,
             status_reason = CASE WHEN status IN (?8, ?9, ?10) THEN status_reason ELSE coalesce(?7, status_reason) END
         WHERE server = ?1 AND connection = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            server,
            connection,
            i64::try_from(uses).unwrap_or(i64::MAX),
            now,
            granted_scopes.map(|g| g.join(" ")),
            status,
            reason,
            GrantStatus::Revoked,
            GrantStatus::Suspended,
            GrantStatus::Unlinked,
        ])
    })
    .map(|_| ())
    .map_err(Error::store("recording a connection's use"))
}

pub(crate) fn link_account(conn: &Connection, row: &LinkedAccountRow) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO linked_accounts (sub, connection, account_id, linked_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sub, connection) DO UPDATE SET account_id = excluded.account_id, linked_at = excluded.linked_at",
    )
    .and_then(|mut s| s.execute(params![row.sub, row.connection, row.account_id, row.linked_at]))
    .map(|_| ())
    .map_err(Error::store("recording a linked account"))
}

impl Store {
    /// Connection grants, of one server or all.
    pub async fn list_grants(&self, server: Option<String>) -> Result<Vec<GrantRow>> {
        self.read(move |c| list(c, server.as_deref())).await
    }

    /// One server's grant for one connection.
    pub async fn get_grant(&self, server: String, connection: String) -> Result<Option<GrantRow>> {
        self.read(move |c| get(c, &server, &connection)).await
    }

    /// Accounts operators linked.
    pub async fn list_linked_accounts(&self) -> Result<Vec<LinkedAccountRow>> {
        self.read(list_accounts).await
    }
}

/// The MCP server a grant belongs to, as an audit target.
fn server_target(server: &str) -> Target {
    Target {
        kind: TargetKind::Mcp,
        name: server.to_owned(),
    }
}

/// Declare (or re-declare) connections an MCP server may use.
#[derive(Debug, Clone)]
pub struct GrantConnections {
    /// MCP server name.
    pub server: String,
    /// The connections and their scopes.
    pub grants: Vec<ConnectionDecl>,
    /// Who approved (`sub` of the CIBA approver, or the operator).
    pub approved_by: String,
    /// The approver's sealed refresh token, for unattended exchanges.
    pub subject: Option<SealedSubject>,
    /// Who made the change.
    pub actor: Actor,
    /// Extra audit details.
    pub details: serde_json::Value,
}

/// What a [`GrantConnections`] recorded.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The grants as stored now.
    pub grants: Vec<GrantRow>,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

impl Operation for GrantConnections {
    type Effect = Granted;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Granted> {
        let Self {
            server,
            grants,
            approved_by,
            subject,
            actor,
            details,
        } = self;
        let now = tx.now();
        let target = server_target(&server);
        ensure_target(tx, &target)?;
        // A declaration approved by someone else does not inherit the
        // previous approver's credential.
        if subject.is_none() {
            drop_foreign_credentials(
                tx,
                &server,
                grants.iter().map(|g| g.connection.as_str()),
                &approved_by,
                &actor,
            )?;
        }
        let conn = tx.conn();
        for g in &grants {
            upsert(conn, &server, g, &approved_by, subject.as_ref(), &now)?;
        }
        let stored = grants
            .iter()
            .map(|g| {
                get(conn, &server, &g.connection)?.ok_or_else(|| {
                    Error::Internal(format!("grant {server}/{} vanished", g.connection))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let names = grants
            .iter()
            .map(|g| g.connection.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let entry = tx.append(&NewEntry {
            action: "connection-grant".into(),
            target: Some(target),
            severity: None,
            outcome: "success".into(),
            reason: format!("may use {names}"),
            details: merge_details(
                serde_json::json!({
                    "connections": grants,
                    "approved_by": approved_by,
                    "unattended": subject.is_some(),
                }),
                details,
            ),
            actor,
        })?;
        Ok(Granted {
            grants: stored,
            entry,
        })
    }
}

/// Stored grant credentials dropped: (connection, whose credential) pairs.
pub type DroppedCredentials = Vec<(String, String)>;

/// A grant re-declared by someone other than the approver whose refresh
/// token it keeps: that credential is dropped (and audited) until the new
/// declaration is approved.
#[derive(Debug, Clone)]
pub struct DropForeignCredentials {
    /// MCP server name.
    pub server: String,
    /// The connections re-declared.
    pub connections: Vec<String>,
    /// The declaring operator (`sub` or local actor id): their own credential stays.
    pub keep_sub: String,
    /// Who re-declared.
    pub actor: Actor,
}

impl Operation for DropForeignCredentials {
    type Effect = DroppedCredentials;

    fn apply(self, tx: &mut Tx<'_>) -> Result<DroppedCredentials> {
        drop_foreign_credentials(
            tx,
            &self.server,
            self.connections.iter().map(String::as_str),
            &self.keep_sub,
            &self.actor,
        )
    }
}

/// Drops the stored credentials of `server`'s `connections` not owned by
/// `keep_sub`, with one audit entry naming whose they were.
fn drop_foreign_credentials<'a>(
    tx: &mut Tx<'_>,
    server: &str,
    connections: impl Iterator<Item = &'a str>,
    keep_sub: &str,
    actor: &Actor,
) -> Result<DroppedCredentials> {
    let mut dropped = Vec::new();
    for c in connections {
        if let Some(owner) = drop_subject_unless(tx.conn(), server, c, keep_sub)? {
            dropped.push((c.to_owned(), owner));
        }
    }
    if dropped.is_empty() {
        return Ok(dropped);
    }
    tx.append(&NewEntry {
        action: "connection-credential-dropped".into(),
        target: Some(server_target(server)),
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
    })?;
    Ok(dropped)
}

/// Revoke a grant and drop its stored subject credential.
#[derive(Debug, Clone)]
pub struct RevokeConnection {
    /// MCP server name.
    pub server: String,
    /// Connection name.
    pub connection: String,
    /// Why it is revoked.
    pub reason: String,
    /// Who revoked it.
    pub actor: Actor,
    /// What happened at the identity provider (`--at-provider`), for the
    /// audit entry: a failure there makes the entry's outcome `partial`.
    pub at_provider: Option<serde_json::Value>,
}

/// What a [`RevokeConnection`] did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The grant after revocation.
    pub grant: Box<GrantRow>,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

impl Operation for RevokeConnection {
    type Effect = Revoked;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Revoked> {
        let Self {
            server,
            connection,
            reason,
            actor,
            at_provider,
        } = self;
        let now = tx.now();
        let conn = tx.conn();
        if !revoke(conn, &server, &connection, &reason, &now)? {
            return Err(Error::NotFound(format!(
                "{server} has no grant for connection {connection}"
            )));
        }
        let grant = get(conn, &server, &connection)?
            .ok_or_else(|| Error::Internal(format!("grant {server}/{connection} vanished")))?;
        let failed_there = at_provider
            .as_ref()
            .is_some_and(|p| p["outcome"] == "failed");
        let mut details = serde_json::json!({
            "connection": connection,
            "subject_credential_dropped": true,
        });
        if let Some(p) = at_provider {
            details["at_provider"] = p;
        }
        let entry = tx.append(&NewEntry {
            action: "connection-revoke".into(),
            target: Some(server_target(&server)),
            severity: None,
            outcome: if failed_there { "partial" } else { "success" }.into(),
            reason,
            details,
            actor,
        })?;
        Ok(Revoked {
            grant: Box::new(grant),
            entry,
        })
    }
}

/// Tokens handed out for a grant, the grant's health after an exchange,
/// and (for exchanges with the provider) their audit entry.
#[derive(Debug, Clone)]
pub struct ConnectionUsed {
    /// MCP server name.
    pub server: String,
    /// Connection name.
    pub connection: String,
    /// Tokens handed out.
    pub uses: u64,
    /// Scopes the provider granted (after a successful exchange).
    pub granted_scopes: Option<Vec<String>>,
    /// New health, when an exchange decided it.
    pub status: Option<(GrantStatus, String)>,
    /// Audit entry for the exchange.
    pub audit: Option<NewEntry>,
}

impl Operation for ConnectionUsed {
    type Effect = ();

    fn apply(self, tx: &mut Tx<'_>) -> Result<()> {
        let now = tx.now();
        record_use(
            tx.conn(),
            &self.server,
            &self.connection,
            self.uses,
            self.granted_scopes.as_deref(),
            self.status.as_ref().map(|(s, r)| (*s, r.as_str())),
            &now,
        )?;
        if let Some(new) = &self.audit {
            tx.append(new)?;
        }
        Ok(())
    }
}

/// An operator linked an account (Connected Accounts); the effect is the
/// audit entry.
#[derive(Debug, Clone)]
pub struct LinkAccount {
    /// The account.
    pub account: LinkedAccountRow,
    /// Who linked it.
    pub actor: Actor,
}

impl Operation for LinkAccount {
    type Effect = Arc<Entry>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Arc<Entry>> {
        let Self { account, actor } = self;
        link_account(tx.conn(), &account)?;
        tx.append(&NewEntry {
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
        })
    }
}
