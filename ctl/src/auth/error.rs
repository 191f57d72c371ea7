//! Errors of the `auth` commands and their process exit codes.

use std::path::PathBuf;

/// Process exit codes used by `defenseclawctl` (see [`AuthError::exit_code`]).
pub mod exit_codes {
    /// The command did what was asked.
    pub const OK: i32 = 0;
    /// Any other failure (I/O, configuration).
    pub const FAILURE: i32 = 1;
    /// Command-line usage error (clap).
    pub const USAGE: i32 = 2;
    /// Not authenticated: no session, or it could not be refreshed — log in again.
    pub const UNAUTHENTICATED: i32 = 5;
    /// Authenticated but not allowed (RPC `PermissionDenied`).
    pub const PERMISSION_DENIED: i32 = 77;
    /// The user denied the login (`access_denied`).
    pub const DENIED: i32 = 20;
    /// The login code expired before it was approved (`expired_token`).
    pub const EXPIRED: i32 = 21;
    /// The device code was rejected (`invalid_grant`: unknown, expired or already used).
    pub const INVALID_GRANT: i32 = 22;
    /// The identity provider could not be reached.
    pub const UNAVAILABLE: i32 = 23;
    /// The identity provider answered with an error or an invalid response/ID token.
    pub const PROVIDER: i32 = 24;
    /// The session file is unsafe (readable by group/others) or corrupted.
    pub const SESSION_FILE: i32 = 25;
    /// Cancelled (Ctrl-C).
    pub const CANCELLED: i32 = 130;
}

/// An `auth` failure. Messages never contain tokens.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No session and no `DEFENSECLAW_TOKEN`.
    #[error("not logged in: run `defenseclawctl auth login`")]
    NotLoggedIn,
    /// The session can't be used any more (refresh failed, token expired).
    #[error("{0}; run `defenseclawctl auth login` again")]
    LoginAgain(String),
    /// The user (or a rule at the provider) denied the login.
    #[error("login denied at the identity provider: {0}")]
    Denied(String),
    /// The device code expired before approval.
    #[error("the login code expired before it was approved; run `defenseclawctl auth login` again")]
    Expired,
    /// The provider rejected the device code (`invalid_grant`).
    #[error(
        "the identity provider rejected the login code (invalid_grant: {0}): it expired or was \
         already used; run `defenseclawctl auth login` again"
    )]
    InvalidGrant(String),
    /// Ctrl-C while waiting.
    #[error("login cancelled")]
    Cancelled,
    /// Network error, timeout or 5xx.
    #[error("identity provider unreachable: {0}")]
    Unavailable(String),
    /// An OAuth error or a malformed answer from the provider.
    #[error("identity provider error: {0}")]
    Provider(String),
    /// The login was approved by someone else than the session's user.
    #[error("wrong user: {0}")]
    WrongUser(String),
    /// The ID token failed validation.
    #[error("the ID token from the identity provider was rejected: {0}")]
    InvalidIdToken(String),
    /// The session file is unsafe or unreadable.
    #[error("session file {}: {reason}", path.display())]
    SessionFile {
        /// The session file that was refused, so the operator can fix or remove it.
        path: PathBuf,
        /// Why it is not used.
        reason: String,
    },
    /// Bad or missing settings (issuer, client id, …).
    #[error("configuration: {0}")]
    Config(String),
    /// Local I/O failure.
    #[error("{0}")]
    Io(String),
}

impl AuthError {
    /// The process exit code for this error (see [`exit_codes`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotLoggedIn | Self::LoginAgain(_) => exit_codes::UNAUTHENTICATED,
            Self::Denied(_) => exit_codes::DENIED,
            Self::Expired => exit_codes::EXPIRED,
            Self::InvalidGrant(_) => exit_codes::INVALID_GRANT,
            Self::Cancelled => exit_codes::CANCELLED,
            Self::Unavailable(_) => exit_codes::UNAVAILABLE,
            Self::Provider(_) | Self::InvalidIdToken(_) => exit_codes::PROVIDER,
            Self::SessionFile { .. } => exit_codes::SESSION_FILE,
            Self::Config(_) | Self::Io(_) | Self::WrongUser(_) => exit_codes::FAILURE,
        }
    }

    /// A stable machine-readable kind, for `-o json` error output.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not_logged_in",
            Self::LoginAgain(_) => "login_again",
            Self::Denied(_) => "access_denied",
            Self::Expired => "expired_token",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::Cancelled => "cancelled",
            Self::Unavailable(_) => "unavailable",
            Self::Provider(_) => "provider_error",
            Self::InvalidIdToken(_) => "invalid_id_token",
            Self::SessionFile { .. } => "session_file",
            Self::Config(_) => "config",
            Self::WrongUser(_) => "wrong_user",
            Self::Io(_) => "io",
        }
    }
}
