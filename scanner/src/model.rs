//! Finding and report types shared by the engine, the adapters and SARIF output.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Severity of a finding, ordered so that `Critical` is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE", try_from = "String")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = ScanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "INFO" => Ok(Severity::Info),
            "LOW" => Ok(Severity::Low),
            "MEDIUM" => Ok(Severity::Medium),
            "HIGH" => Ok(Severity::High),
            "CRITICAL" => Ok(Severity::Critical),
            other => Err(ScanError::InvalidSeverity(other.to_string())),
        }
    }
}

impl TryFrom<String> for Severity {
    type Error = ScanError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What was scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Skill,
    Mcp,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Skill => "skill",
            TargetKind::Mcp => "mcp",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding. `snippet` is short and has secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule_id: String,
    pub category: String,
    pub severity: Severity,
    pub title: String,
    pub description: String,
    /// File path relative to the scanned target (skills), or
    /// `file#mcpServers.<name>.<field>` (MCP definitions).
    pub location: String,
    /// 1-based line; 0 when the finding has no line.
    pub line: u32,
    pub snippet: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remediation: String,
}

/// The result of scanning one target (a skill folder or one MCP server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    pub path: String,
    pub kind: TargetKind,
    pub name: String,
    pub max_severity: Option<Severity>,
    pub findings: Vec<Finding>,
    pub duration_ms: f64,
    /// Things the scanner skipped or could not read (binary files, size
    /// limits, symlinks out of the root); never silently dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why the scan did not read the whole target (a limit it stopped at);
    /// such a report also carries a HIGH `DC-SK-003` finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

impl ScanReport {
    pub fn new(path: impl Into<String>, kind: TargetKind, name: impl Into<String>) -> Self {
        ScanReport {
            path: path.into(),
            kind,
            name: name.into(),
            max_severity: None,
            findings: Vec::new(),
            duration_ms: 0.0,
            notes: Vec::new(),
            incomplete: None,
        }
    }

    /// Sorts findings (most severe first) and recomputes `max_severity`.
    pub fn finalize(&mut self) {
        self.findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.location.cmp(&b.location))
                .then_with(|| a.line.cmp(&b.line))
                .then_with(|| a.rule_id.cmp(&b.rule_id))
        });
        self.max_severity = self.findings.iter().map(|f| f.severity).max();
    }

    /// True when some finding is at or above `threshold`.
    pub fn reaches(&self, threshold: Severity) -> bool {
        self.max_severity.is_some_and(|s| s >= threshold)
    }
}

/// Errors of the scanner crate.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("invalid severity {0:?} (expected INFO, LOW, MEDIUM, HIGH or CRITICAL)")]
    InvalidSeverity(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rule file {path}: {message}")]
    RuleFile { path: String, message: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{path} is a {found}, not a {expected}")]
    WrongFileType {
        path: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{path} is {size} bytes, more than the {max}-byte limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("MCP config {path}: {message}")]
    McpConfig { path: String, message: String },
    #[error("MCP server {0:?} not found in the config")]
    McpServerNotFound(String),
    #[error("adapter {adapter}: {message}")]
    Adapter { adapter: String, message: String },
    #[error("adapter {adapter}: executable {path} not found or not runnable: {message}")]
    AdapterMissing {
        adapter: String,
        path: String,
        message: String,
    },
    #[error("adapter {adapter}: timed out after {seconds} s and was killed")]
    AdapterTimeout { adapter: String, seconds: u64 },
}

impl ScanError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ScanError::Io {
            path: shown(path),
            source,
        }
    }
}

/// Longest path shown in a message, in characters.
const SHOWN_PATH_MAX: usize = 160;

/// A path for a message: at most 160 characters, with control, bidi and
/// zero-width characters escaped (paths come from callers and from the tree).
pub fn shown(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_PATH_MAX {
            out.push('…');
            break;
        }
        let hidden = c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
        if hidden {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}
