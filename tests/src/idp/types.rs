//! The admin API's wire views: pending requests, failure modes, the request
//! log, connected accounts, provider tokens and token sets.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A device code waiting for the user (what `/activate` would show).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PendingDeviceCode {
    /// The code the user types, e.g. `WFHN-NXCW`.
    pub user_code: String,
    /// Requesting client.
    pub client_id: Option<String>,
    /// Requested scope string.
    pub scope: Option<String>,
    /// Requested `audience`.
    pub audience: Option<String>,
    /// Epoch seconds.
    pub created_at: i64,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// A CIBA request waiting on the user's phone.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PendingCiba {
    /// `auth_req_id` as returned by `/bc-authorize`.
    pub auth_req_id: String,
    /// The user asked to approve.
    pub sub: String,
    /// That user's email.
    pub email: Option<String>,
    /// That user's name.
    pub name: Option<String>,
    /// Requesting client.
    pub client_id: String,
    /// The message the phone shows.
    pub binding_message: Option<String>,
    /// Requested scope string.
    pub scope: Option<String>,
    /// Requested audience, if any.
    pub resource: Option<String>,
    /// `requested_expiry` as sent.
    pub requested_expiry: Option<u64>,
    /// Epoch seconds.
    pub created_at: i64,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// Which pending CIBA request an admin call acts on.
#[derive(Debug, Clone)]
pub enum CibaSelector {
    /// By `auth_req_id`.
    AuthReqId(String),
    /// The single pending request with this binding message.
    BindingMessage(String),
    /// The single pending request for this user.
    Sub(String),
    /// The single pending request.
    Only,
}

impl CibaSelector {
    pub(super) fn to_body(&self) -> Value {
        match self {
            Self::AuthReqId(id) => json!({ "auth_req_id": id }),
            Self::BindingMessage(m) => json!({ "binding_message": m }),
            Self::Sub(s) => json!({ "sub": s }),
            Self::Only => json!({}),
        }
    }
}

/// Failure injection; `None` fields are left unchanged. See `POST /__admin/failures`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureMode {
    /// Answer the next N device/CIBA polls with `slow_down` (interval += step, `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_down: Option<u32>,
    /// Status of injected errors (default 503).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// The next N matching requests fail with `error_status`; -1: until reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_count: Option<i64>,
    /// Paths that get injected errors (default `["/oauth/token"]`; `["*"]`: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_paths: Option<Vec<String>>,
    /// Delay every non-admin request (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Destroy non-admin connections without answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_connections: Option<bool>,
    /// Read matching requests and never answer them (the client times out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    /// Non-empty: errors, delay, drop and hang only hit `/oauth/token` requests with these
    /// `grant_type`s (e.g. `[TOKEN_VAULT_GRANT]`); empty: every matching request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<String>>,
}

/// One non-admin request the provider saw (no bodies, no secrets).
#[derive(Debug, Clone, Deserialize)]
pub struct RequestLogEntry {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Arrival, epoch milliseconds.
    pub at_ms: i64,
    /// Response status (a number), `"dropped"`, or null while in flight.
    pub status: Value,
    /// `grant_type` for `/oauth/token`.
    #[serde(default)]
    pub grant_type: Option<String>,
}

/// A connected account to create or update (`POST /__admin/connections`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountLink {
    /// The Auth0 user.
    pub sub: String,
    /// Connection name, e.g. `github`.
    pub connection: String,
    /// Provider scopes the account was linked with (the exchange's `scope`).
    pub scopes: Vec<String>,
    /// Provider-side user id; an exchange whose `login_hint` differs finds no account.
    pub login_hint: Option<String>,
    /// The provider refresh fails: exchanges answer `federated_connection_refresh_token_flow_failed`.
    pub broken: bool,
    /// `expires_in` of the provider tokens (`None`: 3600).
    pub expires_in: Option<u64>,
}

impl AccountLink {
    /// A working link with these scopes.
    pub fn new(sub: &str, connection: &str, scopes: &[&str]) -> Self {
        Self {
            sub: sub.to_owned(),
            connection: connection.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            login_hint: None,
            broken: false,
            expires_in: None,
        }
    }
}

/// A connected account in the provider (keyed by `sub` and `connection`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LinkedAccount {
    /// `cac_…`, the My Account API id.
    pub id: String,
    /// The Auth0 user.
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// Provider scopes.
    pub scopes: Vec<String>,
    /// Provider-side user id, if set.
    pub login_hint: Option<String>,
    /// Whether the provider refresh is made to fail.
    pub broken: bool,
    /// `expires_in` of provider tokens, if set (else 3600).
    pub expires_in: Option<u64>,
    /// RFC 3339 time of linking.
    pub created_at: String,
}

/// A fake third-party token issued by the Token Vault grant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProviderToken {
    /// `fake-<connection>-<hex>`.
    pub access_token: String,
    /// The user it was issued for.
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// The client that exchanged.
    pub client_id: String,
    /// [`SUBJECT_TOKEN_TYPE_REFRESH_TOKEN`] or [`SUBJECT_TOKEN_TYPE_ACCESS_TOKEN`].
    pub subject_token_type: String,
    /// Space-separated provider scopes.
    pub scope: String,
    /// Lifetime (s).
    pub expires_in: u64,
    /// Issue time, epoch milliseconds.
    pub at: i64,
}

/// Token Vault counters (`GET /__admin/token-vault`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct TokenVaultStats {
    /// Exchanges answered 200.
    pub exchanges: u64,
    /// Exchanges answered with an error by the provider (not injected failures).
    pub failures: u64,
    /// Token Vault requests hit by failure injection.
    pub injected: u64,
    /// Exchanges inside the grant handler right now (e.g. held by the delay).
    pub in_flight: u64,
    /// Delay before each exchange answers (ms).
    pub delay_ms: u64,
}

/// A successful token endpoint answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TokenSet {
    /// The access token (a JWT when an audience was requested).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Lifetime (s).
    pub expires_in: u64,
    /// Granted scope, if sent.
    #[serde(default)]
    pub scope: Option<String>,
    /// Refresh token (with `offline_access`).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// ID token (with `openid`).
    #[serde(default)]
    pub id_token: Option<String>,
}

/// Result of an admin CIBA approve/deny.
#[derive(Debug, Clone, Deserialize)]
pub struct PendingCibaOutcome {
    /// The request acted on.
    pub auth_req_id: String,
    /// Its user.
    pub sub: String,
    /// Its binding message.
    pub binding_message: Option<String>,
}
