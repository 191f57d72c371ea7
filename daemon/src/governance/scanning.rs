//! Scanning inside the daemon: the built-in engine plus the optional Cisco
//! adapters, the admission policy, and the watcher that rescans skills when
//! they change on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use defenseclaw_scanner::adapters::{AdapterConfig, SkillScannerAdapter};
use defenseclaw_scanner::llm::ReviewInput;
use defenseclaw_scanner::{Engine, Finding, ScanReport};

use crate::config::governance::{AdmissionSettings, ScannerSettings};
use crate::error::{Error, Result, quoted};
use crate::llm::LlmReviewer;
use crate::model::Severity;
use crate::store::{Audit, NewFinding, Store};

/// Why the scanners or the skill watcher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScannerSetupError {
    /// The rules (built-in or from `rule_dirs`) did not load.
    #[error("[scanner] rules: {0}")]
    Rules(#[source] defenseclaw_scanner::ScanError),
    /// A watched directory could not be resolved.
    #[error("[scanner] watch_dirs {}: {source}", dir.display())]
    WatchDir {
        /// The directory as configured.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file watcher could not start.
    #[error("[scanner] watch: {0}")]
    Watcher(#[source] notify::Error),
    /// A directory could not be watched.
    #[error("[scanner] watch {}: {source}", dir.display())]
    Watch {
        /// The resolved directory.
        dir: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

/// Name the built-in scanner's findings are stored under.
pub const BUILTIN_SCANNER: &str = "defenseclaw";
/// Name the Cisco skill scanner's findings are stored under.
pub const CISCO_SKILL_SCANNER: &str = "cisco-ai-skill-scanner";
/// Name the LLM analyzer's verdicts are stored under.
pub const LLM_ANALYZER: &str = "llm-analyzer";

/// One scanned target with what each scanner found.
#[derive(Debug)]
pub struct Scanned {
    /// Built-in report (path, name, notes, timing).
    pub report: ScanReport,
    /// Findings per scanner name.
    pub by_scanner: Vec<(String, Vec<NewFinding>)>,
    /// Scanners that failed.
    pub errors: Vec<String>,
    /// The skill's text for the LLM analyzer, when it is to be asked.
    pub review: Option<ReviewInput>,
}

/// The scanners the daemon runs.
pub struct Scanners {
    engine: Engine,
    skill_adapter: Option<SkillScannerAdapter>,
    llm: Option<LlmReviewer>,
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

fn new_finding(f: &Finding) -> NewFinding {
    NewFinding {
        rule_id: clip(&f.rule_id, 256),
        severity: severity(f.severity),
        title: clip(&f.title, 1024),
        description: clip(&f.description, 16 * 1024),
        location: clip(&f.location, 4096),
        line: f.line,
        category: clip(&f.category, 256),
        snippet: clip(&f.snippet, 2048),
    }
}

fn findings(report: &ScanReport) -> Vec<NewFinding> {
    report.findings.iter().map(new_finding).collect()
}

impl Scanners {
    /// Names the daemon's own scanners store findings under (the built-in one and
    /// each enabled adapter).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = vec![BUILTIN_SCANNER];
        if self.skill_adapter.is_some() {
            names.push(CISCO_SKILL_SCANNER);
        }
        if self.llm.is_some() {
            names.push(LLM_ANALYZER);
        }
        names
    }

    /// Loads the rules (built-in plus `rule_dirs`) and the enabled adapters;
    /// `llm` is the LLM analyzer when `[scanner.llm]` enables it.
    pub fn new(
        settings: &ScannerSettings,
        llm: Option<LlmReviewer>,
    ) -> std::result::Result<Self, ScannerSetupError> {
        let engine = if settings.rule_dirs.is_empty() {
            Engine::builtin()
        } else {
            Engine::load(&settings.rule_dirs)
        }
        .map_err(ScannerSetupError::Rules)?
        .with_limits(defenseclaw_scanner::Limits {
            time_budget: Some(Duration::from_secs(settings.scan_timeout_secs)),
            ..defenseclaw_scanner::Limits::default()
        });
        let skill_adapter = settings.cisco_skill_scanner.enabled.then(|| {
            SkillScannerAdapter::new(AdapterConfig::new(
                settings.cisco_skill_scanner.path.clone(),
                Duration::from_secs(settings.cisco_skill_scanner.timeout_secs),
            ))
        });
        Ok(Self {
            engine,
            skill_adapter,
            llm,
        })
    }

    /// Scans a skill folder with every scanner. Blocking: run it on the scan pool.
    /// The folder is opened first, without blocking or following a symlink,
    /// and must be a directory; nothing else runs before that check.
    pub fn scan_skill(&self, dir: &Path) -> Result<Scanned> {
        let invalid = |e: defenseclaw_scanner::ScanError| Error::invalid("path", e.to_string());
        // With the LLM analyzer on, the text it would read comes from the same
        // read as the static scan; it is kept only when the static result
        // falls in the analyzer's band.
        let (report, review) = match &self.llm {
            Some(llm) => {
                let (report, input) = self
                    .engine
                    .scan_skill_for_review(dir, llm.settings().max_input_bytes)
                    .map_err(invalid)?;
                let wanted = llm.wants(report.max_severity);
                (report, wanted.then_some(input))
            }
            None => (self.engine.scan_skill(dir).map_err(invalid)?, None),
        };
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
            review,
        })
    }

    /// Scans the tool descriptions an MCP server exposes (as OpenClaw's tool
    /// catalog shows them: `{"tools": [{name, description}]}`) for tool
    /// poisoning. Blocking: run it on the scan pool.
    pub fn scan_mcp_tools(&self, server: &str, tools: &serde_json::Value) -> Scanned {
        let def = serde_json::json!({ "tools": tools["tools"].clone() });
        let report = self
            .engine
            .scan_mcp_server(server, &def, "openclaw tools.catalog");
        Scanned {
            by_scanner: vec![(BUILTIN_SCANNER.to_owned(), findings(&report))],
            report,
            errors: Vec::new(),
            // MCP tool descriptions are not sent to the LLM analyzer (skills only).
            review: None,
        }
    }

    /// Asks the LLM analyzer about a scanned skill when the scan kept its
    /// text for review. The verdict is a finding source of its own (it adds,
    /// never replaces or lowers); any failure is recorded as a scanner error.
    pub async fn review(&self, s: &mut Scanned) {
        let (Some(llm), Some(input)) = (&self.llm, s.review.take()) else {
            return;
        };
        match llm.review(&input).await {
            Ok(v) => {
                let f = defenseclaw_scanner::llm::verdict_finding(
                    &v,
                    &llm.settings().model,
                    llm.settings().min_confidence,
                );
                s.by_scanner
                    .push((LLM_ANALYZER.to_owned(), vec![new_finding(&f)]));
            }
            Err(e) => {
                tracing::warn!(skill = %s.report.name, error = %e, "the LLM analyzer gave no verdict");
                s.errors.push(format!("{LLM_ANALYZER}: {e}"));
            }
        }
    }

    /// Scans the MCP servers of a config file. Blocking: run it on the scan
    /// pool. The file is opened first, without blocking or following a
    /// symlink, and must be a regular file within the size limit.
    pub fn scan_mcp(&self, file: &Path, server: Option<&str>) -> Result<Vec<Scanned>> {
        let reports = self
            .engine
            .scan_mcp_file(file, server)
            .map_err(|e| Error::invalid("path", e.to_string()))?;
        if let Some(name) = server
            && reports.is_empty()
        {
            return Err(Error::NotFound(format!(
                "MCP server {} in {}",
                quoted(name),
                defenseclaw_scanner::shown(file)
            )));
        }
        Ok(reports
            .into_iter()
            .map(|report| Scanned {
                by_scanner: vec![(BUILTIN_SCANNER.to_owned(), findings(&report))],
                report,
                errors: Vec::new(),
                review: None,
            })
            .collect())
    }
}

/// Collects file-system events under the watched skill directories and yields
/// each changed skill folder once it has been quiet for the debounce time.
///
/// Events are folded, as they arrive, into one entry per changed skill folder
/// (a set, not a queue), so a folder that changes without pause while a
/// scan runs costs one entry, not one per event.
pub struct SkillWatcher {
    watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
    pending: Arc<Pending>,
    roots: Roots,
    debounce: Duration,
}

/// The watched roots; more are added at run time (OpenClaw's skill directories).
type Roots = Arc<std::sync::RwLock<Vec<PathBuf>>>;

/// Adds roots to a running [`SkillWatcher`].
#[derive(Clone)]
pub struct WatchHandle {
    watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
    roots: Roots,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

/// Roots watched at most (configured plus added).
pub const MAX_WATCH_ROOTS: usize = 64;

impl WatchHandle {
    /// Watches `root` too (resolved once, here). Returns the resolved root
    /// when it was added, `None` when already watched or at the cap.
    pub fn add(&self, root: &Path) -> std::result::Result<Option<PathBuf>, ScannerSetupError> {
        use notify::Watcher;
        let canonical =
            std::fs::canonicalize(root).map_err(|source| ScannerSetupError::WatchDir {
                dir: root.to_path_buf(),
                source,
            })?;
        // The watcher lock serialises adds; the roots lock is never held
        // while notify works (its event thread reads the roots).
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let roots = self
                .roots
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if roots.contains(&canonical) || roots.len() >= MAX_WATCH_ROOTS {
                return Ok(None);
            }
        }
        let mut watcher = watcher;
        watcher
            .watch(&canonical, notify::RecursiveMode::Recursive)
            .map_err(|source| ScannerSetupError::Watch {
                dir: canonical.clone(),
                source,
            })?;
        self.roots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(canonical.clone());
        Ok(Some(canonical))
    }
}

/// Changed skill folders: when each first and last changed.
#[derive(Debug, Default)]
struct Pending {
    dirty: std::sync::Mutex<HashMap<PathBuf, (Instant, Instant)>>,
    wake: tokio::sync::Notify,
}

impl Pending {
    fn mark(&self, skill: PathBuf) {
        if let Ok(mut dirty) = self.dirty.lock() {
            let now = Instant::now();
            dirty.entry(skill).or_insert((now, now)).1 = now;
        }
        self.wake.notify_one();
    }

    /// Removes and returns the folders quiet for at least `debounce`, or
    /// changing for ten times that (a folder kept busy is scanned anyway).
    fn take_due(&self, debounce: Duration) -> (Vec<PathBuf>, bool) {
        let Ok(mut dirty) = self.dirty.lock() else {
            return (Vec::new(), false);
        };
        let due: Vec<PathBuf> = dirty
            .iter()
            .filter(|(_, (first, last))| {
                last.elapsed() >= debounce || first.elapsed() >= debounce * 10
            })
            .map(|(p, _)| p.clone())
            .collect();
        for p in &due {
            dirty.remove(p);
        }
        (due, !dirty.is_empty())
    }
}

impl std::fmt::Debug for SkillWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillWatcher")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// The skill folder (direct child of a root) a changed path belongs to.
fn skill_of(roots: &[PathBuf], path: &Path) -> Option<PathBuf> {
    roots.iter().find_map(|root| {
        let rel = path.strip_prefix(root).ok()?;
        let first = rel.components().next()?;
        Some(root.join(first))
    })
}

impl SkillWatcher {
    /// Watches `roots` recursively. A root that is a symlink is resolved
    /// once, here, at start; below the roots no symlink is followed (not by
    /// the watch, not by a scan).
    pub fn new(
        roots: &[PathBuf],
        debounce: Duration,
    ) -> std::result::Result<Self, ScannerSetupError> {
        use notify::Watcher;
        let mut canonical = Vec::new();
        for root in roots {
            canonical.push(std::fs::canonicalize(root).map_err(|source| {
                ScannerSetupError::WatchDir {
                    dir: root.clone(),
                    source,
                }
            })?);
        }
        let roots: Roots = Arc::new(std::sync::RwLock::new(canonical));
        let pending = Arc::new(Pending::default());
        let (event_roots, event_pending) = (roots.clone(), pending.clone());
        let mut watcher = notify::RecommendedWatcher::new(
            move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    let roots = event_roots
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    for path in event.paths {
                        if let Some(skill) = skill_of(&roots, &path) {
                            event_pending.mark(skill);
                        }
                    }
                }
            },
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(ScannerSetupError::Watcher)?;
        for root in roots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            watcher
                .watch(root, notify::RecursiveMode::Recursive)
                .map_err(|source| ScannerSetupError::Watch {
                    dir: root.clone(),
                    source,
                })?;
        }
        Ok(Self {
            watcher: Arc::new(std::sync::Mutex::new(watcher)),
            pending,
            roots,
            debounce,
        })
    }

    /// A handle that adds roots while the watcher runs.
    pub fn handle(&self) -> WatchHandle {
        WatchHandle {
            watcher: self.watcher.clone(),
            roots: self.roots.clone(),
        }
    }

    /// Runs until cancelled, calling `rescan` for each quiet changed skill
    /// folder (`false` from it: try again after the debounce time, e.g. when
    /// the scan pool was full). A skill folder that is a symlink is not
    /// scanned: `refused` is called once for it (until it stops being a
    /// symlink); the scanner refuses it too, so a folder swapped for a
    /// symlink after this check is not followed either.
    pub async fn run<F, Fut, R, RFut>(
        self,
        cancel: tokio_util::sync::CancellationToken,
        rescan: F,
        refused: R,
    ) where
        F: Fn(PathBuf) -> Fut,
        Fut: std::future::Future<Output = bool>,
        R: Fn(PathBuf) -> RFut,
        RFut: std::future::Future<Output = ()>,
    {
        /// Refused links remembered (so each is recorded once); beyond, they are still refused.
        const REMEMBERED: usize = 1024;
        let mut refused_once: std::collections::HashSet<PathBuf> = Default::default();
        let tick = self.debounce.max(Duration::from_millis(50)) / 2;
        // An interval, not a sleep renewed per event: a stream of events
        // cannot hold back the folders that are due.
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.pending.wake.notified() => {
                    waiting = true;
                    continue;
                }
                _ = ticker.tick(), if waiting => {}
            }
            let (due, more) = self.pending.take_due(self.debounce);
            waiting = more;
            for skill in due {
                // lstat: a symlink is judged as what it is, not what it points to.
                let Ok(meta) = std::fs::symlink_metadata(&skill) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    if !refused_once.contains(&skill) {
                        if refused_once.len() < REMEMBERED {
                            refused_once.insert(skill.clone());
                        }
                        refused(skill).await;
                    }
                    continue;
                }
                refused_once.remove(&skill);
                if meta.is_dir() && !rescan(skill.clone()).await {
                    self.pending.mark(skill);
                    waiting = true;
                }
            }
        }
    }
}

/// Shared scanning state for the control service.
#[derive(Debug)]
pub struct ScanService {
    /// The scanners a scan runs (built-in engine and configured adapters).
    pub scanners: Arc<Scanners>,
    /// Where scans run (bounded; never tokio's blocking pool).
    pub pool: crate::governance::scan_pool::ScanPool,
    /// The admission policy that turns findings into a decision.
    pub admission: AdmissionSettings,
}

impl ScanService {
    /// Whether `scanner` names one of the daemon's own scanners (any case).
    pub fn is_daemon_scanner(&self, scanner: &str) -> bool {
        self.scanners
            .names()
            .iter()
            .any(|n| n.eq_ignore_ascii_case(scanner))
    }
}
/// A skill folder in a watched directory that is a symlink is not scanned
/// (it could lead anywhere, e.g. into the daemon's own state directory): the
/// refusal is logged and audited once per link.
pub async fn record_refused_link(store: &Store, skill: &Path, actor: crate::model::Actor) {
    let shown = defenseclaw_scanner::shown(skill);
    tracing::warn!(skill = %shown, "a symlinked skill folder in a watched directory is not scanned");
    let name = skill
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = crate::names::target_name("name", &name)
        .ok()
        .map(|()| crate::model::Target {
            kind: crate::model::TargetKind::Skill,
            name,
        });
    let entry = crate::audit::NewEntry {
        action: "scan-refused".into(),
        target,
        severity: None,
        outcome: "refused".into(),
        reason: "the skill folder is a symlink; symlinks in watched directories are not followed"
            .into(),
        details: serde_json::json!({ "path": shown }),
        actor,
    };
    if let Err(e) = store.write(Audit(entry)).await {
        tracing::warn!(error = %e, "could not audit a refused skill folder");
    }
}
