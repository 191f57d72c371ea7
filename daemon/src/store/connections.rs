//! Token Vault grants (which external connections an MCP server may use) and the
//! accounts operators linked. Connection names, scopes and account ids only: no
//! provider token is ever stored, and the one Auth0 credential kept for
//! unattended use is sealed (AES-256-GCM) before it reaches this module.

use std::fmt;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
    /// Revoked by an operator.
    Revoked,
    /// The last exchange failed in a way only a person can fix (reconnect, re-approve).
    Broken,
}

impl GrantStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Broken => "broken",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "revoked" => Self::Revoked,
            "broken" => Self::Broken,
            _ => Self::Active,
        }
    }
}

/// The sealed Auth0 refresh token of the operator who approved a grant.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSubject {
    /// Whose credential it is.
    pub sub: String,
    /// AES-256-GCM output (see [`crate::vault::seal`]).
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
    /// When.
    pub approved_at: String,
    /// Last token handed out.
    pub last_used: Option<String>,
    /// Tokens handed out.
    pub use_count: u64,
    /// State.
    pub status: GrantStatus,
    /// Why it is broken or revoked.
    pub status_reason: String,
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
     last_used, use_count, status, status_reason, subject_sub, subject_sealed";

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
                                        subject_sub, subject_sealed)
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7)
         ON CONFLICT (server, connection) DO UPDATE SET
             declared_scopes = excluded.declared_scopes,
             approved_by = excluded.approved_by,
             approved_at = excluded.approved_at,
             status = 'active',
             status_reason = '',
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
) -> Result<bool> {
    conn.prepare_cached(
        "UPDATE connection_grants SET status = 'revoked', status_reason = ?3, subject_sub = NULL, subject_sealed = NULL
         WHERE server = ?1 AND connection = ?2",
    )
    .and_then(|mut s| s.execute(params![server, connection, reason]))
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
             status = CASE WHEN status = 'revoked' THEN status ELSE coalesce(?6, status) END,
             status_reason = CASE WHEN status = 'revoked' THEN status_reason ELSE coalesce(?7, status_reason) END
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
