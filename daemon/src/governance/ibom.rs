//! The Auth-IBOM and the end user's own grants: the inventory derived from the
//! audit chain (`defenseclaw_common::ibom`) with the grants' live counters, the
//! grants behind one person's credential, and revoking one of them as that
//! person. Someone else's grant reads exactly like one that does not exist.

use defenseclaw_common::ibom::{self, ChainEntry, Document, EventActor, Grant};

use super::Governance;
use super::vault::revocation::ProviderRevocation;
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Target, TargetKind};
use crate::store::connections::{GrantRow, LinkedAccountRow};
use crate::store::ibom::IbomSnapshot;

fn chain_entry(e: Entry) -> ChainEntry {
    let actor = e.actor();
    ChainEntry {
        details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
        actor: EventActor {
            id: actor.id,
            name: actor.name,
            auth_method: actor.auth_method,
        },
        seq: e.seq,
        hash: e.hash,
        ts: e.ts,
        action: e.action,
        target_kind: e.target_kind,
        target_name: e.target_name,
        outcome: e.outcome,
        reason: e.reason,
    }
}

/// The derived grants with their live counters filled from the store.
fn derive(snap: IbomSnapshot, since: Option<&str>) -> (Vec<Grant>, Vec<ibom::Account>) {
    let (mut grants, accounts) = ibom::derive(snap.entries.into_iter().map(chain_entry), since);
    for g in &mut grants {
        if let Some(row) = snap
            .grants
            .iter()
            .find(|r| r.server == g.server && r.connection == g.connection)
        {
            g.granted_scopes = row.granted_scopes.clone();
            g.last_used = row.last_used.clone();
            g.use_count = row.use_count;
        }
    }
    (grants, accounts)
}

/// The "not found" every refusal of someone else's grant shares with a grant
/// that does not exist (the store's own wording).
fn no_grant(server: &str, connection: &str) -> Error {
    Error::NotFound(format!("{server} has no grant for connection {connection}"))
}

impl Governance {
    /// The `auth-ibom/v1` document: every grant ever made (or, with `since`
    /// — a stored timestamp — those changed since or not ended before it).
    pub async fn export_ibom(&self, since: Option<String>) -> Result<Document> {
        let snap = self.store.ibom_snapshot(ibom::ACTIONS).await?;
        let head = ibom::AuditHead {
            seq: snap.head.seq,
            hash: snap.head.hash.clone(),
        };
        let (grants, linked_accounts) = derive(snap, since.as_deref());
        Ok(Document {
            schema: ibom::SCHEMA.to_owned(),
            generated_at: self.store.clock().ts(),
            since,
            audit_head: head,
            grants,
            linked_accounts,
        })
    }

    /// The grants behind `who`'s credential (exchanged for it, or stored from
    /// their approval), as stored now, and `who`'s linked accounts.
    pub async fn my_connections(
        &self,
        who: &Actor,
    ) -> Result<(Vec<GrantRow>, Vec<LinkedAccountRow>)> {
        let snap = self.store.ibom_snapshot(ibom::ACTIONS).await?;
        let rows = snap.grants.clone();
        let mine_accounts: Vec<LinkedAccountRow> = snap
            .accounts
            .iter()
            .filter(|a| a.sub == who.id)
            .cloned()
            .collect();
        let (grants, _) = derive(snap, None);
        let mine = rows
            .into_iter()
            .filter(|r| {
                r.subject.as_ref().is_some_and(|s| s.sub == who.id)
                    || grants.iter().any(|g| {
                        g.server == r.server
                            && g.connection == r.connection
                            && ibom::belongs_to(g, &who.id)
                    })
            })
            .collect();
        Ok((mine, mine_accounts))
    }

    /// Revokes one of the caller's own grants, audited as the caller; a
    /// refresh token of theirs the daemon holds for it is revoked at the
    /// identity provider first.
    pub async fn revoke_my_connection(
        &self,
        actor: Actor,
        server: String,
        connection: String,
        reason: String,
    ) -> Result<(GrantRow, Option<ProviderRevocation>, u64)> {
        let (mine, _) = self.my_connections(&actor).await?;
        if !mine
            .iter()
            .any(|g| g.server == server && g.connection == connection)
        {
            // The caller is told only "no such grant"; operators see the
            // attempt (someone probing other people's grants), coalesced.
            let uid = crate::audit_coalesce::peer_uid(actor.uid);
            let key = crate::audit_coalesce::key(&[
                "refusal",
                &uid,
                &actor.id,
                "permission-denied",
                "RevokeMyConnection",
                &server,
            ]);
            let entry = NewEntry {
                action: "permission-denied".into(),
                target: Some(Target {
                    kind: TargetKind::Mcp,
                    name: server.clone(),
                }),
                severity: None,
                outcome: "refused".into(),
                reason: format!(
                    "revoke --mine: {server}'s grant for {connection} is not the caller's, or does not exist"
                ),
                details: serde_json::json!({
                    "rpc": "RevokeMyConnection",
                    "connection": connection,
                }),
                actor,
            };
            self.audit_refusal(key, entry).await;
            return Err(no_grant(&server, &connection));
        }
        let reason = if reason.is_empty() {
            format!("revoked by {} (their own credential)", actor.name)
        } else {
            reason
        };
        // Cut at the source too when the daemon holds this person's own
        // refresh token for it (an unattended grant they approved): it is
        // theirs to revoke, and revoking only here would leave it live at
        // the provider.
        let holds_theirs = mine.iter().any(|g| {
            g.server == server
                && g.connection == connection
                && g.subject.as_ref().is_some_and(|s| s.sub == actor.id)
        });
        if holds_theirs {
            let (grant, provider, seq) = self
                .revoke_connection_at_provider(actor, server, connection, reason)
                .await?;
            return Ok((grant, Some(provider), seq));
        }
        let (grant, seq) = self
            .revoke_connection(actor, server, connection, reason)
            .await?;
        Ok((grant, None, seq))
    }
}
