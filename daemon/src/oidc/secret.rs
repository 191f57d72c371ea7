//! Redacting wrappers for secrets: their `Debug` never shows the value and they have
//! no `Display`.

use std::fmt;

/// The daemon's OAuth client secret (for CIBA). Load it from the environment or a
/// credential file, never from the TOML configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret; surrounding whitespace (e.g. a trailing newline from a file) is removed.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_owned())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// A CIBA `auth_req_id`: a bearer credential for the pending approval, so redacted too.
/// The daemon stores it to resume polling after a restart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthReqId(String);

impl AuthReqId {
    /// Wraps an `auth_req_id` (e.g. read back from the store).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id itself, for polling and for the store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthReqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthReqId(<redacted>)")
    }
}

/// An Auth0 refresh token issued to the daemon's client for an approving
/// operator (the subject of unattended Token Vault exchanges). Stored only
/// sealed; redacted here.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// Wraps a refresh token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the exchange and for sealing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// A third-party provider's access token (GitHub, Slack, …) from Token Vault.
/// Held in memory only, handed to the one MCP server it is for.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderToken(String);

impl ProviderToken {
    /// Wraps a provider token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the one reply that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderToken(<redacted>)")
    }
}
