//! Token Vault connections as operators manage them: handing a server's
//! provider token to its wrapper, revoking, suspending and resuming a grant,
//! recording a linked account.

use super::Governance;
use super::vault::Issued;
use crate::clock::now_ts;
use crate::error::Result;
use crate::model::Actor;
use crate::store::connections::{GrantRow, LinkedAccountRow};
use crate::store::{
    ChangeGrantStatus, LinkAccount, RevokeConnection, Revoked, StatusChange, StatusChanged,
};

impl Governance {
    /// A provider token for `server`'s `connection`, exchanged for the
    /// caller's verified `bearer` token or the approver's sealed credential.
    pub async fn connection_token(
        &self,
        actor: &Actor,
        bearer: Option<&str>,
        server: &str,
        connection: &str,
        fresh: bool,
    ) -> Result<Issued> {
        self.vault
            .token(actor, bearer, server, connection, fresh)
            .await
    }

    /// Revokes a grant. Its cached tokens are forgotten first, so none of
    /// them is handed out again. Returns the grant and the audit seq.
    pub async fn revoke_connection(
        &self,
        actor: Actor,
        server: String,
        connection: String,
        reason: String,
    ) -> Result<(GrantRow, u64)> {
        self.vault.forget(&server, Some(&connection));
        let Revoked { grant, entry } = self
            .store
            .write(RevokeConnection {
                server,
                connection,
                reason,
                actor,
                at_provider: None,
            })
            .await?;
        // OpenClaw starts the server with its own command again.
        self.openclaw.rewire_mcp();
        Ok((*grant, entry.seq))
    }

    /// Suspends or resumes a grant (`connection-suspend`, `connection-resume`).
    /// A suspension drops the grant's cached tokens before anything else, so
    /// none is handed out again. Returns the grant and the audit seq.
    pub async fn change_connection_status(
        &self,
        actor: Actor,
        server: String,
        connection: String,
        change: StatusChange,
        reason: String,
    ) -> Result<(GrantRow, u64)> {
        if change == StatusChange::Suspend {
            self.vault.forget(&server, Some(&connection));
        }
        let StatusChanged { grant, entry } = self
            .store
            .write(ChangeGrantStatus {
                server: server.clone(),
                connection: connection.clone(),
                change,
                reason,
                actor,
                details: serde_json::Value::Null,
            })
            .await?;
        if change == StatusChange::Suspend {
            // An exchange that finished between the first drop and the commit.
            self.vault.forget(&server, Some(&connection));
        }
        Ok((*grant, entry.seq))
    }

    /// Records that the caller linked `account_id` at `connection` (My
    /// Account's connected accounts). Returns the row and the audit seq.
    pub async fn record_connected_account(
        &self,
        actor: Actor,
        connection: String,
        account_id: String,
    ) -> Result<(LinkedAccountRow, u64)> {
        let account = LinkedAccountRow {
            sub: actor.id.clone(),
            connection,
            account_id,
            linked_at: now_ts(),
        };
        let entry = self
            .store
            .write(LinkAccount {
                account: account.clone(),
                actor,
            })
            .await?;
        Ok((account, entry.seq))
    }
}
