//! A real OpenID provider for tests: `tests/idp/server.mjs` (oidc-provider 9.13.3 configured
//! like an Auth0 tenant) started on a random loopback port.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
//! let idp = IdentityProvider::start(IdpOptions::default()).await?;
//! let issuer = idp.issuer(); // "http://127.0.0.1:PORT/" (trailing slash, like Auth0)
//! let code = idp.wait_for_device_code(std::time::Duration::from_secs(10)).await?;
//! idp.approve_device(&code.user_code, "auth0|operator1").await?;
//! # let _ = issuer; Ok(()) }
//! ```
//!
//! Token Vault (the federated connection access token exchange) and Connected Accounts are
//! emulated too: link accounts with [`IdentityProvider::link_account`] (or through the My
//! Account API at [`IdentityProvider::my_account_url`]), then exchange at `oauth/token` with
//! [`TOKEN_VAULT_GRANT`]; [`IdentityProvider::provider_tokens`] lists the fake third-party
//! tokens handed out.
//!
//! The first start runs `npm ci` in `tests/idp` (once, guarded by a file lock so parallel
//! test binaries don't race). Without `node`/`npm` on `PATH`, [`IdentityProvider::start`]
//! returns an error that says so: tests fail loudly instead of skipping.
//!
//! Layout: `options` (what the provider is started with), `process` (installing,
//! starting, restarting and stopping the node process), `admin` (the loopback admin API
//! that approves requests, injects failures and signs arbitrary tokens), `types` (the
//! admin API's wire views).

mod admin;
mod options;
mod process;
#[cfg(test)]
mod tests;
mod types;

use std::sync::{Arc, Mutex};

use tokio::process::{Child, ChildStdin};

pub use options::{IdpOptions, IdpUser};
pub use process::{ensure_installed, idp_dir};
pub use types::{
    AccountLink, CibaSelector, FailureMode, LinkedAccount, PendingCiba, PendingCibaOutcome,
    PendingDeviceCode, ProviderToken, RequestLogEntry, TokenSet, TokenVaultStats,
};

/// The default API audience (an absolute URI, as oidc-provider requires).
pub const DEFAULT_AUDIENCE: &str = "https://defenseclaw.local/api";
/// The public Native client used by `defenseclawctl` (device code grant).
pub const DEFAULT_CLI_CLIENT_ID: &str = "defenseclaw-cli";
/// The confidential client used by `defenseclawd` (CIBA).
pub const DEFAULT_DAEMON_CLIENT_ID: &str = "defenseclawd";
/// The daemon client's secret in the test provider.
pub const DEFAULT_DAEMON_CLIENT_SECRET: &str = "defenseclawd-test-secret";
/// Device authorization grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// CIBA grant type.
pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// Auth0's Token Vault grant type (exchange for a connected account's provider token).
pub const TOKEN_VAULT_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
/// Token Vault `subject_token_type` for an Auth0 refresh token (of the calling client).
pub const SUBJECT_TOKEN_TYPE_REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// Token Vault `subject_token_type` for an Auth0 access token (for the client's API).
pub const SUBJECT_TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token Vault `requested_token_type` and `issued_token_type`.
pub const FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
/// Scopes of the My Account API (`<issuer>me/`) for Connected Accounts.
pub const MY_ACCOUNT_SCOPES: [&str; 3] = [
    "create:me:connected_accounts",
    "read:me:connected_accounts",
    "delete:me:connected_accounts",
];
/// Connections that can be linked by default.
pub const DEFAULT_CONNECTIONS: [&str; 3] = ["github", "slack", "google-oauth2"];

struct Running {
    child: Child,
    // Kept open: the provider exits when it closes (IDP_EXIT_ON_STDIN_CLOSE=1).
    _stdin: Option<ChildStdin>,
}

/// A running test identity provider; killed on drop.
pub struct IdentityProvider {
    opts: IdpOptions,
    issuer: String,
    port: u16,
    kid: String,
    running: Option<Running>,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
    created_users: Vec<IdpUser>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}
