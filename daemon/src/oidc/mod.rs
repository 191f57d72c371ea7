//! OpenID Connect for the daemon: the `[auth]` settings, the resource-server side
//! (discovery, JWKS cache, access-token verification, `/userinfo`) and the CIBA client
//! used for step-up approvals.
//!
//! Tokens and client secrets never appear in logs, errors or `Debug` output.

pub mod ciba;
pub mod provider;
pub mod secret;
pub mod settings;
pub mod userinfo;
pub mod verify;

pub use ciba::{
    Approval, BindingMessageError, CibaClient, CibaError, CibaOutcome, CibaStart, PollOutcome,
    binding_message, new_request_code, validate_binding_message,
};
pub use provider::{Discovery, JwksHealth, OidcError, Provider, http_client};
pub use secret::{AuthReqId, ClientSecret, SecretLoadError, load_client_secret};
pub use settings::{AuthConfigError, AuthMode, AuthSettings, MAX_LEEWAY_SECS, Role, roles_for};
pub use userinfo::{UserInfo, UserInfoCache};
pub use verify::{
    AuthRejection, MAX_TOKEN_BYTES, RejectReason, TokenVerifier, VerifiedToken, bearer_from_header,
};
