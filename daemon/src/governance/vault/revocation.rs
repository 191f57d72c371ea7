//! Revocation at the source, as the broker sees it: an unattended grant's
//! sealed refresh token revoked at the identity provider (RFC 7009) before it
//! is dropped here, and every cached token of a connection dropped when the
//! account behind it is unlinked.

use serde::Serialize;

use super::TokenBroker;
use super::seal::subject_context;
use crate::oidc::RefreshToken;
use crate::store::connections::GrantRow;

/// What happened at the provider for `connections revoke --at-provider`.
/// Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderRevocation {
    /// `revoked`, `failed`, or `nothing_stored` (the grant keeps no refresh
    /// token: it is exchanged with the caller's live token).
    pub outcome: &'static str,
    /// The revocation endpoint asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whose refresh token it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_sub: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Other connections of the same server sealed with the same refresh
    /// token (one approval of several connections): revoked with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
}

impl ProviderRevocation {
    fn failed(subject_sub: Option<String>, endpoint: Option<String>, error: String) -> Self {
        Self {
            outcome: "failed",
            endpoint,
            subject_sub,
            error: Some(error),
            shared_with: Vec::new(),
        }
    }
}

impl TokenBroker {
    /// Revokes `grant`'s sealed refresh token at the provider. `siblings` are
    /// the server's other grants (to name those sharing the token). Never
    /// fails: the outcome says what happened.
    pub async fn revoke_at_provider(
        &self,
        grant: &GrantRow,
        siblings: &[GrantRow],
    ) -> ProviderRevocation {
        let Some(stored) = &grant.subject else {
            return ProviderRevocation {
                outcome: "nothing_stored",
                endpoint: None,
                subject_sub: None,
                error: None,
                shared_with: Vec::new(),
            };
        };
        let sub = Some(stored.sub.clone());
        let Some(client) = &self.client else {
            return ProviderRevocation::failed(sub, None, "Token Vault is not configured".into());
        };
        let Some(sealer) = &self.sealer else {
            return ProviderRevocation::failed(
                sub,
                None,
                "no token vault key is configured to open the stored refresh token".into(),
            );
        };
        let token = match sealer
            .open(&stored.sealed, &subject_context(&grant.server, &stored.sub))
            .map(String::from_utf8)
        {
            Ok(Ok(t)) => RefreshToken::new(t),
            Ok(Err(_)) => {
                return ProviderRevocation::failed(
                    sub,
                    None,
                    "the stored credential is not text".into(),
                );
            }
            Err(e) => return ProviderRevocation::failed(sub, None, e.to_string()),
        };
        let endpoint = match client.revocation_endpoint().await {
            Ok(e) => e,
            Err(e) => return ProviderRevocation::failed(sub, None, e.to_string()),
        };
        let shared_with = siblings
            .iter()
            .filter(|g| {
                g.connection != grant.connection
                    && g.subject
                        .as_ref()
                        .is_some_and(|s| s.sealed == stored.sealed)
            })
            .map(|g| g.connection.clone())
            .collect();
        match client.revoke_refresh_token(&endpoint, &token).await {
            Ok(()) => ProviderRevocation {
                outcome: "revoked",
                endpoint: Some(endpoint),
                subject_sub: sub,
                error: None,
                shared_with,
            },
            Err(e) => ProviderRevocation {
                shared_with: Vec::new(),
                ..ProviderRevocation::failed(sub, Some(endpoint), e.to_string())
            },
        }
    }

    /// Drops every cached token of `connection`, whatever the server.
    pub fn forget_connection(&self, connection: &str) {
        self.forget_where(|k| k.connection == connection);
    }
}
