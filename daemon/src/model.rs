//! Domain types shared by the store, the RPC layer and the monitors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, quoted};

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// An agent skill.
    Skill,
    /// An MCP server.
    Mcp,
}

impl TargetKind {
    /// Stable lowercase name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skill => "skill",
            Self::Mcp => "mcp",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "skill" => Ok(Self::Skill),
            "mcp" => Ok(Self::Mcp),
            other => Err(Error::invalid(
                "target.kind",
                format!("{} is not skill or mcp", quoted(other)),
            )),
        }
    }
}

/// A target: kind plus validated name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// Whether it is a skill or an MCP server.
    pub kind: TargetKind,
    /// Name, validated by [`crate::names::target_name`].
    pub name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Longest accepted free-text reason, in bytes.
pub const MAX_REASON_BYTES: usize = 2000;

/// Free text (reasons, titles): bounded; no control characters except newline and tab.
pub fn validate_text(field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::invalid(field, format!("longer than {max} bytes")));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(field, "contains a control character"));
    }
    Ok(())
}

/// Finding severity, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Worth knowing; no risk by itself.
    Info = 1,
    /// A minor weakness.
    Low = 2,
    /// A weakness worth fixing.
    Medium = 3,
    /// Exploitable; by default changes on the target need a human approval.
    High = 4,
    /// Exploitable and severe; by default the daemon proposes a block.
    Critical = 5,
}

impl Severity {
    /// Uppercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }

    /// From the stored rank.
    pub fn from_rank(rank: i64) -> Option<Self> {
        Some(match rank {
            1 => Self::Info,
            2 => Self::Low,
            3 => Self::Medium,
            4 => Self::High,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

impl FromStr for Severity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "INFO" => Self::Info,
            "LOW" => Self::Low,
            "MEDIUM" => Self::Medium,
            "HIGH" => Self::High,
            "CRITICAL" => Self::Critical,
            other => {
                return Err(Error::invalid(
                    "severity",
                    format!("{} is not INFO|LOW|MEDIUM|HIGH|CRITICAL", quoted(other)),
                ));
            }
        })
    }
}

/// Enforcement state of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementState {
    /// Nobody decided: the target runs unless admission says otherwise.
    None,
    /// Blocked: enforcers keep it from running.
    Blocked,
    /// Allowed explicitly, whatever its findings.
    Allowed,
}

impl EnforcementState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Blocked => "blocked",
            Self::Allowed => "allowed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "blocked" => Self::Blocked,
            "allowed" => Self::Allowed,
            _ => return None,
        })
    }
}

/// A requested enforcement change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementAction {
    /// Keep the target from running.
    Block,
    /// Let the target run.
    Allow,
    /// Remove the decision.
    Unblock,
}

impl EnforcementAction {
    /// The state this action leads to.
    pub fn resulting_state(self) -> EnforcementState {
        match self {
            Self::Block => EnforcementState::Blocked,
            Self::Allow => EnforcementState::Allowed,
            Self::Unblock => EnforcementState::None,
        }
    }

    /// Audit action name.
    pub fn audit_action(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
            Self::Unblock => "unblock",
        }
    }
}

/// The current decision on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Blocked, allowed or undecided.
    pub state: EnforcementState,
    /// Why, in the decider's words.
    pub reason: String,
    /// Actor id of who decided.
    pub decided_by: String,
    /// RFC 3339, empty if never decided.
    pub decided_at: String,
}

impl Default for Decision {
    fn default() -> Self {
        Self {
            state: EnforcementState::None,
            reason: String::new(),
            decided_by: String::new(),
            decided_at: String::new(),
        }
    }
}

/// Who did something. Serialised field order is part of the audit hash: append
/// new fields at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Actor {
    /// Stable id: `uid:<n>` for local callers, the token `sub` for oidc, `system` for the daemon.
    pub id: String,
    /// Display name: user name or the operator's name.
    pub name: String,
    /// `local`, `oidc` or `system`.
    pub auth_method: String,
    /// Peer uid.
    pub uid: Option<u32>,
    /// Peer gid.
    pub gid: Option<u32>,
    /// Peer pid.
    pub pid: Option<u32>,
    /// Operator email (oidc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Token issuer (oidc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Client id the token was issued to (oidc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Actor {
    /// The daemon itself (start-up, monitors).
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            name: "defenseclawd".into(),
            auth_method: "system".into(),
            uid: defenseclaw_common::paths::current_uid(),
            gid: None,
            pid: Some(std::process::id()),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_parse_is_case_insensitive() {
        assert_eq!("high".parse::<Severity>().unwrap(), Severity::High);
        assert!("urgent".parse::<Severity>().is_err());
        assert!(Severity::Critical > Severity::High);
    }
}
