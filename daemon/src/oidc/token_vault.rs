//! The Token Vault exchange (Auth0's RFC 8693-style grant): an Auth0 credential
//! of an operator in, a short-lived third-party provider token out.
//!
//! The daemon is the Custom API Client (confidential, linked to the daemon's
//! API). Errors name what the operator must do and never carry a token.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::provider::{Provider, read_limited, transport};
use super::{ClientSecret, ProviderToken, RefreshToken};

/// Auth0's Token Vault grant type.
pub const TOKEN_VAULT_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
/// What the exchange returns.
pub const FEDERATED_TOKEN_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The Auth0 credential exchanged.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A live operator access token whose `aud` is the daemon's API (mode a).
    AccessToken(&'a str),
    /// A refresh token issued to the daemon's client for the approver (mode b).
    RefreshToken(&'a RefreshToken),
}

impl Subject<'_> {
    /// `access_token` or `refresh_token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::AccessToken(_) => "access_token",
            Subject::RefreshToken(_) => "refresh_token",
        }
    }
}

/// A provider token from the exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// The provider's access token.
    pub access_token: ProviderToken,
    /// Lifetime in seconds, as the provider said.
    pub expires_in: u64,
    /// Scopes granted, when the answer lists them.
    pub scopes: Option<Vec<String>>,
}

/// Why an exchange failed. Each names what to do; none carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The user never linked this connection (`federated_connection_refresh_token_not_found`).
    #[error(
        "no {connection} account is connected for this operator: connect it with `defenseclawctl connections connect {connection}`"
    )]
    NotConnected {
        /// Connection name.
        connection: String,
    },
    /// The provider refused to refresh (revoked or expired at the provider).
    #[error(
        "the {connection} connection must be reconnected (the provider refused the stored grant): run `defenseclawctl connections connect {connection}`"
    )]
    ReconnectNeeded {
        /// Connection name.
        connection: String,
    },
    /// The subject credential is invalid or expired (`invalid_grant`).
    #[error("the identity provider rejected the {subject} ({description})")]
    SubjectRejected {
        /// `access_token` or `refresh_token`.
        subject: &'static str,
        /// The provider's description.
        description: String,
    },
    /// The daemon's client may not use Token Vault (grant missing, or not the
    /// Custom API Client of the token's API).
    #[error(
        "the daemon's client is not allowed to use Token Vault ({error}: {description}); enable the Token Vault grant on the daemon's Custom API Client"
    )]
    ClientNotAllowed {
        /// OAuth error code.
        error: String,
        /// The provider's description.
        description: String,
    },
    /// Any other OAuth error answer.
    #[error("Token Vault refused the exchange: {error} ({description})")]
    Refused {
        /// OAuth error code.
        error: String,
        /// The provider's description.
        description: String,
    },
    /// Network trouble, a timeout or a 5xx.
    #[error("the identity provider is unavailable ({0}); retry shortly")]
    Unavailable(String),
    /// The answer could not be understood.
    #[error("the identity provider sent an unusable Token Vault answer: {0}")]
    InvalidResponse(String),
}

impl VaultError {
    /// Stable name for audit entries.
    pub fn code(&self) -> &'static str {
        match self {
            VaultError::NotConnected { .. } => "not_connected",
            VaultError::ReconnectNeeded { .. } => "reconnect_needed",
            VaultError::SubjectRejected { .. } => "subject_rejected",
            VaultError::ClientNotAllowed { .. } => "client_not_allowed",
            VaultError::Refused { .. } => "refused",
            VaultError::Unavailable(_) => "unavailable",
            VaultError::InvalidResponse(_) => "invalid_response",
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    expires_in: Option<u64>,
    scope: Option<String>,
}

/// Maps an error answer to what the operator must do.
fn classify(status: u16, body: ErrorBody, subject: &'static str, connection: &str) -> VaultError {
    let description = super::ciba::clean_description(body.error_description).unwrap_or_default();
    match body.error.as_deref() {
        Some("federated_connection_refresh_token_not_found" | "tokenset_not_found") => {
            VaultError::NotConnected {
                connection: connection.to_owned(),
            }
        }
        Some("federated_connection_refresh_token_flow_failed") => VaultError::ReconnectNeeded {
            connection: connection.to_owned(),
        },
        Some("invalid_grant" | "expired_token") => VaultError::SubjectRejected {
            subject,
            description,
        },
        Some(e @ ("unauthorized_client" | "access_denied" | "unsupported_grant_type")) => {
            VaultError::ClientNotAllowed {
                error: e.to_owned(),
                description,
            }
        }
        Some("server_error" | "temporarily_unavailable" | "too_many_requests") => {
            VaultError::Unavailable(format!("HTTP {status}"))
        }
        Some(_) if status >= 500 || status == 429 => {
            VaultError::Unavailable(format!("HTTP {status}"))
        }
        Some(e) => VaultError::Refused {
            error: e.chars().take(64).collect(),
            description,
        },
        None if status >= 500 || status == 429 => VaultError::Unavailable(format!("HTTP {status}")),
        None => VaultError::InvalidResponse(format!("HTTP {status} without an OAuth error")),
    }
}

/// The daemon's Token Vault client.
#[derive(Debug)]
pub struct TokenVaultClient {
    provider: Arc<Provider>,
    client_id: String,
    client_secret: ClientSecret,
    timeout: Duration,
}

impl TokenVaultClient {
    /// A client with the daemon's confidential credentials; `timeout` bounds each exchange.
    pub fn new(
        provider: Arc<Provider>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
        timeout: Duration,
    ) -> Self {
        Self {
            provider,
            client_id: client_id.into(),
            client_secret,
            timeout,
        }
    }

    /// Exchanges `subject` for a token of `connection` (`login_hint` picks one
    /// of several accounts on it).
    pub async fn exchange(
        &self,
        subject: Subject<'_>,
        connection: &str,
        login_hint: Option<&str>,
    ) -> Result<Exchanged, VaultError> {
        let discovery = self
            .provider
            .discovery()
            .await
            .map_err(|e| VaultError::Unavailable(e.to_string()))?;
        let Some(endpoint) = discovery.token_endpoint.as_deref() else {
            return Err(VaultError::InvalidResponse(
                "the discovery document has no token_endpoint".into(),
            ));
        };
        let (subject_type, subject_token) = match subject {
            Subject::AccessToken(t) => (ACCESS_TOKEN_TYPE, t),
            Subject::RefreshToken(t) => (REFRESH_TOKEN_TYPE, t.expose()),
        };
        let mut form = vec![
            ("grant_type", TOKEN_VAULT_GRANT),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("subject_token_type", subject_type),
            ("subject_token", subject_token),
            ("requested_token_type", FEDERATED_TOKEN_TYPE),
            ("connection", connection),
        ];
        if let Some(hint) = login_hint {
            form.push(("login_hint", hint));
        }
        let what = "Token Vault exchange";
        let resp = self
            .provider
            .http()
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .form(&form)
            .send()
            .await
            .map_err(|e| VaultError::Unavailable(transport(what, &e).to_string()))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp, MAX_RESPONSE_BYTES, what)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    VaultError::Unavailable(e.to_string())
                } else {
                    VaultError::InvalidResponse(e.to_string())
                }
            })?;
        if !(200..300).contains(&status) {
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            return Err(classify(status, error, subject.kind(), connection));
        }
        let ok: SuccessBody = serde_json::from_slice(&body)
            .map_err(|e| VaultError::InvalidResponse(format!("{what}: {e}")))?;
        let access_token = ok
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| VaultError::InvalidResponse("no access_token".into()))?;
        Ok(Exchanged {
            access_token: ProviderToken::new(access_token),
            expires_in: ok.expires_in.unwrap_or(0),
            scopes: ok
                .scope
                .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect()),
        })
    }
}

/// Why a revocation at the provider failed. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// The discovery document names no `revocation_endpoint`.
    #[error("the identity provider has no revocation endpoint")]
    NoEndpoint,
    /// Network trouble, a timeout or a 5xx.
    #[error("the identity provider is unavailable ({0})")]
    Unavailable(String),
    /// The provider refused (an OAuth error answer).
    #[error("the identity provider refused the revocation: {error} ({description})")]
    Refused {
        /// OAuth error code.
        error: String,
        /// The provider's description.
        description: String,
    },
}

impl TokenVaultClient {
    /// The revocation endpoint, from the discovery document.
    pub async fn revocation_endpoint(&self) -> Result<String, RevokeError> {
        let discovery = self
            .provider
            .discovery()
            .await
            .map_err(|e| RevokeError::Unavailable(e.to_string()))?;
        discovery
            .revocation_endpoint
            .clone()
            .ok_or(RevokeError::NoEndpoint)
    }

    /// Revokes a refresh token issued to the daemon's client (RFC 7009) at
    /// `endpoint`. A 2xx answer means it is revoked (or was already invalid).
    pub async fn revoke_refresh_token(
        &self,
        endpoint: &str,
        token: &RefreshToken,
    ) -> Result<(), RevokeError> {
        let what = "token revocation";
        let resp = self
            .provider
            .http()
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose()),
                ("token", token.expose()),
                ("token_type_hint", "refresh_token"),
            ])
            .send()
            .await
            .map_err(|e| RevokeError::Unavailable(transport(what, &e).to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let body = read_limited(resp, MAX_RESPONSE_BYTES, what)
            .await
            .unwrap_or_default();
        let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if status >= 500 || status == 429 {
            return Err(RevokeError::Unavailable(format!("HTTP {status}")));
        }
        Err(RevokeError::Refused {
            error: error
                .error
                .unwrap_or_else(|| format!("HTTP {status}"))
                .chars()
                .take(64)
                .collect(),
            description: super::ciba::clean_description(error.error_description)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &str) -> ErrorBody {
        ErrorBody {
            error: Some(error.into()),
            error_description: Some("why\u{7}".into()),
        }
    }

    #[test]
    fn auth0_error_codes_map_to_what_to_do() {
        let c = |status, e| classify(status, body(e), "refresh_token", "github");
        assert_eq!(
            c(401, "federated_connection_refresh_token_not_found"),
            VaultError::NotConnected {
                connection: "github".into()
            }
        );
        assert_eq!(
            c(401, "federated_connection_refresh_token_flow_failed").code(),
            "reconnect_needed"
        );
        assert_eq!(c(401, "invalid_grant").code(), "subject_rejected");
        assert_eq!(c(403, "unauthorized_client").code(), "client_not_allowed");
        assert_eq!(c(503, "whatever").code(), "unavailable");
        assert_eq!(c(400, "invalid_request").code(), "refused");
        let none = classify(502, ErrorBody::default(), "access_token", "github");
        assert_eq!(none.code(), "unavailable");
        // Control characters from the provider never reach messages.
        assert!(!c(400, "invalid_request").to_string().contains('\u{7}'));
    }
}
