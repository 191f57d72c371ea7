//! The daemon's error type and the one place it becomes a gRPC status.

use tonic::{Code, Status};

/// What can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something invalid; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The addressed thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is valid but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is known but not allowed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller could not be identified.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A dependency is down; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A per-caller bound is reached; retry once earlier work has ended.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store failed. Details are logged, not sent.
    #[error("store error during {context}: {source}")]
    Store {
        /// What the daemon was doing.
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A bug or an impossible state. Details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for an invalid-argument error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Wraps a SQLite error with what was being done.
    pub fn store(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Store { context, source }
    }
}

/// Result alias for the daemon.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::PermissionDenied(_) => Status::permission_denied(err.to_string()),
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::Unavailable(msg) => Status::unavailable(msg),
            Error::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            Error::Store { .. } | Error::Internal(_) => {
                // The detail stays in the daemon's log; the caller gets an id to quote.
                let id = error_id();
                tracing::error!(error_id = %id, error = %err, "request failed");
                Status::new(
                    Code::Internal,
                    format!("internal error (id {id}); see the daemon log"),
                )
            }
        }
    }
}

fn error_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
