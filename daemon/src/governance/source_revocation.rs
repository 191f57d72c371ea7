//! Revocation at the source: `connections revoke --at-provider` (the sealed
//! refresh token revoked at the identity provider before the grant is revoked
//! here) and `connections unlink` (the account deleted at the provider by the
//! CLI; here every grant using it is marked `unlinked` and its tokens dropped).

use super::Governance;
use super::vault::revocation::ProviderRevocation;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::store::connections::GrantRow;
use crate::store::{RevokeConnection, Revoked, UnlinkAccount, Unlinked};

impl Governance {
    /// Revokes a grant, first revoking its sealed refresh token at the
    /// provider. A failure there is reported (and audited, outcome
    /// `partial`) but the grant is revoked here all the same: the local
    /// revocation is what stops this daemon serving it, and it must not wait
    /// for a provider that is down. Returns the grant, what happened at the
    /// provider and the audit seq.
    pub async fn revoke_connection_at_provider(
        &self,
        actor: Actor,
        server: String,
        connection: String,
        reason: String,
    ) -> Result<(GrantRow, ProviderRevocation, u64)> {
        let siblings = self.store.list_grants(Some(server.clone())).await?;
        let Some(grant) = siblings.iter().find(|g| g.connection == connection) else {
            return Err(Error::NotFound(format!(
                "{server} has no grant for connection {connection}"
            )));
        };
        self.vault.forget(&server, Some(&connection));
        let provider = self.vault.revoke_at_provider(grant, &siblings).await;
        let at_provider = serde_json::to_value(&provider)
            .map_err(|e| Error::Internal(format!("encoding the provider outcome: {e}")))?;
        let Revoked { grant, entry } = self
            .store
            .write(RevokeConnection {
                server: server.clone(),
                connection: connection.clone(),
                reason,
                actor,
                at_provider: Some(at_provider),
            })
            .await?;
        // Tokens exchanged while the provider was asked.
        self.vault.forget(&server, Some(&connection));
        self.openclaw.rewire_mcp();
        Ok((*grant, provider, entry.seq))
    }

    /// The caller's account on `connection` was unlinked at the provider (or
    /// the CLI tried, `at_provider` says how it went): every grant using it is
    /// marked `unlinked`, every cached token of the connection dropped, the
    /// daemon's record of the link removed. Returns what changed.
    pub async fn unlink_connected_account(
        &self,
        actor: Actor,
        connection: String,
        account_id: String,
        at_provider: serde_json::Value,
    ) -> Result<Unlinked> {
        self.vault.forget_connection(&connection);
        let unlinked = self
            .store
            .write(UnlinkAccount {
                sub: actor.id.clone(),
                connection: connection.clone(),
                account_id,
                at_provider,
                actor,
            })
            .await?;
        self.vault.forget_connection(&connection);
        if !unlinked.grants.is_empty() {
            self.openclaw.rewire_mcp();
        }
        Ok(unlinked)
    }
}
