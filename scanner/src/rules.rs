//! Rule files: a versioned TOML format, loaded from the crate's embedded
//! rules and from extra directories.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::instructions::InstructionModel;
use crate::model::{ScanError, Severity};

/// The rule file format version this crate reads.
pub const RULE_FORMAT_VERSION: u32 = 1;

/// Rule files shipped with the crate.
pub(crate) const BUILTIN_RULE_FILES: &[(&str, &str)] = &[
    (
        "command_injection.toml",
        include_str!("../rules/command_injection.toml"),
    ),
    (
        "reverse_shell.toml",
        include_str!("../rules/reverse_shell.toml"),
    ),
    (
        "credential_access.toml",
        include_str!("../rules/credential_access.toml"),
    ),
    (
        "data_exfiltration.toml",
        include_str!("../rules/data_exfiltration.toml"),
    ),
    (
        "obfuscation.toml",
        include_str!("../rules/obfuscation.toml"),
    ),
    (
        "prompt_injection.toml",
        include_str!("../rules/prompt_injection.toml"),
    ),
    (
        "persistence.toml",
        include_str!("../rules/persistence.toml"),
    ),
    (
        "privilege_escalation.toml",
        include_str!("../rules/privilege_escalation.toml"),
    ),
    (
        "destructive.toml",
        include_str!("../rules/destructive.toml"),
    ),
    (
        "hardcoded_secret.toml",
        include_str!("../rules/hardcoded_secret.toml"),
    ),
    (
        "supply_chain.toml",
        include_str!("../rules/supply_chain.toml"),
    ),
    (
        "resource_abuse.toml",
        include_str!("../rules/resource_abuse.toml"),
    ),
    ("mcp.toml", include_str!("../rules/mcp.toml")),
    ("flows.toml", include_str!("../rules/flows.toml")),
    (
        "instructions.toml",
        include_str!("../rules/instructions.toml"),
    ),
];

/// File types a content rule can be scoped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// SKILL.md and other Markdown; MCP descriptions and tool descriptions.
    Markdown,
    /// Shell scripts; MCP command lines.
    Shell,
    Python,
    /// JavaScript / TypeScript.
    Javascript,
    /// Other source code (Ruby, Perl, PHP, PowerShell, Go, ...).
    Code,
    /// JSON, YAML, TOML, INI, .env.
    Config,
    /// Plain text and anything else that decodes as text.
    Text,
}

impl FileType {
    pub const ALL: [FileType; 7] = [
        FileType::Markdown,
        FileType::Shell,
        FileType::Python,
        FileType::Javascript,
        FileType::Code,
        FileType::Config,
        FileType::Text,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            FileType::Markdown => 0,
            FileType::Shell => 1,
            FileType::Python => 2,
            FileType::Javascript => 3,
            FileType::Code => 4,
            FileType::Config => 5,
            FileType::Text => 6,
        }
    }

    /// Guesses the type from the file name, then from a shebang line.
    pub fn detect(path: &Path, head: &[u8]) -> FileType {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name == ".env"
            || name.starts_with(".env.")
            || name.ends_with("rc") && name.starts_with('.')
        {
            return FileType::Config;
        }
        match ext.as_str() {
            "md" | "markdown" | "mdx" | "rst" => FileType::Markdown,
            "sh" | "bash" | "zsh" | "ksh" | "fish" | "command" => FileType::Shell,
            "py" | "pyw" | "pyi" => FileType::Python,
            "js" | "mjs" | "cjs" | "ts" | "mts" | "cts" | "jsx" | "tsx" => FileType::Javascript,
            "rb" | "pl" | "pm" | "php" | "ps1" | "psm1" | "bat" | "cmd" | "go" | "rs" | "java"
            | "kt" | "lua" | "r" | "swift" | "c" | "h" | "cpp" | "cs" | "vbs" => FileType::Code,
            "json" | "jsonc" | "yaml" | "yml" | "toml" | "ini" | "cfg" | "conf" | "env"
            | "properties" | "xml" | "plist" => FileType::Config,
            _ => {
                if let Some(rest) = head.strip_prefix(b"#!") {
                    let line: Vec<u8> = rest.iter().take_while(|b| **b != b'\n').copied().collect();
                    let line = String::from_utf8_lossy(&line);
                    if line.contains("python") {
                        return FileType::Python;
                    }
                    if line.contains("node") || line.contains("deno") || line.contains("bun") {
                        return FileType::Javascript;
                    }
                    if line.contains("sh") {
                        return FileType::Shell;
                    }
                    return FileType::Code;
                }
                FileType::Text
            }
        }
    }
}

/// Where a rule's `requires` context is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextScope {
    /// The same file (or the same MCP text field).
    #[default]
    File,
    /// Any file of the skill (or any field of the MCP server).
    Target,
}

/// Which targets a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppliesTo {
    #[default]
    Any,
    Skill,
    Mcp,
}

/// One rule. Content rules have `patterns`; structural rules name a built-in
/// `check`. Both take their id, severity and wording from the rule file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub severity: Severity,
    pub title: String,
    pub description: String,
    #[serde(default)]
    pub remediation: String,
    /// File types the content patterns apply to; empty means every text type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_types: Vec<FileType>,
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// A finding is reported at each match of any of these regexes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Every one of these regexes must also match within `requires_scope`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    #[serde(default)]
    pub requires_scope: ContextScope,
    /// The rule is suppressed in a file where any of these match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unless: Vec<String>,
    /// A match whose own text matches one of these is dropped (placeholders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_match: Vec<String>,
    /// In a skill's Markdown, a match that documents the behaviour rather
    /// than instructs it (negated, in a describing sentence, or quoted or
    /// fenced as an example: see `prose.rs`) is reported at LOW.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prose_aware: bool,
    /// Patterns are case-insensitive unless this is set.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Name of a built-in structural check (see `checks::KNOWN_CHECKS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// At most this many findings per file for this rule.
    #[serde(default = "default_max_matches")]
    pub max_matches: usize,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_max_matches() -> usize {
    3
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileDoc {
    version: u32,
    #[serde(default)]
    rule: Vec<Rule>,
}

/// Parses and checks one rule file's text; `origin` names it in errors.
pub fn parse_rule_file(text: &str, origin: &str) -> Result<Vec<Rule>, ScanError> {
    parse_rules(text, origin, true)
}

/// `compile_regexes` is off for the embedded rules: the engine's set
/// compilation checks them, and compiling each twice doubles start-up.
fn parse_rules(text: &str, origin: &str, compile_regexes: bool) -> Result<Vec<Rule>, ScanError> {
    let err = |message: String| ScanError::RuleFile {
        path: origin.to_string(),
        message,
    };
    let doc: RuleFileDoc = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    if doc.version != RULE_FORMAT_VERSION {
        return Err(err(format!(
            "unsupported rule format version {} (this scanner reads version {RULE_FORMAT_VERSION})",
            doc.version
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for rule in &doc.rule {
        check_rule(rule, compile_regexes).map_err(|m| err(format!("rule {:?}: {m}", rule.id)))?;
        if !seen.insert(rule.id.clone()) {
            return Err(err(format!("duplicate rule id {:?}", rule.id)));
        }
    }
    Ok(doc.rule)
}

fn check_rule(rule: &Rule, compile_regexes: bool) -> Result<(), String> {
    if rule.id.trim().is_empty() {
        return Err("empty id".into());
    }
    if rule.category.trim().is_empty() || rule.title.trim().is_empty() {
        return Err("category and title are required".into());
    }
    match (&rule.check, rule.patterns.is_empty()) {
        (Some(_), false) => return Err("a rule has either `patterns` or `check`, not both".into()),
        (None, true) => return Err("a rule needs `patterns` or `check`".into()),
        (Some(name), true) => {
            if !crate::checks::KNOWN_CHECKS.contains(&name.as_str()) {
                return Err(format!(
                    "unknown check {name:?}; known checks: {}",
                    crate::checks::KNOWN_CHECKS.join(", ")
                ));
            }
        }
        (None, false) => {}
    }
    if rule.max_matches == 0 {
        return Err("max_matches must be at least 1".into());
    }
    if !compile_regexes {
        return Ok(());
    }
    for p in rule
        .patterns
        .iter()
        .chain(&rule.requires)
        .chain(&rule.unless)
        .chain(&rule.exclude_match)
    {
        regex::bytes::RegexBuilder::new(&pattern_source(p, rule.case_sensitive))
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| format!("bad regex {p:?}: {e}"))?;
    }
    Ok(())
}

/// The regex source as compiled: multi-line anchors, case-insensitive by default.
pub(crate) fn pattern_source(p: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        format!("(?m){p}")
    } else {
        format!("(?mi){p}")
    }
}

/// Checks a rule file (or an instruction weights file) and returns how many
/// rules (features) it holds.
pub fn validate_rule_file(path: &Path) -> Result<usize, ScanError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScanError::io(path, e))?;
    if is_weights_file(&text) {
        let model = InstructionModel::parse(&text, &path.display().to_string())?;
        return Ok(model.features.len());
    }
    let rules = parse_rule_file(&text, &path.display().to_string())?;
    Ok(rules.len())
}

/// An instruction weights file (`[score]` and `[[feature]]`), not a rule file.
fn is_weights_file(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .is_ok_and(|t| t.contains_key("feature") || t.contains_key("score"))
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ScanError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ScanError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The last instruction weights file in `dirs`, if any: it replaces the
/// built-in weights as a whole.
pub fn load_instruction_model(dirs: &[PathBuf]) -> Result<Option<InstructionModel>, ScanError> {
    let mut model = None;
    for dir in dirs {
        for file in toml_files(dir)? {
            let text = std::fs::read_to_string(&file).map_err(|e| ScanError::io(&file, e))?;
            if is_weights_file(&text) {
                model = Some(InstructionModel::parse(&text, &file.display().to_string())?);
            }
        }
    }
    Ok(model)
}

/// The rules embedded in the crate.
pub fn builtin_rules() -> Result<Vec<Rule>, ScanError> {
    let mut all = Vec::new();
    for (name, text) in BUILTIN_RULE_FILES {
        all.extend(parse_rules(text, &format!("builtin:{name}"), false)?);
    }
    Ok(all)
}

/// Builtin rules plus every `*.toml` in `dirs` (sorted by name); a rule
/// with an id already loaded replaces the earlier one, so a directory can
/// retune or disable a built-in rule.
pub fn load_rules(dirs: &[PathBuf]) -> Result<Vec<Rule>, ScanError> {
    let mut rules = builtin_rules()?;
    for dir in dirs {
        for file in toml_files(dir)? {
            let text = std::fs::read_to_string(&file).map_err(|e| ScanError::io(&file, e))?;
            if is_weights_file(&text) {
                continue;
            }
            for rule in parse_rule_file(&text, &file.display().to_string())? {
                if let Some(slot) = rules.iter_mut().find(|r| r.id == rule.id) {
                    *slot = rule;
                } else {
                    rules.push(rule);
                }
            }
        }
    }
    Ok(rules)
}
