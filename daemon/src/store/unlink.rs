//! An account unlinked at the provider (`connections unlink`): every grant
//! using it marked `unlinked`, the daemon's record of the link removed, and
//! one `connection-unlink` entry saying what was removed where and what failed.

use std::sync::Arc;

use rusqlite::params;

use super::connections::{GrantRow, GrantStatus, get};
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::Actor;

/// Unlink `sub`'s account on `connection`.
#[derive(Debug, Clone)]
pub struct UnlinkAccount {
    /// Whose account (the caller's `sub`).
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// The provider's id of the account (empty when the CLI could not learn it).
    pub account_id: String,
    /// What happened at the provider (`outcome`: `deleted`, `not_found` or
    /// `failed`, and `error`); a failure makes the entry's outcome `partial`.
    pub at_provider: serde_json::Value,
    /// Who unlinked it.
    pub actor: Actor,
}

/// What an [`UnlinkAccount`] did.
#[derive(Debug, Clone)]
pub struct Unlinked {
    /// The grants marked unlinked, as stored now.
    pub grants: Vec<GrantRow>,
    /// Whether the daemon's record of the link was removed.
    pub record_removed: bool,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

impl Operation for UnlinkAccount {
    type Effect = Unlinked;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Unlinked> {
        let Self {
            sub,
            connection,
            account_id,
            at_provider,
            actor,
        } = self;
        let now = tx.now();
        let reason = format!("the {connection} account of {sub} was unlinked");
        // The grants exchanged with this account: its owner's sealed refresh
        // token, or (no stored credential) approved by its owner.
        let affected: Vec<String> = {
            let mut stmt = tx
                .conn()
                .prepare_cached(
                    "SELECT server FROM connection_grants
                     WHERE connection = ?1 AND status NOT IN (?3, ?4)
                       AND (subject_sub = ?2 OR (subject_sub IS NULL AND approved_by = ?2))
                     ORDER BY server",
                )
                .map_err(Error::store("finding the grants of an unlinked account"))?;
            let rows = stmt
                .query_map(
                    params![connection, sub, GrantStatus::Revoked, GrantStatus::Unlinked],
                    |r| r.get(0),
                )
                .map_err(Error::store("finding the grants of an unlinked account"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("finding the grants of an unlinked account"))?
        };
        let mut grants = Vec::with_capacity(affected.len());
        let mut listed = Vec::with_capacity(affected.len());
        for server in &affected {
            let before = get(tx.conn(), server, &connection)?;
            tx.conn()
                .prepare_cached(
                    "UPDATE connection_grants SET status = ?3, status_reason = ?4, status_changed_at = ?5
                     WHERE server = ?1 AND connection = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![server, connection, GrantStatus::Unlinked, reason, now])
                })
                .map_err(Error::store("marking a grant unlinked"))?;
            let after = get(tx.conn(), server, &connection)?
                .ok_or_else(|| Error::Internal(format!("grant {server}/{connection} vanished")))?;
            listed.push(serde_json::json!({
                "server": server,
                "from": before.map(|b| b.status.as_str()),
                "unattended": after.subject.is_some(),
            }));
            grants.push(after);
        }
        let record_removed = tx
            .conn()
            .prepare_cached("DELETE FROM linked_accounts WHERE sub = ?1 AND connection = ?2")
            .and_then(|mut s| s.execute(params![sub, connection]))
            .map_err(Error::store("removing a linked account"))?
            > 0;
        let failed_there = at_provider["outcome"] == "failed";
        let entry = tx.append(&NewEntry {
            action: "connection-unlink".into(),
            target: None,
            severity: None,
            outcome: if failed_there { "partial" } else { "success" }.into(),
            reason: format!(
                "unlinked a {connection} account; {} grant(s) marked unlinked",
                grants.len()
            ),
            details: serde_json::json!({
                "connection": connection,
                "account_id": account_id,
                "subject_sub": sub,
                "at_provider": at_provider,
                "grants_unlinked": listed,
                "linked_account_record_removed": record_removed,
            }),
            actor,
        })?;
        Ok(Unlinked {
            grants,
            record_removed,
            entry,
        })
    }
}
