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
    /// A bound was reached (a full scan pool, a cap); retrying later may help.
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
    /// A connection grant is not served: suspended, or a human did not let it
    /// resume. `FAILED_PRECONDITION`, with `reason` in the [`HELD_METADATA`]
    /// metadata so callers (the CLI's exit codes) tell the cases apart.
    #[error("{message}")]
    GrantHeld {
        /// Why it is held.
        reason: HeldReason,
        /// What to do about it.
        message: String,
    },
}

/// The metadata key carrying a [`HeldReason`] on a `FAILED_PRECONDITION` status.
pub const HELD_METADATA: &str = "defenseclaw-held";

/// Why a connection grant was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldReason {
    /// Suspended, and nobody can be asked (step-up off): an operator resumes it.
    Suspended,
    /// Its approver denied resuming it.
    ResumeDenied,
    /// Its approver did not answer before the deadline.
    ResumeTimedOut,
    /// Asking the approver failed (the identity provider, a cap, a cancel).
    ResumeFailed,
}

impl HeldReason {
    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspended => "grant-suspended",
            Self::ResumeDenied => "resume-denied",
            Self::ResumeTimedOut => "resume-timed-out",
            Self::ResumeFailed => "resume-error",
        }
    }
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

/// Longest message a status carries; longer ones are cut (a last guard: the
/// messages themselves quote input through [`quoted`]).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// Longest part of caller input quoted in a message, in characters.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Caller input as it may appear in a message: in double quotes, at most
/// [`MAX_QUOTED_CHARS`] characters (`…` when cut), with control, invisible,
/// bidi and line-separator characters written as `\u{..}` escapes, so an
/// error never carries a megabyte of input or rewrites the terminal showing it.
pub fn quoted(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_QUOTED_CHARS) + 2);
    out.push('"');
    let mut chars = input.chars();
    for c in chars.by_ref().take(MAX_QUOTED_CHARS) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('"');
    out
}

/// Characters that print as nothing, as a different space, or reorder the
/// text around them (format characters, bidi controls, line/paragraph
/// separators, variation selectors, tags).
fn is_invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00A0 | 0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5
        | 0x180B..=0x180F | 0x2000..=0x200F | 0x2028..=0x202F | 0x205F..=0x206F
        | 0x3000 | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB
        | 0xE0000..=0xE0FFF)
}

/// `msg` cut to [`MAX_STATUS_MESSAGE_BYTES`] at a character boundary.
fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_STATUS_MESSAGE_BYTES {
        let mut end = MAX_STATUS_MESSAGE_BYTES;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    msg
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(bounded(err.to_string())),
            Error::NotFound(_) => Status::not_found(bounded(err.to_string())),
            Error::FailedPrecondition(msg) => Status::failed_precondition(bounded(msg)),
            Error::PermissionDenied(_) => Status::permission_denied(bounded(err.to_string())),
            Error::Unauthenticated(_) => Status::unauthenticated(bounded(err.to_string())),
            Error::Unavailable(msg) => Status::unavailable(bounded(msg)),
            Error::ResourceExhausted(msg) => Status::resource_exhausted(bounded(msg)),
            Error::GrantHeld { reason, message } => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                metadata.insert(
                    HELD_METADATA,
                    tonic::metadata::MetadataValue::from_static(reason.as_str()),
                );
                Status::with_metadata(Code::FailedPrecondition, bounded(message), metadata)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cuts_and_escapes() {
        assert_eq!(quoted("abc"), "\"abc\"");
        assert_eq!(quoted("a\u{202e}b\nc"), "\"a\\u{202e}b\\u{a}c\"");
        let long = quoted(&"x".repeat(1 << 20));
        assert_eq!(long.chars().count(), MAX_QUOTED_CHARS + 3);
        assert!(long.ends_with("…\""));
    }
}
