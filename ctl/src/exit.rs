//! Exit codes. Scripts rely on these; they are listed in `--help` and the README.

use std::process::ExitCode;

/// The command did what was asked.
pub const OK: u8 = 0;
/// Any other failure.
pub const FAILURE: u8 = 1;
/// Bad command line or invalid argument (also clap's code).
pub const USAGE: u8 = 2;
/// The target, finding or entry does not exist.
pub const NOT_FOUND: u8 = 3;
/// The request is valid but the current state forbids it.
pub const FAILED_PRECONDITION: u8 = 4;
/// Not authenticated: log in again (`defenseclawctl auth login`).
pub const UNAUTHENTICATED: u8 = 5;
/// `audit verify` found a broken chain.
pub const AUDIT_BROKEN: u8 = 8;
/// A scan found something at or above `--fail-on`.
pub const SCAN_FAIL_ON: u8 = 9;
/// Step-up: the approver denied the change.
pub const STEPUP_DENIED: u8 = 10;
/// Step-up: nobody answered before the deadline.
pub const STEPUP_TIMED_OUT: u8 = 11;
/// Step-up: the identity provider failed or refused the request.
pub const STEPUP_ERROR: u8 = 12;
/// Step-up: the request was cancelled.
pub const STEPUP_CANCELLED: u8 = 13;
/// `skill install`: admission blocked the skill (or it already was).
pub const INSTALL_BLOCKED: u8 = 14;
/// `doctor`: at least one check failed.
pub const DOCTOR_FAILED: u8 = 15;
/// A connection grant is suspended and nobody could be asked: an operator
/// resumes it (`connections resume SERVER CONNECTION`).
pub const GRANT_SUSPENDED: u8 = 16;
/// The daemon could not be reached (sysexits EX_UNAVAILABLE).
pub const UNREACHABLE: u8 = 69;
/// The daemon refused: permission denied (sysexits EX_NOPERM).
pub const PERMISSION_DENIED: u8 = 77;
/// Cancelled with Ctrl-C (128 + SIGINT).
pub const CANCELLED: u8 = 130;

/// The exit-code table for `--help`.
pub const HELP: &str = "\
Exit codes:
   0  success
   1  other failure
   2  usage error or invalid argument
   3  not found
   4  failed precondition (the current state forbids the request)
   5  unauthenticated: log in again with `defenseclawctl auth login`
   8  audit verify: the chain is broken
   9  scan: a finding reached --fail-on
  10  step-up: the approver denied the change
  11  step-up: no answer before the deadline (the policy decided)
  12  step-up: the identity provider failed or refused
  13  step-up: cancelled
  14  skill install: the skill is blocked (by admission, or it already was)
  15  doctor: at least one check failed
  16  connection grant suspended: an operator resumes it (connections resume SERVER CONNECTION)
  20  auth login: denied at the identity provider
  21  auth login: the code expired before approval
  22  auth login: the device code was rejected (invalid_grant)
  23  identity provider unreachable
  24  identity provider error or invalid ID token
  25  session file unsafe (readable by others) or corrupted
  69  daemon unreachable (is defenseclawd running? check --socket)
  77  permission denied
 130  cancelled (Ctrl-C)";

/// A failure with its exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code, one of the constants above, so scripts can tell failures apart.
    pub code: u8,
    /// Message for stderr.
    pub message: String,
}

impl Failure {
    /// Builds a failure.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A write to stdout failed. A reader that went away (`| head -1`) is not a
    /// failure of the command: it ends quietly, with success.
    pub fn writing(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::new(OK, "")
        } else {
            Self::new(FAILURE, format!("writing output: {e}"))
        }
    }

    /// Maps a gRPC status to the exit code table.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => USAGE,
            Code::NotFound => NOT_FOUND,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => FAILED_PRECONDITION,
            Code::Unauthenticated => UNAUTHENTICATED,
            Code::PermissionDenied => PERMISSION_DENIED,
            Code::Unavailable => UNREACHABLE,
            _ => FAILURE,
        };
        let code = held_code(status).unwrap_or(code);
        Self::new(code, status.message().to_owned())
    }

    /// As a process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// The daemon's metadata naming why a connection grant was not served.
const HELD_METADATA: &str = "defenseclaw-held";

/// The exit code of a refused token request whose grant is held: suspended
/// (step-up off), or its approver denied, did not answer, or could not be asked.
fn held_code(status: &tonic::Status) -> Option<u8> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    match status.metadata().get(HELD_METADATA)?.to_str().ok()? {
        "grant-suspended" => Some(GRANT_SUSPENDED),
        "resume-denied" => Some(STEPUP_DENIED),
        "resume-timed-out" => Some(STEPUP_TIMED_OUT),
        "resume-error" => Some(STEPUP_ERROR),
        _ => None,
    }
}

impl From<crate::auth::AuthError> for Failure {
    fn from(e: crate::auth::AuthError) -> Self {
        Self::new(
            u8::try_from(e.exit_code()).unwrap_or(FAILURE),
            e.to_string(),
        )
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}
