//! Redacting wrappers: a token is never shown by `Debug`, and has no `Display`.

use serde::{Deserialize, Serialize};

/// A secret string (access, refresh or ID token, device code). `Debug` prints
/// `<redacted>`; there is no `Display`, so it can't end up in a message by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a bearer token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The `DEFENSECLAW_TOKEN` environment variable.
    Env,
    /// The session file written by `auth login`.
    Session,
}

/// The access token to send as `authorization: Bearer <token>` on every RPC.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    token: Secret,
    source: TokenSource,
}

impl BearerToken {
    pub(crate) fn new(token: Secret, source: TokenSource) -> Self {
        Self { token, source }
    }

    /// The raw token, to put in the `authorization` header. Never print it.
    pub fn expose_secret(&self) -> &str {
        self.token.expose()
    }

    /// The full header value, `Bearer <token>`. Never print it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// Where it came from.
    pub fn source(&self) -> TokenSource {
        self.source
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("source", &self.source)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let s = Secret::new("eyJhbGciOi.secret.value");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let b = BearerToken::new(s, TokenSource::Env);
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert_eq!(b.header_value(), "Bearer eyJhbGciOi.secret.value");
    }
}
