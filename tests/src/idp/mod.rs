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
//! Layout: `protocol` (the names and constants tests share with the provider),
//! `options` (what the provider is started with), `process` (the running provider:
//! installing, starting, restarting and stopping the node process), `admin` (the loopback admin API
//! that approves requests, injects failures and signs arbitrary tokens), `types` (the
//! admin API's wire views).

mod admin;
mod options;
mod process;
mod protocol;
#[cfg(test)]
mod tests;
mod types;

pub use options::{IdpOptions, IdpUser};
pub use process::{IdentityProvider, ensure_installed, idp_dir};
pub use protocol::*;
pub use types::{
    AccountLink, CibaSelector, FailureMode, LinkedAccount, PendingCiba, PendingCibaOutcome,
    PendingDeviceCode, ProviderToken, RequestLogEntry, TokenSet, TokenVaultStats,
};
