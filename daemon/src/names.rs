//! The daemon's side of the name rules in [`defenseclaw_common::names`]: the
//! same checks, refused as the daemon's invalid-argument error with its
//! display-safe quoting.

use defenseclaw_common::names::{self as rule, NameError};

use crate::error::{Error, Result, quoted};

pub use defenseclaw_common::names::MAX_TARGET_NAME;

fn refused(e: NameError) -> Error {
    Error::invalid(e.field, e.reason_with(quoted))
}

/// A skill or MCP server name as a target.
pub fn target_name(field: &'static str, name: &str) -> Result<()> {
    rule::target_name(field, name).map_err(refused)
}

/// An MCP server named by a Token Vault call (the same alphabet as its target).
pub fn server_name(field: &'static str, name: &str) -> Result<()> {
    rule::server_name(field, name).map_err(refused)
}

/// An Auth0 connection name (`github`, `google-oauth2`).
pub fn connection_name(field: &'static str, name: &str) -> Result<()> {
    rule::connection_name(field, name).map_err(refused)
}

/// The provider's id of a linked account (`cac_…`, `github|123`).
pub fn account_id(field: &'static str, id: &str) -> Result<()> {
    rule::account_id(field, id).map_err(refused)
}

/// The scanner a report comes from.
pub fn scanner_name(field: &'static str, name: &str) -> Result<()> {
    rule::scanner_name(field, name).map_err(refused)
}

/// A step-up request id (`DC-…`).
pub fn request_id(field: &'static str, id: &str) -> Result<()> {
    rule::request_id(field, id).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legitimate_names_pass() {
        for ok in ["evil-skill_1.0", "github", "my.server@2", "a", "1password"] {
            assert!(target_name("n", ok).is_ok(), "{ok}");
        }
        for ok in ["github", "google-oauth2", "sms"] {
            assert!(connection_name("c", ok).is_ok(), "{ok}");
        }
        for ok in ["cac_0123abcd", "github|12345", "google-oauth2|1@x.y"] {
            assert!(account_id("a", ok).is_ok(), "{ok}");
        }
        assert!(request_id("id", "DC-00ff00ff00ff00ff").is_ok());
        assert!(scanner_name("s", "defenseclaw").is_ok());
    }

    #[test]
    fn refusals_are_invalid_arguments_of_the_field() {
        match target_name("target.name", "-rf") {
            Err(Error::InvalidArgument { field, reason }) => {
                assert_eq!(field, "target.name");
                assert!(reason.starts_with("starts with \"-\";"), "{reason}");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}
