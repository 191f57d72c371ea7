//! Integration tests for the scanner engine: one test binary, one module per area.
// A test crate: helpers outside #[test] fns may panic on setup failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adapters;
mod attacks;
mod flows;
mod instructions;
mod limits;
mod mcp;
mod rules;
mod sarif;
mod skills;

use std::path::Path;
use std::sync::OnceLock;

use defenseclaw_scanner::{Engine, ScanReport, Severity};

pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::builtin().expect("builtin rules compile"))
}

/// Writes `files` (relative path, content) under a new temporary directory.
pub fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, content) in files {
        write(dir.path(), rel, content);
    }
    dir
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, content).expect("write");
}

pub const FRONT: &str =
    "---\nname: demo-skill\ndescription: A demo skill for tests.\n---\n\n# Demo\n\n";

/// A skill with a SKILL.md made of the front matter plus `body`.
pub fn scan_md(body: &str) -> ScanReport {
    let md = format!("{FRONT}{body}\n");
    let dir = tree(&[("SKILL.md", md.as_bytes())]);
    engine().scan_skill(dir.path()).expect("scan")
}

pub fn scan_files(files: &[(&str, &str)]) -> ScanReport {
    let mut all: Vec<(&str, &[u8])> = vec![("SKILL.md", FRONT.as_bytes())];
    all.extend(files.iter().map(|(p, c)| (*p, c.as_bytes())));
    let dir = tree(&all);
    engine().scan_skill(dir.path()).expect("scan")
}

pub fn has(report: &ScanReport, rule: &str) -> bool {
    report.findings.iter().any(|f| f.rule_id == rule)
}

pub fn at_least(report: &ScanReport, s: Severity) -> bool {
    report.max_severity.is_some_and(|m| m >= s)
}

/// Report summary for assertion messages.
pub fn show(report: &ScanReport) -> String {
    report
        .findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {}:{} {}",
                f.severity, f.rule_id, f.location, f.line, f.snippet
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
