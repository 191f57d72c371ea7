//! OpenID Connect for the daemon: the `[auth]` settings, the resource-server side
//! (discovery, JWKS cache, access-token verification, `/userinfo`) and the CIBA client
//! used for step-up approvals.
//!
//! Tokens and client secrets never appear in logs, errors or `Debug` output.
//!
//! Wiring, in short:
//!
//! ```no_run
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use defenseclawd::oidc::{self, AuthSettings, CibaClient, Provider, TokenVerifier, UserInfoCache};
//!
//! let settings: AuthSettings = toml::from_str(
//!     "mode = \"oidc\"\nissuer = \"tenant.us.auth0.com\"\naudience = \"https://defenseclaw.example/api\"\n",
//! )?;
//! settings.validate()?;
//! let provider = Provider::from_settings(&settings)?; // fetches nothing yet
//! let _ = provider.refresh_jwks().await; // optional warm-up; failures are retried on demand
//! let verifier = TokenVerifier::new(Arc::clone(&provider), "https://defenseclaw.example/api", settings.leeway_secs);
//! let userinfo = UserInfoCache::new(Arc::clone(&provider), Duration::from_secs(600), Duration::from_secs(60));
//!
//! // Per RPC (the `authorization` metadata value):
//! let header: Option<&str> = Some("Bearer eyJ...");
//! match verifier.verify_header(header).await {
//!     Ok(mut token) => {
//!         let bearer = oidc::bearer_from_header(header)?;
//!         let _ = userinfo.enrich(&mut token, bearer).await; // name/email when the token lacks them
//!         let roles = settings.roles_for(&token);
//!         let _allowed = roles.iter().any(|r| r.satisfies(oidc::Role::Operator));
//!     }
//!     // Unauthenticated; audit rejection.reason / unverified_sub / kid.
//!     Err(rejection) => eprintln!("{rejection}"),
//! }
//!
//! // Step-up (the daemon reads the secret through `crate::secrets`).
//! let secret = oidc::ClientSecret::new(std::env::var("DEFENSECLAW_AUTH_CLIENT_SECRET")?);
//! let ciba = CibaClient::new(Arc::clone(&provider), "daemon-client-id", secret);
//! let code = oidc::new_request_code();
//! let message = oidc::binding_message(&code, "block", "skill", "evil-skill");
//! let start = ciba.start("auth0|approver", &message, "openid", Some(300)).await?;
//! // Persist start.auth_req_id.expose(), start.deadline(), start.interval; then:
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let outcome = ciba.poll_until(&start.auth_req_id, start.deadline(), start.interval(), &cancel).await;
//! println!("{}", outcome.as_str()); // approved | denied | timed_out | cancelled | error
//! # Ok(())
//! # }
//! ```

pub mod ciba;
pub mod provider;
pub mod secret;
pub mod settings;
pub mod token_vault;
pub mod userinfo;
pub mod verify;

pub use ciba::{
    Approval, BindingMessageError, CibaClient, CibaError, CibaOutcome, CibaStart, PollOutcome,
    binding_message, new_request_code, validate_binding_message,
};
pub use provider::{Discovery, JwksHealth, OidcError, Provider, http_client};
pub use secret::{AuthReqId, ClientSecret, ProviderToken, RefreshToken};
pub use settings::{AuthConfigError, AuthMode, AuthSettings, MAX_LEEWAY_SECS, Role, RoleScopes};
pub use userinfo::{UserInfo, UserInfoCache};
pub use verify::{
    AuthRejection, MAX_TOKEN_BYTES, RejectReason, TokenVerifier, VerifiedToken, bearer_from_header,
    roles_for,
};
