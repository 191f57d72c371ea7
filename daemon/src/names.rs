//! The alphabet of every name the API accepts, in one place.
//!
//! A name is 1..=max ASCII bytes of letters, digits and a few separators, and
//! starts with a letter or a digit. So no name is `.` or `..`, starts with `-`
//! (an option to a tool) or `.` (a hidden file), or holds a control, bidi,
//! zero-width or line-separator character: what an operator reads in a table
//! or an approval prompt is what the daemon stores.
//!
//! | kind | separators besides letters and digits | longest |
//! |---|---|---|
//! | target (skill or MCP server) | `- _ . @ +` | 200 |
//! | MCP server (Token Vault) | `- _ . @ +` | 200 |
//! | connection (Auth0 connection) | `- _ .` | 128 |
//! | linked account id | `- _ . @ + \| : =` | 256 |
//! | scanner | `- _ . @ + :` | 128 |
//! | step-up request id | `- _` | 64 |

use crate::error::{Error, Result, quoted};

/// One kind of name: what it may hold and how long it may be.
#[derive(Debug, Clone, Copy)]
struct Alphabet {
    /// Separators allowed besides ASCII letters and digits (never first).
    separators: &'static str,
    /// Longest accepted name, in bytes (= characters: the alphabet is ASCII).
    max: usize,
}

const TARGET: Alphabet = Alphabet {
    separators: "-_.@+",
    max: 200,
};
const CONNECTION: Alphabet = Alphabet {
    separators: "-_.",
    max: 128,
};
const ACCOUNT: Alphabet = Alphabet {
    separators: "-_.@+|:=",
    max: 256,
};
const SCANNER: Alphabet = Alphabet {
    separators: "-_.@+:",
    max: 128,
};
const REQUEST_ID: Alphabet = Alphabet {
    separators: "-_",
    max: 64,
};

/// Longest accepted target name, in bytes.
pub const MAX_TARGET_NAME: usize = TARGET.max;

/// A skill or MCP server name as a target.
pub fn target_name(field: &'static str, name: &str) -> Result<()> {
    check(field, name, TARGET)
}

/// An MCP server named by a Token Vault call (the same alphabet as its target).
pub fn server_name(field: &'static str, name: &str) -> Result<()> {
    check(field, name, TARGET)
}

/// An Auth0 connection name (`github`, `google-oauth2`).
pub fn connection_name(field: &'static str, name: &str) -> Result<()> {
    check(field, name, CONNECTION)
}

/// The provider's id of a linked account (`cac_…`, `github|123`).
pub fn account_id(field: &'static str, id: &str) -> Result<()> {
    check(field, id, ACCOUNT)
}

/// The scanner a report comes from.
pub fn scanner_name(field: &'static str, name: &str) -> Result<()> {
    check(field, name, SCANNER)
}

/// A step-up request id (`DC-…`).
pub fn request_id(field: &'static str, id: &str) -> Result<()> {
    check(field, id, REQUEST_ID)
}

fn check(field: &'static str, name: &str, alphabet: Alphabet) -> Result<()> {
    let rule = || {
        format!(
            "must be 1-{} ASCII letters, digits or {}, starting with a letter or digit",
            alphabet.max,
            alphabet
                .separators
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    if name.is_empty() {
        return Err(Error::invalid(field, format!("is empty; {}", rule())));
    }
    if name.len() > alphabet.max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long; {}", name.len(), rule()),
        ));
    }
    for (i, c) in name.chars().enumerate() {
        let allowed = c.is_ascii_alphanumeric() || (i > 0 && alphabet.separators.contains(c));
        if !allowed {
            let what = if i == 0 && c.is_ascii() && alphabet.separators.contains(c) {
                format!("starts with {}", quoted(&c.to_string()))
            } else {
                format!("holds {} at character {}", quoted(&c.to_string()), i + 1)
            };
            return Err(Error::invalid(field, format!("{what}; {}", rule())));
        }
    }
    Ok(())
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
    fn hostile_names_are_refused_without_echo() {
        let huge = "x".repeat(1 << 20);
        for bad in [
            "",
            ".",
            "..",
            "-rf",
            ".hidden",
            "a/b",
            "a b",
            "a\0b",
            "a\nb",
            "evil\u{202e}gnp.exe",
            "zero\u{200b}width",
            "line\u{2028}sep",
            "caf\u{e9}",
            huge.as_str(),
        ] {
            for check in [target_name, server_name, connection_name, account_id] {
                let err = check("n", bad).expect_err(bad).to_string();
                assert!(err.len() < 200, "{err}");
                assert!(
                    !err.contains('\u{202e}') && !err.contains('\u{200b}'),
                    "{err}"
                );
            }
        }
    }
}
