//! Subprocess adapters for the Cisco scanners (`cisco-ai-skill-scanner`,
//! `cisco-ai-mcp-scanner`). They run only when installed and enabled; a
//! missing, failing or hanging scanner is an error value, never a silent
//! empty result.
//!
//! `skill-scanner` JSON (2.3.x, read from its real output):
//! `scan` prints one result object, `scan-all` prints
//! `{"summary": {...}, "results": [result, ...]}`; a result is
//! `{"skill_name", "skill_path", "is_safe", "max_severity" ("SAFE" or a
//! severity), "findings": [{"rule_id", "category", "severity", "title",
//! "description", "file_path", "line_number" (null or int), "snippet",
//! "remediation", "analyzer", ...}], "duration_ms", ...}`.
//!
//! `mcp-scanner`: not run here; its output is assumed to be a list of
//! per-tool results `{"tool_name", "is_safe", "findings": [...]}` (its
//! documented `raw` format), optionally wrapped in `{"results": [...]}`,
//! whose findings carry `severity` plus either the fields above or
//! `summary`/`threat_category`/`analyzer`. The argument list is
//! configurable so a newer CLI can be driven without code changes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{Finding, ScanError, ScanReport, Severity, TargetKind};
use crate::redact;

pub const SKILL_SCANNER: &str = "cisco-skill-scanner";
pub const MCP_SCANNER: &str = "cisco-mcp-scanner";

/// Env var naming the `skill-scanner` executable (else found on PATH).
pub const SKILL_SCANNER_ENV: &str = "DEFENSECLAW_CISCO_SKILL_SCANNER";
/// Env var naming the `mcp-scanner` executable (else found on PATH).
pub const MCP_SCANNER_ENV: &str = "DEFENSECLAW_CISCO_MCP_SCANNER";

/// How to run an external scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterConfig {
    /// Executable path, or a bare name looked up on PATH.
    pub executable: PathBuf,
    /// The process (and its children) is killed after this long.
    pub timeout: Duration,
    /// Extra arguments appended after the adapter's own.
    pub extra_args: Vec<String>,
}

impl AdapterConfig {
    pub fn new(executable: impl Into<PathBuf>, timeout: Duration) -> Self {
        AdapterConfig {
            executable: executable.into(),
            timeout,
            extra_args: Vec::new(),
        }
    }
}

/// Output of a finished process.
#[derive(Debug)]
pub struct ProcessOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Resolves a bare name on PATH; paths are checked as given.
pub fn resolve_executable(exe: &Path) -> Option<PathBuf> {
    let runnable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if exe.components().count() > 1 {
        return runnable(exe).then(|| exe.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| runnable(p))
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Runs `exe args` in its own process group with a timeout; on timeout the
/// whole group is killed so helper processes cannot keep it alive.
pub fn run_with_timeout(
    adapter: &str,
    exe: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<ProcessOutput, ScanError> {
    use std::os::unix::process::CommandExt;
    let resolved = resolve_executable(exe).ok_or_else(|| ScanError::AdapterMissing {
        adapter: adapter.to_string(),
        path: exe.display().to_string(),
        message: "not found on PATH or not executable".into(),
    })?;
    let started = Instant::now();
    let mut child = Command::new(&resolved)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| ScanError::AdapterMissing {
            adapter: adapter.to_string(),
            path: resolved.display().to_string(),
            message: e.to_string(),
        })?;
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                return Err(ScanError::Adapter {
                    adapter: adapter.to_string(),
                    message: format!("waiting for the process failed: {e}"),
                });
            }
        }
        if started.elapsed() >= timeout {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            return Err(ScanError::AdapterTimeout {
                adapter: adapter.to_string(),
                seconds: timeout.as_secs().max(1),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Children that outlive the main process could hold the pipes open:
    // take what is there after a short grace period, then kill the group.
    let grace = Duration::from_secs(2);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_else(|_| {
        kill_group(child.id());
        String::new()
    });
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Ok(ProcessOutput {
        status: status.code(),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let t: Vec<&str> = s.lines().rev().take(n).collect();
    t.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn parse_severity(v: Option<&Value>) -> Severity {
    v.and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(Severity::Info)
}

fn str_field<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("")
}

/// Maps one external finding into ours (`rule_id`, `category`, `severity`,
/// `title`, `description`, `file_path`, `line_number`).
pub fn map_finding(v: &Value, default_location: &str) -> Finding {
    let title = str_field(v, &["title", "summary", "threat_category", "category"]).to_string();
    let description = str_field(v, &["description", "details", "summary", "title"]).to_string();
    let location = match str_field(v, &["file_path", "location", "tool_name"]) {
        "" => default_location.to_string(),
        p => p.to_string(),
    };
    let line = v
        .get("line_number")
        .or_else(|| v.get("line"))
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let snippet: String = redact::redact(str_field(v, &["snippet"]))
        .chars()
        .take(160)
        .collect();
    let rule_id = match str_field(v, &["rule_id", "id", "threat_category"]) {
        "" => "EXTERNAL".to_string(),
        r => r.to_string(),
    };
    Finding {
        rule_id,
        category: str_field(v, &["category", "threat_category", "analyzer"]).to_string(),
        severity: parse_severity(v.get("severity")),
        title,
        description,
        location,
        line,
        snippet,
        remediation: str_field(v, &["remediation"]).to_string(),
    }
}

fn parse_json(adapter: &str, out: &ProcessOutput) -> Result<Value, ScanError> {
    let text = out.stdout.trim();
    // Some versions print log lines before the document.
    let start = text.find(['{', '[']).unwrap_or(0);
    serde_json::from_str(&text[start..]).map_err(|e| ScanError::Adapter {
        adapter: adapter.to_string(),
        message: format!(
            "exit status {:?}, output is not JSON ({e}); stderr: {}",
            out.status,
            tail(&out.stderr, 5)
        ),
    })
}

/// Parses `skill-scanner scan` / `scan-all` JSON into reports.
pub fn parse_skill_scanner_json(doc: &Value) -> Result<Vec<ScanReport>, ScanError> {
    let results: Vec<&Value> = if let Some(r) = doc.get("results").and_then(Value::as_array) {
        r.iter().collect()
    } else if let Some(a) = doc.as_array() {
        a.iter().collect()
    } else if doc.get("findings").is_some() {
        vec![doc]
    } else {
        return Err(ScanError::Adapter {
            adapter: SKILL_SCANNER.into(),
            message: "JSON has neither `results` nor `findings`".into(),
        });
    };
    Ok(results
        .into_iter()
        .map(|r| {
            let path = str_field(r, &["skill_path", "path"]).to_string();
            let mut report = ScanReport::new(
                path.clone(),
                TargetKind::Skill,
                str_field(r, &["skill_name", "name"]),
            );
            report.findings = r
                .get("findings")
                .and_then(Value::as_array)
                .map(|fs| fs.iter().map(|f| map_finding(f, "SKILL.md")).collect())
                .unwrap_or_default();
            report.duration_ms = r
                .get("duration_ms")
                .and_then(Value::as_f64)
                .or_else(|| {
                    r.get("scan_duration_seconds")
                        .and_then(Value::as_f64)
                        .map(|s| s * 1000.0)
                })
                .unwrap_or(0.0);
            report.finalize();
            report
        })
        .collect())
}

/// The Cisco skill scanner (`skill-scanner` from `cisco-ai-skill-scanner`).
#[derive(Debug, Clone)]
pub struct SkillScannerAdapter {
    pub config: AdapterConfig,
}

impl SkillScannerAdapter {
    pub fn new(config: AdapterConfig) -> Self {
        SkillScannerAdapter { config }
    }

    /// `$DEFENSECLAW_CISCO_SKILL_SCANNER` or `skill-scanner` on PATH.
    pub fn from_env(timeout: Duration) -> Self {
        let exe = std::env::var_os(SKILL_SCANNER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("skill-scanner"));
        SkillScannerAdapter::new(AdapterConfig::new(exe, timeout))
    }

    /// The resolved executable, or why it cannot run.
    pub fn available(&self) -> Result<PathBuf, ScanError> {
        resolve_executable(&self.config.executable).ok_or_else(|| ScanError::AdapterMissing {
            adapter: SKILL_SCANNER.into(),
            path: self.config.executable.display().to_string(),
            message: "not found on PATH or not executable".into(),
        })
    }

    fn run(&self, mut args: Vec<String>) -> Result<Value, ScanError> {
        args.extend(self.config.extra_args.iter().cloned());
        let out = run_with_timeout(
            SKILL_SCANNER,
            &self.config.executable,
            &args,
            self.config.timeout,
        )?;
        let doc = parse_json(SKILL_SCANNER, &out)?;
        // Non-zero exits with a report are "findings found"; without one they failed above.
        Ok(doc)
    }

    /// One skill, one process.
    pub fn scan_skill(&self, dir: &Path) -> Result<ScanReport, ScanError> {
        let doc = self.run(vec![
            "scan".into(),
            dir.display().to_string(),
            "--format".into(),
            "json".into(),
        ])?;
        let mut reports = parse_skill_scanner_json(&doc)?;
        let mut r = reports.pop().ok_or_else(|| ScanError::Adapter {
            adapter: SKILL_SCANNER.into(),
            message: "no result in the output".into(),
        })?;
        r.path = dir.display().to_string();
        Ok(r)
    }

    /// Every skill folder directly under `parent`, in one process.
    pub fn scan_all_dir(&self, parent: &Path) -> Result<Vec<ScanReport>, ScanError> {
        let doc = self.run(vec![
            "scan-all".into(),
            parent.display().to_string(),
            "--format".into(),
            "json".into(),
        ])?;
        parse_skill_scanner_json(&doc)
    }

    /// Many skills in one process (start-up paid once): the folders are
    /// linked into a temporary directory and scanned with `scan-all`.
    /// Results come back in the order of `dirs`; a skill the scanner did
    /// not report is an error entry, not a clean result.
    pub fn scan_all(
        &self,
        dirs: &[PathBuf],
    ) -> Result<Vec<Result<ScanReport, ScanError>>, ScanError> {
        let tmp = std::env::temp_dir().join(format!(
            "defenseclaw-scan-all-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&tmp).map_err(|e| ScanError::io(&tmp, e))?;
        let result = (|| {
            for (i, d) in dirs.iter().enumerate() {
                let abs = std::fs::canonicalize(d).map_err(|e| ScanError::io(d, e))?;
                let link = tmp.join(format!("{i:05}"));
                std::os::unix::fs::symlink(&abs, &link).map_err(|e| ScanError::io(&link, e))?;
            }
            self.scan_all_dir(&tmp)
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        let reports = result?;
        let mut slots: Vec<Option<ScanReport>> = vec![None; dirs.len()];
        for mut r in reports {
            let idx = Path::new(&r.path)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(i) = idx.filter(|i| *i < dirs.len()) {
                r.path = dirs[i].display().to_string();
                slots[i] = Some(r);
            }
        }
        Ok(slots
            .into_iter()
            .zip(dirs)
            .map(|(s, d)| {
                s.ok_or_else(|| ScanError::Adapter {
                    adapter: SKILL_SCANNER.into(),
                    message: format!("no result for {}", d.display()),
                })
            })
            .collect())
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Parses `mcp-scanner` JSON (see the module notes) into one report per
/// scanned server (`name`).
pub fn parse_mcp_scanner_json(
    doc: &Value,
    path: &str,
    name: &str,
) -> Result<ScanReport, ScanError> {
    let items: Vec<&Value> = if let Some(r) = doc.get("results").and_then(Value::as_array) {
        r.iter().collect()
    } else if let Some(a) = doc.as_array() {
        a.iter().collect()
    } else if doc.get("findings").is_some() {
        vec![doc]
    } else {
        return Err(ScanError::Adapter {
            adapter: MCP_SCANNER.into(),
            message: "JSON has neither `results` nor `findings`".into(),
        });
    };
    let mut report = ScanReport::new(path, TargetKind::Mcp, name);
    for item in items {
        let tool = str_field(item, &["tool_name", "name", "prompt_name", "resource_name"]);
        let default_loc = if tool.is_empty() {
            format!("{path}#{name}")
        } else {
            format!("{path}#{name}.tools.{tool}")
        };
        let findings = item.get("findings");
        let list: Vec<&Value> = match findings {
            Some(Value::Array(a)) => a.iter().collect(),
            // Some versions group findings by analyzer: {"yara_analyzer": {...}}.
            Some(Value::Object(m)) => m.values().filter(|v| v.get("severity").is_some()).collect(),
            _ => Vec::new(),
        };
        report
            .findings
            .extend(list.into_iter().map(|f| map_finding(f, &default_loc)));
    }
    report.finalize();
    Ok(report)
}

/// The Cisco MCP scanner (`mcp-scanner` from `cisco-ai-mcp-scanner`),
/// driven on a saved `tools/list` answer (it cannot judge a config file
/// without starting the servers).
#[derive(Debug, Clone)]
pub struct McpScannerAdapter {
    pub config: AdapterConfig,
    /// Arguments before the extra ones; `{tools}` is replaced by the file.
    pub args_template: Vec<String>,
}

impl McpScannerAdapter {
    pub fn new(config: AdapterConfig) -> Self {
        McpScannerAdapter {
            config,
            args_template: [
                "--analyzers",
                "yara",
                "--format",
                "raw",
                "static",
                "--tools",
                "{tools}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }

    pub fn from_env(timeout: Duration) -> Self {
        let exe = std::env::var_os(MCP_SCANNER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("mcp-scanner"));
        McpScannerAdapter::new(AdapterConfig::new(exe, timeout))
    }

    pub fn available(&self) -> Result<PathBuf, ScanError> {
        resolve_executable(&self.config.executable).ok_or_else(|| ScanError::AdapterMissing {
            adapter: MCP_SCANNER.into(),
            path: self.config.executable.display().to_string(),
            message: "not found on PATH or not executable".into(),
        })
    }

    /// Scans the tools of server `name` saved in `tools_json`.
    pub fn scan_tools(&self, tools_json: &Path, name: &str) -> Result<ScanReport, ScanError> {
        let mut args: Vec<String> = self
            .args_template
            .iter()
            .map(|a| a.replace("{tools}", &tools_json.display().to_string()))
            .collect();
        args.extend(self.config.extra_args.iter().cloned());
        let out = run_with_timeout(
            MCP_SCANNER,
            &self.config.executable,
            &args,
            self.config.timeout,
        )?;
        let doc = parse_json(MCP_SCANNER, &out)?;
        parse_mcp_scanner_json(&doc, &tools_json.display().to_string(), name)
    }
}
