//! Operator login for `defenseclawctl`: OAuth 2.0 device flow against an OpenID provider
//! (Auth0 or compatible), a protected session file, automatic refresh, logout with
//! revocation, and the bearer token for RPCs.
//!
//! Entry points for the CLI: [`login`], [`status`], [`logout`], [`bearer_token`]; each
//! builds an [`Auth`] from the environment (`DEFENSECLAW_SESSION`, `DEFENSECLAW_TOKEN`,
//! `HOME`). Tests use [`Auth::new`] with an explicit session path and a captured
//! [`Console`]. Exit codes: [`exit_codes`] via [`AuthError::exit_code`].
//!
//! This file only names the parts and what the rest of the CLI may use; `login` holds
//! [`Auth`] and the commands, the other files one step each.

mod audience;
mod device;
mod error;
mod login;
mod provider;
mod secret;
pub mod session;
mod ui;

pub use audience::{
    AudienceRequest, AudienceToken, AudienceTokenSource, CONNECTED_ACCOUNTS_SCOPES,
    my_account_audience,
};
pub use error::{AuthError, exit_codes};
pub(crate) use login::ctrl_c;
pub use login::{
    Auth, IdentityClaims, LoginOptions, LogoutOutcome, OIDC_SCOPES, REFRESH_MARGIN, SessionStatus,
    TOKEN_ENV, bearer_token, bearer_token_if_configured, login, logout, status, verify_id_token,
};
pub(crate) use provider::check_url;
pub use provider::normalize_issuer;
pub use secret::{BearerToken, Secret, TokenSource};
pub use session::{SESSION_ENV, Session, default_session_path};
pub use ui::{Captured, Console};
pub(crate) use ui::{has_display, open_browser};
