//! The alphabet of every name the API accepts, in one place.
//!
//! A name is 1..=max ASCII bytes of letters, digits and a few separators, and
//! starts with a letter or a digit. So no name is `.` or `..`, starts with `-`
//! (an option to a tool) or `.` (a hidden file), or holds a control, bidi,
//! zero-width or line-separator character: what an operator reads in a table
//! or an approval prompt is what the daemon stores. The CLI checks the same
//! rule before it sends a name, so both sides refuse the same input.
//!
//! | kind | separators besides letters and digits | longest |
//! |---|---|---|
//! | target (skill or MCP server) | `- _ . @ +` | 200 |
//! | MCP server (Token Vault) | `- _ . @ +` | 200 |
//! | connection (Auth0 connection) | `- _ .` | 128 |
//! | linked account id | `- _ . @ + \| : =` | 256 |
//! | scanner | `- _ . @ + :` | 128 |
//! | step-up request id | `- _` | 64 |

use std::fmt;

/// One kind of name: what it may hold and how long it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alphabet {
    /// Separators allowed besides ASCII letters and digits (never first).
    separators: &'static str,
    /// Longest accepted name, in bytes (= characters: the alphabet is ASCII).
    max: usize,
}

impl Alphabet {
    /// The longest accepted name, in bytes.
    pub const fn max(self) -> usize {
        self.max
    }

    /// The rule in words, for error messages.
    pub fn describe(self) -> String {
        format!(
            "must be 1-{} ASCII letters, digits or {}, starting with a letter or digit",
            self.max,
            self.separators
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// Skill and MCP server names, as targets and as Token Vault servers.
pub const TARGET: Alphabet = Alphabet {
    separators: "-_.@+",
    max: 200,
};
/// Auth0 connection names (`github`, `google-oauth2`).
pub const CONNECTION: Alphabet = Alphabet {
    separators: "-_.",
    max: 128,
};
/// A provider's id of a linked account (`cac_…`, `github|123`).
pub const ACCOUNT: Alphabet = Alphabet {
    separators: "-_.@+|:=",
    max: 256,
};
/// The scanner a report comes from.
pub const SCANNER: Alphabet = Alphabet {
    separators: "-_.@+:",
    max: 128,
};
/// Step-up request ids (`DC-…`).
pub const REQUEST_ID: Alphabet = Alphabet {
    separators: "-_",
    max: 64,
};

/// Longest accepted target name, in bytes.
pub const MAX_TARGET_NAME: usize = TARGET.max;

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The name is empty.
    Empty,
    /// The name is longer than the alphabet allows (its length in bytes).
    TooLong(usize),
    /// The name starts with a separator that is allowed only later.
    BadStart(char),
    /// The name holds a character outside the alphabet (1-based position).
    BadChar(char, usize),
}

/// A name refused by its alphabet. It never holds the name itself, only the
/// offending character, so a hostile or huge name is not echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The request field or argument that held the name.
    pub field: &'static str,
    /// What is wrong.
    pub fault: Fault,
    /// The alphabet the name had to fit.
    pub alphabet: Alphabet,
}

impl NameError {
    /// The reason in words, quoting the offending character with `quote` (the
    /// daemon passes its display-safe quoting so messages match its others).
    pub fn reason_with(&self, quote: impl Fn(&str) -> String) -> String {
        let rule = self.alphabet.describe();
        match &self.fault {
            Fault::Empty => format!("is empty; {rule}"),
            Fault::TooLong(len) => format!("is {len} bytes long; {rule}"),
            Fault::BadStart(c) => format!("starts with {}; {rule}", quote(&c.to_string())),
            Fault::BadChar(c, at) => {
                format!("holds {} at character {at}; {rule}", quote(&c.to_string()))
            }
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` escapes controls and invisible characters.
        let reason = self.reason_with(|s| format!("{s:?}"));
        write!(f, "{} {reason}", self.field)
    }
}

impl std::error::Error for NameError {}

/// Checks `name` (from `field`) against `alphabet`.
pub fn check(field: &'static str, name: &str, alphabet: Alphabet) -> Result<(), NameError> {
    let refuse = |fault| {
        Err(NameError {
            field,
            fault,
            alphabet,
        })
    };
    if name.is_empty() {
        return refuse(Fault::Empty);
    }
    if name.len() > alphabet.max {
        return refuse(Fault::TooLong(name.len()));
    }
    for (i, c) in name.chars().enumerate() {
        let allowed = c.is_ascii_alphanumeric() || (i > 0 && alphabet.separators.contains(c));
        if !allowed {
            if i == 0 && c.is_ascii() && alphabet.separators.contains(c) {
                return refuse(Fault::BadStart(c));
            }
            return refuse(Fault::BadChar(c, i + 1));
        }
    }
    Ok(())
}

/// A skill or MCP server name as a target.
pub fn target_name(field: &'static str, name: &str) -> Result<(), NameError> {
    check(field, name, TARGET)
}

/// An MCP server named by a Token Vault call (the same alphabet as its target).
pub fn server_name(field: &'static str, name: &str) -> Result<(), NameError> {
    check(field, name, TARGET)
}

/// An Auth0 connection name (`github`, `google-oauth2`).
pub fn connection_name(field: &'static str, name: &str) -> Result<(), NameError> {
    check(field, name, CONNECTION)
}

/// The provider's id of a linked account (`cac_…`, `github|123`).
pub fn account_id(field: &'static str, id: &str) -> Result<(), NameError> {
    check(field, id, ACCOUNT)
}

/// The scanner a report comes from.
pub fn scanner_name(field: &'static str, name: &str) -> Result<(), NameError> {
    check(field, name, SCANNER)
}

/// A step-up request id (`DC-…`).
pub fn request_id(field: &'static str, id: &str) -> Result<(), NameError> {
    check(field, id, REQUEST_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legitimate_names_pass() {
        for ok in ["evil-skill_1.0", "github", "my.server@2", "a", "1password"] {
            assert!(target_name("n", ok).is_ok(), "{ok}");
        }
        for ok in ["github", "google-oauth2", "sms", "my.conn_1"] {
            assert!(connection_name("c", ok).is_ok(), "{ok}");
        }
        for ok in ["cac_0123abcd", "github|12345", "google-oauth2|1@x.y"] {
            assert!(account_id("a", ok).is_ok(), "{ok}");
        }
        assert!(request_id("id", "DC-00ff00ff00ff00ff").is_ok());
        assert!(scanner_name("s", "defenseclaw").is_ok());
        assert!(target_name("n", &"x".repeat(MAX_TARGET_NAME)).is_ok());
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

    #[test]
    fn faults_say_what_is_wrong() {
        let e = connection_name("connection", "").unwrap_err();
        assert_eq!(e.fault, Fault::Empty);
        let e = connection_name("connection", &"x".repeat(129)).unwrap_err();
        assert_eq!(e.fault, Fault::TooLong(129));
        let e = connection_name("connection", "-x").unwrap_err();
        assert_eq!(e.fault, Fault::BadStart('-'));
        let e = connection_name("connection", "a@b").unwrap_err();
        assert_eq!(e.fault, Fault::BadChar('@', 2));
        assert_eq!(
            e.to_string(),
            "connection holds \"@\" at character 2; must be 1-128 ASCII letters, digits or - _ ., starting with a letter or digit"
        );
    }

    #[test]
    fn alphabets_differ_only_where_documented() {
        assert!(target_name("n", "a@b").is_ok());
        assert!(connection_name("n", "a@b").is_err());
        assert!(account_id("n", "github|1").is_ok());
        assert!(scanner_name("n", "x:y").is_ok());
        assert!(request_id("n", "a.b").is_err());
    }
}
