//! Built-in scanner for agent skills and MCP server definitions.
//!
//! Rules are data (TOML files under `rules/`, embedded at build time and
//! loadable from extra directories). Scanning is pure reading: nothing from
//! the target is executed, no symlink is followed, only regular files are
//! read, and file sizes, counts, entries, depth and time are bounded (a scan
//! stopped at a bound says so: see `walk`).

pub mod adapters;
mod checks;
mod engine;
mod flows;
pub mod instructions;
mod literals;
pub mod llm;
mod mcp;
mod model;
mod prose;
mod redact;
pub mod rules;
pub mod sarif;
mod walk;

pub use checks::KNOWN_CHECKS;
pub use engine::Engine;
pub use model::{Finding, ScanError, ScanReport, Severity, TargetKind, shown};
pub use redact::redact;
pub use rules::{FileType, RULE_FORMAT_VERSION, Rule, validate_rule_file};
pub use walk::Limits;

/// Checks, without blocking and without following a symlink, that `path` is a
/// folder the scanner would open as a skill. Callers use it to refuse FIFOs,
/// sockets and links before any other work (naming, auditing, queueing).
pub fn check_skill_folder(path: &std::path::Path) -> Result<(), ScanError> {
    walk::open_root(path).map(drop)
}
