//! What a test provider is started with: its users and its options, and the
//! JSON config `server.mjs --config` reads.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::protocol::{
    DEFAULT_AUDIENCE, DEFAULT_CLI_CLIENT_ID, DEFAULT_CONNECTIONS, DEFAULT_DAEMON_CLIENT_ID,
    DEFAULT_DAEMON_CLIENT_SECRET,
};

/// A user known to the provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdpUser {
    /// Subject, e.g. `auth0|operator1`.
    pub sub: String,
    /// `email` claim (`None`: no email claim).
    pub email: Option<String>,
    /// `name` claim (`None`: no name claim).
    pub name: Option<String>,
    /// Enrolled in Guardian push: CIBA requests for a user without it get `invalid_request`.
    pub push_enrolled: bool,
}

impl IdpUser {
    /// A push-enrolled user.
    pub fn new(sub: &str, email: &str, name: &str) -> Self {
        Self {
            sub: sub.to_owned(),
            email: Some(email.to_owned()),
            name: Some(name.to_owned()),
            push_enrolled: true,
        }
    }
}

/// Provider configuration. `Default` gives short intervals suitable for tests.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// API identifier (`audience`); access tokens for it are RS256 JWTs.
    pub audience: String,
    /// Scopes the API defines.
    pub api_scopes: Vec<String>,
    /// Public Native client id (device grant + refresh).
    pub cli_client_id: String,
    /// Confidential daemon client id (CIBA + refresh + client credentials).
    pub daemon_client_id: String,
    /// Daemon client secret.
    pub daemon_client_secret: String,
    /// Users; default `auth0|operator1`, `auth0|operator2` (push) and `auth0|nopush`.
    pub users: Vec<IdpUser>,
    /// Device flow `interval` (s). Default 1.
    pub device_interval: u64,
    /// Device code lifetime (s). Default 60.
    pub device_ttl: u64,
    /// CIBA `interval` (s). Default 1.
    pub ciba_interval: u64,
    /// Upper bound for `requested_expiry` (s). Default 300.
    pub ciba_max_expiry: u64,
    /// Access token lifetime (s). Default 3600.
    pub access_token_ttl: u64,
    /// Refresh token lifetime (s). Default 30 days.
    pub refresh_token_ttl: u64,
    /// Auth0 status codes (403/429) instead of RFC 400s. Default true.
    pub auth0_status: bool,
    /// Answer `slow_down` to polls faster than the interval. Default true.
    pub enforce_interval: bool,
    /// Seconds added to the interval on each `slow_down`. Default 5 (Auth0, RFC 8628).
    pub slow_down_step: u64,
    /// `access_denied` (Auth0, default) or `expired_token` for an expired CIBA request.
    pub ciba_expired_error: String,
    /// Connections that can be linked; `"*"` allows any name of 1-128 `[A-Za-z0-9_-]`.
    /// Default [`DEFAULT_CONNECTIONS`].
    pub connections: Vec<String>,
    /// Multi-Resource Refresh Tokens: a refresh token with `audience=<issuer>me/` (or another
    /// configured API) gets a token for that API. Default true. Off, the provider does what
    /// Auth0 does for an audience outside the client's refresh-token policies: it ignores the
    /// audience and scope and answers with a token for the original audience.
    pub mrrt: bool,
    /// With `mrrt` off: refuse such a refresh with 403 `access_denied` instead. Default false.
    pub mrrt_off_error: bool,
    /// The Connected Accounts browser step returns `connect_code` and `state` in the URL
    /// fragment (as Auth0's docs say) instead of the query. Default false.
    pub connect_code_in_fragment: bool,
    /// Extra raw config keys merged last (see `tests/idp/server.mjs`).
    pub extra: serde_json::Map<String, Value>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            audience: DEFAULT_AUDIENCE.to_owned(),
            api_scopes: [
                "read:status",
                "skills:write",
                "audit:read",
                "admin",
                "block:approve",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            cli_client_id: DEFAULT_CLI_CLIENT_ID.to_owned(),
            daemon_client_id: DEFAULT_DAEMON_CLIENT_ID.to_owned(),
            daemon_client_secret: DEFAULT_DAEMON_CLIENT_SECRET.to_owned(),
            users: vec![
                IdpUser::new("auth0|operator1", "operator1@example.com", "Operator One"),
                IdpUser::new("auth0|operator2", "operator2@example.com", "Operator Two"),
                IdpUser {
                    push_enrolled: false,
                    ..IdpUser::new("auth0|nopush", "nopush@example.com", "No Push")
                },
            ],
            device_interval: 1,
            device_ttl: 60,
            ciba_interval: 1,
            ciba_max_expiry: 300,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            auth0_status: true,
            enforce_interval: true,
            slow_down_step: 5,
            ciba_expired_error: "access_denied".to_owned(),
            connections: DEFAULT_CONNECTIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            mrrt: true,
            mrrt_off_error: false,
            connect_code_in_fragment: false,
            extra: serde_json::Map::new(),
        }
    }
}

impl IdpOptions {
    /// The JSON config passed to `server.mjs --config`.
    pub fn to_config(&self) -> Value {
        let mut cfg = json!({
            "audience": self.audience,
            "api_scopes": self.api_scopes,
            "clients": [
                { "client_id": self.cli_client_id, "type": "native" },
                {
                    "client_id": self.daemon_client_id,
                    "type": "confidential",
                    "client_secret": self.daemon_client_secret,
                    "token_endpoint_auth_method": "client_secret_post",
                },
            ],
            "users": self.users,
            "device_interval": self.device_interval,
            "device_ttl": self.device_ttl,
            "ciba_interval": self.ciba_interval,
            "ciba_max_expiry": self.ciba_max_expiry,
            "access_token_ttl": self.access_token_ttl,
            "refresh_token_ttl": self.refresh_token_ttl,
            "auth0_status": self.auth0_status,
            "enforce_interval": self.enforce_interval,
            "slow_down_step": self.slow_down_step,
            "ciba_expired_error": self.ciba_expired_error,
            "connections": self.connections,
            "mrrt": self.mrrt,
            "mrrt_off_error": self.mrrt_off_error,
            "connect_code_in_fragment": self.connect_code_in_fragment,
        });
        if let Some(obj) = cfg.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        cfg
    }
}
