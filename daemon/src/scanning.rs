//! Scanning inside the daemon: the built-in engine plus the optional Cisco
//! adapters, the admission policy, and the watcher that rescans skills when
//! they change on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use defenseclaw_scanner::adapters::{AdapterConfig, SkillScannerAdapter};
use defenseclaw_scanner::{Engine, ScanReport};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, quoted};
use crate::model::{Severity, Target, TargetKind};
use crate::store::NewFinding;

/// Name the built-in scanner's findings are stored under.
pub const BUILTIN_SCANNER: &str = "defenseclaw";
/// Name the Cisco skill scanner's findings are stored under.
pub const CISCO_SKILL_SCANNER: &str = "cisco-ai-skill-scanner";

/// `[scanner]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerSettings {
    /// Extra rule directories (TOML rule files) added to the built-in rules.
    #[serde(deserialize_with = "crate::config::path_list")]
    pub rule_dirs: Vec<PathBuf>,
    /// Skill directories to watch: each subfolder is a skill, rescanned when it changes.
    #[serde(deserialize_with = "crate::config::path_list")]
    pub watch_dirs: Vec<PathBuf>,
    /// Quiet time after the last change before a rescan, in milliseconds.
    pub watch_debounce_ms: u64,
    /// The Cisco `skill-scanner` adapter (`cisco-ai-skill-scanner` from PyPI).
    pub cisco_skill_scanner: AdapterSettings,
}

impl Default for ScannerSettings {
    fn default() -> Self {
        Self {
            rule_dirs: Vec::new(),
            watch_dirs: Vec::new(),
            watch_debounce_ms: 500,
            cisco_skill_scanner: AdapterSettings {
                enabled: false,
                path: PathBuf::from("skill-scanner"),
                timeout_secs: 120,
            },
        }
    }
}

/// An external scanner run as a subprocess.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSettings {
    /// Run it (only when installed).
    pub enabled: bool,
    /// Executable name or path.
    pub path: PathBuf,
    /// Kill it after this many seconds.
    pub timeout_secs: u64,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        ScannerSettings::default().cisco_skill_scanner
    }
}

/// `[admission]`: what a scan decides (defaults from upstream's `skill_actions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSettings {
    /// Skills with a finding at or above this are blocked.
    pub block_at: Severity,
    /// MCP servers with a finding at or above this are blocked (stricter by default).
    pub mcp_block_at: Severity,
    /// Targets (`skill/NAME`, `mcp/NAME`) admitted without scanning.
    #[serde(deserialize_with = "crate::config::string_list")]
    pub allow_list: Vec<String>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            block_at: Severity::High,
            mcp_block_at: Severity::Medium,
            allow_list: Vec::new(),
        }
    }
}

impl AdmissionSettings {
    /// The blocking threshold for a kind.
    pub fn threshold(&self, kind: TargetKind) -> Severity {
        match kind {
            TargetKind::Skill => self.block_at,
            TargetKind::Mcp => self.mcp_block_at,
        }
    }

    /// Whether the target bypasses scanning.
    pub fn allow_listed(&self, target: &Target) -> bool {
        self.allow_list.iter().any(|e| *e == target.to_string())
    }
}

/// One scanned target with what each scanner found.
#[derive(Debug)]
pub struct Scanned {
    /// Built-in report (path, name, notes, timing).
    pub report: ScanReport,
    /// Findings per scanner name.
    pub by_scanner: Vec<(String, Vec<NewFinding>)>,
    /// Scanners that failed.
    pub errors: Vec<String>,
}

/// The scanners the daemon runs.
pub struct Scanners {
    engine: Engine,
    skill_adapter: Option<SkillScannerAdapter>,
}

impl std::fmt::Debug for Scanners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanners")
            .field("rules", &self.engine.rules().len())
            .finish_non_exhaustive()
    }
}

fn severity(s: defenseclaw_scanner::Severity) -> Severity {
    match s {
        defenseclaw_scanner::Severity::Info => Severity::Info,
        defenseclaw_scanner::Severity::Low => Severity::Low,
        defenseclaw_scanner::Severity::Medium => Severity::Medium,
        defenseclaw_scanner::Severity::High => Severity::High,
        defenseclaw_scanner::Severity::Critical => Severity::Critical,
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn findings(report: &ScanReport) -> Vec<NewFinding> {
    report
        .findings
        .iter()
        .map(|f| NewFinding {
            rule_id: clip(&f.rule_id, 256),
            severity: severity(f.severity),
            title: clip(&f.title, 1024),
            description: clip(&f.description, 16 * 1024),
            location: clip(&f.location, 4096),
            line: f.line,
            category: clip(&f.category, 256),
            snippet: clip(&f.snippet, 2048),
        })
        .collect()
}

impl Scanners {
    /// Loads the rules (built-in plus `rule_dirs`) and the enabled adapters.
    pub fn new(settings: &ScannerSettings) -> std::result::Result<Self, String> {
        let engine = if settings.rule_dirs.is_empty() {
            Engine::builtin()
        } else {
            Engine::load(&settings.rule_dirs)
        }
        .map_err(|e| format!("[scanner] rules: {e}"))?;
        let skill_adapter = settings.cisco_skill_scanner.enabled.then(|| {
            SkillScannerAdapter::new(AdapterConfig::new(
                settings.cisco_skill_scanner.path.clone(),
                Duration::from_secs(settings.cisco_skill_scanner.timeout_secs),
            ))
        });
        Ok(Self {
            engine,
            skill_adapter,
        })
    }

    /// Scans a skill folder with every scanner. Blocking.
    pub fn scan_skill(&self, dir: &Path) -> Result<Scanned> {
        let report = self.engine.scan_skill(dir).map_err(|e| {
            Error::invalid("path", format!("{}: {e}", quoted(&dir.to_string_lossy())))
        })?;
        let mut by_scanner = vec![(BUILTIN_SCANNER.to_owned(), findings(&report))];
        let mut errors = Vec::new();
        if let Some(adapter) = &self.skill_adapter {
            match adapter.scan_skill(dir) {
                Ok(r) => by_scanner.push((CISCO_SKILL_SCANNER.to_owned(), findings(&r))),
                Err(e) => errors.push(format!("{CISCO_SKILL_SCANNER}: {e}")),
            }
        }
        Ok(Scanned {
            report,
            by_scanner,
            errors,
        })
    }

    /// Scans the MCP servers of a config file. Blocking.
    pub fn scan_mcp(&self, file: &Path, server: Option<&str>) -> Result<Vec<Scanned>> {
        let reports = self.engine.scan_mcp_file(file, server).map_err(|e| {
            Error::invalid("path", format!("{}: {e}", quoted(&file.to_string_lossy())))
        })?;
        if let Some(name) = server
            && reports.is_empty()
        {
            return Err(Error::NotFound(format!(
                "MCP server {} in {}",
                quoted(name),
                quoted(&file.to_string_lossy())
            )));
        }
        Ok(reports
            .into_iter()
            .map(|report| Scanned {
                by_scanner: vec![(BUILTIN_SCANNER.to_owned(), findings(&report))],
                report,
                errors: Vec::new(),
            })
            .collect())
    }
}

/// Collects file-system events under the watched skill directories and yields
/// each changed skill folder once it has been quiet for the debounce time.
pub struct SkillWatcher {
    _watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    roots: Vec<PathBuf>,
    debounce: Duration,
}

impl std::fmt::Debug for SkillWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillWatcher")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl SkillWatcher {
    /// Watches `roots` recursively.
    pub fn new(roots: &[PathBuf], debounce: Duration) -> std::result::Result<Self, String> {
        use notify::Watcher;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })
        .map_err(|e| format!("[scanner] watch: {e}"))?;
        let mut canonical = Vec::new();
        for root in roots {
            let root = std::fs::canonicalize(root)
                .map_err(|e| format!("[scanner] watch_dirs {}: {e}", root.display()))?;
            watcher
                .watch(&root, notify::RecursiveMode::Recursive)
                .map_err(|e| format!("[scanner] watch {}: {e}", root.display()))?;
            canonical.push(root);
        }
        Ok(Self {
            _watcher: watcher,
            events,
            roots: canonical,
            debounce,
        })
    }

    /// The skill folder (direct child of a root) a changed path belongs to.
    fn skill_of(&self, path: &Path) -> Option<PathBuf> {
        self.roots.iter().find_map(|root| {
            let rel = path.strip_prefix(root).ok()?;
            let first = rel.components().next()?;
            Some(root.join(first))
        })
    }

    /// Runs until the event source closes, calling `rescan` for each quiet changed skill.
    pub async fn run<F, Fut>(mut self, cancel: tokio_util::sync::CancellationToken, rescan: F)
    where
        F: Fn(PathBuf) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut dirty: HashMap<PathBuf, Instant> = HashMap::new();
        let tick = self.debounce.max(Duration::from_millis(50)) / 2;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                event = self.events.recv() => match event {
                    Some(path) => {
                        if let Some(skill) = self.skill_of(&path) {
                            dirty.insert(skill, Instant::now());
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep(tick), if !dirty.is_empty() => {
                    let due: Vec<PathBuf> = dirty
                        .iter()
                        .filter(|(_, at)| at.elapsed() >= self.debounce)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for skill in due {
                        dirty.remove(&skill);
                        if skill.is_dir() {
                            rescan(skill).await;
                        }
                    }
                }
            }
        }
    }
}

/// Shared scanning state for the control service.
#[derive(Debug)]
pub struct ScanService {
    /// Scanners.
    pub scanners: Arc<Scanners>,
    /// Policy.
    pub admission: AdmissionSettings,
}
