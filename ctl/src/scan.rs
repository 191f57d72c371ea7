//! Scanning: offline with the built-in engine in this process, or through the
//! daemon (findings recorded, admission policy applied).

use std::path::{Path, PathBuf};

use defenseclaw_proto::v1 as pb;
use defenseclaw_scanner::{Engine, ScanReport, Severity};
use serde_json::{Value, json};

use crate::cli::{InstallArgs, Output, RuleCommand, ScanArgs};
use crate::client::Client;
use crate::exit::{FAILURE, Failure, NOT_FOUND, SCAN_FAIL_ON, USAGE};
use crate::render;

fn engine(rule_dirs: &[PathBuf]) -> Result<Engine, Failure> {
    let engine = if rule_dirs.is_empty() {
        Engine::builtin()
    } else {
        Engine::load(rule_dirs)
    };
    engine.map_err(|e| Failure::new(USAGE, format!("loading rules: {e}")))
}

fn fail_on(args: &ScanArgs) -> Result<Option<Severity>, Failure> {
    parse_fail_on(args.fail_on.as_deref())
}

fn parse_fail_on(fail_on: Option<&str>) -> Result<Option<Severity>, Failure> {
    fail_on
        .map(|s| {
            s.parse::<Severity>().map_err(|_| {
                Failure::new(
                    USAGE,
                    format!("--fail-on {s:?}: expected INFO, LOW, MEDIUM, HIGH or CRITICAL"),
                )
            })
        })
        .transpose()
}

/// `skill scan --offline` / `mcp scan --offline`.
pub fn offline(kind: pb::TargetKind, args: &ScanArgs, output: Output) -> Result<(), Failure> {
    let threshold = fail_on(args)?;
    let engine = engine(&args.rule_dirs)?;
    let mut reports: Vec<ScanReport> = Vec::new();
    // The config file each report came from (MCP scans), printed with it.
    let mut configs: Vec<Option<String>> = Vec::new();
    let mut errors = Vec::new();
    match kind {
        pb::TargetKind::Mcp => {
            if args.config.is_empty() {
                return Err(Failure::new(
                    USAGE,
                    "mcp scan --offline needs --config FILE (the daemon knows servers by name; offline does not)",
                ));
            }
            let wanted = wanted_servers(args);
            let mut seen: Vec<String> = Vec::new();
            // Each file on its own: a missing or malformed file is an error
            // for that file, and the others are still scanned and printed.
            for file in &args.config {
                match engine.scan_mcp_file(file, None) {
                    Ok(found) => {
                        seen.extend(found.iter().map(|r| r.name.clone()));
                        for r in found {
                            if wanted.is_empty() || wanted.contains(&r.name.as_str()) {
                                configs.push(Some(file.display().to_string()));
                                reports.push(r);
                            }
                        }
                    }
                    Err(e) => errors.push(format!("{}: {e}", file.display())),
                }
            }
            for name in &wanted {
                if !seen.iter().any(|s| s == name) {
                    errors.push(format!(
                        "no MCP server named {name:?} in {}",
                        files_list(&args.config)
                    ));
                }
            }
        }
        _ => {
            if args.targets.is_empty() {
                return Err(Failure::new(
                    USAGE,
                    "skill scan needs at least one skill folder",
                ));
            }
            let dirs: Vec<PathBuf> = args.targets.iter().map(PathBuf::from).collect();
            for (dir, result) in dirs.iter().zip(engine.scan_skills(&dirs)) {
                match result {
                    Ok(r) => {
                        configs.push(None);
                        reports.push(r);
                    }
                    Err(e) => errors.push(format!("{}: {e}", dir.display())),
                }
            }
        }
    }
    print_reports(&reports, &configs, output)?;
    report_errors(&errors)?;
    if let Some(t) = threshold {
        let hits = reports
            .iter()
            .filter(|r| r.max_severity.is_some_and(|m| m >= t))
            .count();
        if hits > 0 {
            return Err(Failure::new(
                SCAN_FAIL_ON,
                format!("{hits} target(s) have findings at or above {}", t.as_str()),
            ));
        }
    }
    Ok(())
}

/// Server names asked for: positional targets and `--server`.
fn wanted_servers(args: &ScanArgs) -> Vec<&str> {
    args.targets
        .iter()
        .map(String::as_str)
        .chain(args.server.iter().map(String::as_str))
        .collect()
}

fn files_list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints per-target errors (after every result that could be printed)
/// and turns them into the usage exit code.
fn report_errors(errors: &[String]) -> Result<(), Failure> {
    for e in errors {
        eprintln!("defenseclawctl: {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            USAGE,
            format!("{} target(s) could not be scanned", errors.len()),
        ))
    }
}

/// Adds `"config": FILE` to a JSON result line when it came from a config file.
fn with_config(mut v: Value, config: Option<&String>) -> Value {
    if let (Some(c), Some(obj)) = (config, v.as_object_mut()) {
        obj.insert("config".into(), Value::String(c.clone()));
    }
    v
}

fn print_reports(
    reports: &[ScanReport],
    configs: &[Option<String>],
    output: Output,
) -> Result<(), Failure> {
    match output {
        Output::Json => {
            for (r, c) in reports.iter().zip(configs) {
                let v =
                    serde_json::to_value(r).map_err(|e| Failure::new(FAILURE, e.to_string()))?;
                crate::render::write_line(&with_config(v, c.as_ref()).to_string())?;
            }
            Ok(())
        }
        Output::Sarif => {
            let doc = defenseclaw_scanner::sarif::to_sarif(reports);
            crate::render::write_line(&doc.to_string())
        }
        Output::Table => {
            let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let mut text = String::new();
            for (r, c) in reports.iter().zip(configs) {
                let max = r.max_severity.map_or("clean", |s| s.as_str());
                text.push_str(&format!(
                    "{} {} ({}) — {} finding(s), max {}, {:.1} ms\n",
                    r.kind.as_str(),
                    r.name,
                    c.as_ref().unwrap_or(&r.path),
                    r.findings.len(),
                    max,
                    r.duration_ms
                ));
                let rows: Vec<Vec<String>> = r
                    .findings
                    .iter()
                    .map(|f| {
                        vec![
                            paint(f.severity, color),
                            if f.line > 0 {
                                format!("{}:{}", f.location, f.line)
                            } else {
                                f.location.clone()
                            },
                            f.rule_id.clone(),
                            f.title.clone(),
                        ]
                    })
                    .collect();
                if !rows.is_empty() {
                    for line in
                        render::table(&["SEVERITY", "WHERE", "RULE", "TITLE"], &rows).lines()
                    {
                        text.push_str("  ");
                        text.push_str(line);
                        text.push('\n');
                    }
                }
                for note in &r.notes {
                    text.push_str(&format!("  note: {note}\n"));
                }
            }
            render::print_text(text.trim_end())
        }
    }
}

fn paint(s: Severity, color: bool) -> String {
    if !color {
        return s.as_str().to_owned();
    }
    let code = match s {
        Severity::Critical => "1;31",
        Severity::High => "31",
        Severity::Medium => "33",
        Severity::Low => "36",
        Severity::Info => "2",
    };
    format!("\u{1b}[{code}m{}\u{1b}[0m", s.as_str())
}

fn absolute(path: &Path) -> Result<String, Failure> {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .map_err(|e| Failure::new(USAGE, format!("{}: {e}", path.display())))
}

/// `skill scan` / `mcp scan` through the daemon.
pub async fn through_daemon(
    client: &mut Client,
    kind: pb::TargetKind,
    args: &ScanArgs,
    output: Output,
) -> Result<(), Failure> {
    let threshold = fail_on(args)?;
    if !args.rule_dirs.is_empty() {
        return Err(Failure::new(
            USAGE,
            "--rules applies to --offline scans; the daemon uses its [scanner] rule_dirs",
        ));
    }
    let mut requests = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    match kind {
        pb::TargetKind::Mcp => {
            if args.config.is_empty() {
                return Err(Failure::new(USAGE, "mcp scan needs --config FILE"));
            }
            let mut servers: Vec<String> = wanted_servers(args)
                .into_iter()
                .map(str::to_owned)
                .collect();
            if servers.is_empty() {
                servers.push(String::new());
            }
            for file in &args.config {
                let path = match absolute(file) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(e.message);
                        continue;
                    }
                };
                for server in &servers {
                    requests.push((
                        Some(path.clone()),
                        pb::ScanTargetRequest {
                            kind: kind as i32,
                            path: path.clone(),
                            name: String::new(),
                            server: server.clone(),
                            install: false,
                        },
                    ));
                }
            }
        }
        _ => {
            if args.targets.is_empty() {
                return Err(Failure::new(
                    USAGE,
                    "skill scan needs at least one skill folder",
                ));
            }
            for t in &args.targets {
                requests.push((
                    None,
                    pb::ScanTargetRequest {
                        kind: kind as i32,
                        path: absolute(Path::new(t))?,
                        name: String::new(),
                        server: String::new(),
                        install: false,
                    },
                ));
            }
        }
    }
    let mut results = Vec::new();
    let mut configs = Vec::new();
    for (config, req) in requests {
        let what = if req.server.is_empty() {
            req.path.clone()
        } else {
            format!("{} (server {:?})", req.path, req.server)
        };
        match client
            .scan_target(req)
            .await
            .map_err(|s| Failure::from_status(&s))
        {
            Ok(reply) => {
                for r in reply.into_inner().results {
                    configs.push(config.clone());
                    results.push(r);
                }
            }
            // The daemon refused this target (unreadable, malformed, no such
            // server): report it and go on with the others.
            Err(f) if config.is_some() && (f.code == USAGE || f.code == NOT_FOUND) => {
                errors.push(format!("{what}: {}", f.message));
            }
            Err(f) => return Err(f),
        }
    }
    print_results(&results, &configs, output)?;
    report_errors(&errors)?;
    fail_on_hits(&results, threshold)
}

/// `skill install PATH`.
pub async fn install(
    client: &mut Client,
    args: &InstallArgs,
    output: Output,
) -> Result<(), Failure> {
    let reply = client
        .scan_target(pb::ScanTargetRequest {
            kind: pb::TargetKind::Skill as i32,
            path: absolute(&args.path)?,
            name: args.name.clone().unwrap_or_default(),
            server: String::new(),
            install: true,
        })
        .await?
        .into_inner();
    let threshold = parse_fail_on(args.fail_on.as_deref())?;
    let configs = vec![None; reply.results.len()];
    print_results(&reply.results, &configs, output)?;
    // "unchanged" is admission's block finding the skill already blocked.
    if let Some(r) = reply
        .results
        .iter()
        .find(|r| matches!(r.decision.as_str(), "blocked" | "unchanged"))
    {
        return Err(Failure::new(
            crate::exit::INSTALL_BLOCKED,
            format!("the skill is blocked: {}", r.decision_reason),
        ));
    }
    fail_on_hits(&reply.results, threshold)
}

/// Exit 9 when any result has a finding at or above `threshold`.
fn fail_on_hits(results: &[pb::ScanResult], threshold: Option<Severity>) -> Result<(), Failure> {
    let Some(t) = threshold else {
        return Ok(());
    };
    let hits = results
        .iter()
        .filter(|r| r.max_severity >= t as i32 && r.max_severity != 0)
        .count();
    if hits > 0 {
        return Err(Failure::new(
            SCAN_FAIL_ON,
            format!("{hits} target(s) have findings at or above {}", t.as_str()),
        ));
    }
    Ok(())
}

fn result_json(r: &pb::ScanResult) -> Value {
    let t = r.target.clone().unwrap_or_default();
    json!({
        "path": r.path,
        "kind": render::kind_name(t.kind),
        "name": t.name,
        "max_severity": render::severity_name(r.max_severity),
        "findings": r.findings.iter().map(|f| json!({
            "rule_id": f.rule_id,
            "category": f.category,
            "severity": render::severity_name(f.severity),
            "title": f.title,
            "description": f.description,
            "location": f.location,
            "line": f.line,
            "snippet": f.snippet,
            "id": f.id,
        })).collect::<Vec<_>>(),
        "duration_ms": r.duration_ms,
        "notes": r.notes,
        "decision": r.decision,
        "decision_reason": r.decision_reason,
        "audit_seq": r.audit_seq,
        "scanners": r.scanners,
        "scanner_errors": r.scanner_errors,
    })
}

fn print_results(
    results: &[pb::ScanResult],
    configs: &[Option<String>],
    output: Output,
) -> Result<(), Failure> {
    match output {
        Output::Json => {
            for (r, c) in results.iter().zip(configs) {
                crate::render::write_line(&with_config(result_json(r), c.as_ref()).to_string())?;
            }
            Ok(())
        }
        Output::Sarif => {
            // Rebuild scanner reports so SARIF has one shape whichever way the scan ran.
            let reports: Vec<ScanReport> = results
                .iter()
                .filter_map(|r| serde_json::from_value(result_json(r)).ok())
                .collect();
            crate::render::write_line(&defenseclaw_scanner::sarif::to_sarif(&reports).to_string())
        }
        Output::Table => {
            let mut text = String::new();
            for (r, c) in results.iter().zip(configs) {
                let t = r.target.clone().unwrap_or_default();
                text.push_str(&format!(
                    "{} {}{}: {} finding(s), max {} — {}{}\n",
                    render::kind_name(t.kind),
                    t.name,
                    c.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                    r.findings.len(),
                    render::severity_name(r.max_severity).unwrap_or("clean"),
                    r.decision,
                    if r.decision_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.decision_reason)
                    }
                ));
                for f in &r.findings {
                    text.push_str(&format!(
                        "  {:<8}  {}:{}  {}  {}\n",
                        render::severity_name(f.severity).unwrap_or(""),
                        f.location,
                        f.line,
                        f.rule_id,
                        f.title
                    ));
                }
                for e in &r.scanner_errors {
                    text.push_str(&format!("  scanner error: {e}\n"));
                }
            }
            render::print_text(text.trim_end())
        }
    }
}

/// `rule list` / `rule validate`.
pub fn rules(action: &RuleCommand, output: Output) -> Result<(), Failure> {
    match action {
        RuleCommand::List { rule_dirs } => {
            let engine = engine(rule_dirs)?;
            match output {
                Output::Table => {
                    let rows: Vec<Vec<String>> = engine
                        .rules()
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                r.severity.as_str().to_owned(),
                                r.category.clone(),
                                r.title.clone(),
                            ]
                        })
                        .collect();
                    render::print_table(&["ID", "SEVERITY", "CATEGORY", "TITLE"], &rows)
                }
                _ => {
                    let v = serde_json::to_value(engine.rules())
                        .map_err(|e| Failure::new(FAILURE, e.to_string()))?;
                    crate::render::write_line(&v.to_string())
                }
            }
        }
        RuleCommand::Validate { file } => match defenseclaw_scanner::validate_rule_file(file) {
            Ok(n) => match output {
                Output::Table => {
                    render::print_text(&format!("{}: {n} rule(s), valid", file.display()))
                }
                _ => crate::render::write_line(
                    &json!({"file": file.display().to_string(), "valid": true, "rules": n})
                        .to_string(),
                ),
            },
            Err(e) => {
                if output != Output::Table {
                    crate::render::write_line(&json!({"file": file.display().to_string(), "valid": false, "error": e.to_string()}).to_string())?;
                }
                Err(Failure::new(USAGE, format!("{}: {e}", file.display())))
            }
        },
    }
}
