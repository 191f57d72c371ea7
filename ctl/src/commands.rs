//! Each command: build the request, call the daemon, print the answer.

use defenseclaw_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::cli::{
    AuditCommand, Command, Decide, FindingCommand, OpenclawCommand, Output, ScanCommand,
    TargetCommand,
};
use crate::exit::{AUDIT_BROKEN, Failure, USAGE};
use crate::render::{self, print_json, print_text, s};

use crate::client::Client;

/// Runs one command against a connected client.
pub async fn run(
    client: &mut Client,
    command: Command,
    output: Output,
    no_wait: bool,
) -> Result<(), Failure> {
    match command {
        Command::Status => status(client, output).await,
        Command::Skill { action } => {
            target_command(
                client,
                pb::TargetKind::Skill,
                action.into(),
                output,
                no_wait,
            )
            .await
        }
        Command::Mcp { action } => {
            target_command(client, pb::TargetKind::Mcp, action.into(), output, no_wait).await
        }
        Command::Finding { action } => finding_command(client, action, output, no_wait).await,
        Command::Approvals { action } => crate::approvals::command(client, action, output).await,
        Command::Scan { action } => scan_command(client, action, output).await,
        Command::Audit { action } => audit_command(client, action, output).await,
        Command::Openclaw { action } => openclaw_command(client, action, output).await,
        Command::Connections { action } => {
            crate::connections::command(client, action, output).await
        }
        Command::Auth { .. }
        | Command::Rule { .. }
        | Command::Version
        | Command::Doctor
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => Err(Failure::new(
            crate::exit::FAILURE,
            "this command runs without a daemon client",
        )),
    }
}

async fn openclaw_command(
    client: &mut Client,
    action: OpenclawCommand,
    output: Output,
) -> Result<(), Failure> {
    let (dry_run, undo) = match action {
        OpenclawCommand::Approvals => return openclaw_approvals(client, output).await,
        OpenclawCommand::Setup { dry_run, undo } => (dry_run, undo),
    };
    if undo && !dry_run {
        eprintln!(
            "undo lowers protection: with step-up on, it waits for the approver's answer on their phone"
        );
    }
    let reply = client
        .open_claw_setup(pb::OpenClawSetupRequest { dry_run, undo })
        .await?
        .into_inner();
    let value = render::openclaw_setup(&reply);
    match output {
        Output::Json | Output::Sarif => print_json(&value),
        Output::Table => {
            let verb = match (reply.undo, reply.dry_run) {
                (true, true) => "undo would change",
                (true, false) => "undo changed",
                (false, true) => "setup would change",
                (false, false) => "setup changed",
            };
            let rows: Vec<Vec<String>> = reply
                .changes
                .iter()
                .map(|c| {
                    vec![
                        c.path.clone(),
                        c.before.clone(),
                        c.after.clone(),
                        if c.changed { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            let changed = reply.changes.iter().filter(|c| c.changed).count();
            let mut text = render::table(&["SETTING", "BEFORE", "AFTER", "CHANGED"], &rows);
            text.push_str(&format!("\n{verb} {changed} setting(s)"));
            if !reply.plugin.is_empty() {
                text.push_str(&format!("; gate plugin: {}", reply.plugin));
            }
            print_text(&text)
        }
    }
}

async fn openclaw_approvals(client: &mut Client, output: Output) -> Result<(), Failure> {
    let reply = client
        .list_open_claw_approvals(pb::ListOpenClawApprovalsRequest {})
        .await?
        .into_inner();
    let values: Vec<Value> = reply
        .approvals
        .iter()
        .map(render::openclaw_approval)
        .collect();
    match output {
        Output::Json | Output::Sarif => print_json(&Value::Array(values)),
        Output::Table => render::print_table(
            &["ID", "KIND", "SUBJECT", "DECISION", "RESOLVED", "REASON"],
            &values
                .iter()
                .map(|v| {
                    vec![
                        s(&v["id"]),
                        s(&v["kind"]),
                        s(&v["subject"]),
                        s(&v["decision"]),
                        s(&v["resolved_decision"]),
                        s(&v["reason"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}

/// Parses `KIND/NAME`.
pub fn parse_target(s: &str) -> Result<pb::TargetRef, Failure> {
    let (kind, name) = s.split_once('/').ok_or_else(|| {
        Failure::new(
            USAGE,
            format!("--target {s:?}: expected KIND/NAME, e.g. skill/evil-skill"),
        )
    })?;
    Ok(pb::TargetRef {
        kind: parse_kind(kind)? as i32,
        name: name.to_owned(),
    })
}

fn parse_kind(kind: &str) -> Result<pb::TargetKind, Failure> {
    match kind.to_ascii_lowercase().as_str() {
        "skill" => Ok(pb::TargetKind::Skill),
        "mcp" => Ok(pb::TargetKind::Mcp),
        other => Err(Failure::new(
            USAGE,
            format!("target kind {other:?}: expected skill or mcp"),
        )),
    }
}

/// Parses a severity name, case-insensitively.
pub fn parse_severity(s: &str) -> Result<pb::Severity, Failure> {
    match s.to_ascii_uppercase().as_str() {
        "INFO" => Ok(pb::Severity::Info),
        "LOW" => Ok(pb::Severity::Low),
        "MEDIUM" => Ok(pb::Severity::Medium),
        "HIGH" => Ok(pb::Severity::High),
        "CRITICAL" => Ok(pb::Severity::Critical),
        _ => Err(Failure::new(
            USAGE,
            format!("severity {s:?}: expected INFO, LOW, MEDIUM, HIGH or CRITICAL"),
        )),
    }
}

async fn status(client: &mut Client, output: Output) -> Result<(), Failure> {
    let s = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    let v = render::status(&s);
    match output {
        Output::Json | Output::Sarif => print_json(&v),
        Output::Table => {
            let c = s.counts.unwrap_or_default();
            let h = s.audit_head.clone().unwrap_or_default();
            let oc = s.openclaw.clone().unwrap_or_default();
            let auth = s.auth.clone().unwrap_or_default();
            let auth_line = if auth.mode == "oidc" {
                format!(
                    "oidc, issuer {} ({} signing keys{})",
                    auth.issuer,
                    auth.jwks_keys,
                    if auth.jwks_serving_stale {
                        ", serving cached keys: refresh failing"
                    } else {
                        ""
                    }
                )
            } else {
                "local (peer credentials)".to_owned()
            };
            let oc_line = match oc.state.as_str() {
                "disabled" | "" => "disabled".to_owned(),
                state => format!(
                    "{state} to {}{}{}{}",
                    oc.url,
                    if oc.server_version.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (OpenClaw {}, protocol {})",
                            oc.server_version, oc.protocol
                        )
                    },
                    if oc.gateway_check.is_empty() {
                        String::new()
                    } else {
                        format!("; token trust: {}", oc.gateway_check)
                    },
                    if oc.last_error.is_empty() {
                        String::new()
                    } else {
                        format!("; last error: {}", oc.last_error)
                    }
                ),
            };
            print_text(&format!(
                "defenseclawd {}  (pid {}, up {}s)\nsocket:   {}\nstore:    {}\ntargets:  {} ({} blocked, {} allowed)\nfindings: {} open\naudit:    {} entries, head {}:{}\nauth:     {}\nopenclaw: {}",
                s.version,
                s.daemon_pid,
                s.uptime_secs,
                s.socket,
                s.store_path,
                c.targets,
                c.blocked,
                c.allowed,
                c.open_findings,
                c.audit_entries,
                h.seq,
                h.hash,
                auth_line,
                oc_line
            ))?;
            for e in &s.exporters {
                print_text(&format!(
                    "export:   {} ({}) {}, cursor {}, lag {}{}",
                    e.name,
                    e.kind,
                    e.state,
                    e.cursor,
                    e.lag,
                    if e.last_error.is_empty() {
                        String::new()
                    } else {
                        format!("; last error: {}", e.last_error)
                    }
                ))?;
            }
            if !s.exporters.is_empty() && !s.export_signing_key.is_empty() {
                print_text(&format!(
                    "export:   head records signed by Ed25519 key {}",
                    s.export_signing_key
                ))?;
            }
            Ok(())
        }
    }
}

async fn target_command(
    client: &mut Client,
    kind: pb::TargetKind,
    action: TargetCommand,
    output: Output,
    no_wait: bool,
) -> Result<(), Failure> {
    // `--no-wait` after the command, or before it.
    let no_wait = no_wait
        || match &action {
            TargetCommand::Block(d) | TargetCommand::Unblock(d) => d.no_wait,
            TargetCommand::Allow(a) => a.decide.no_wait,
            _ => false,
        };
    let decide = |d: Decide, action: pb::EnforcementAction| pb::SetEnforcementRequest {
        target: Some(pb::TargetRef {
            kind: kind as i32,
            name: d.name,
        }),
        action: action as i32,
        reason: d.reason,
        connections: Vec::new(),
    };
    let request = match action {
        TargetCommand::List => {
            let reply = client
                .list_targets(pb::ListTargetsRequest { kind: kind as i32 })
                .await?
                .into_inner();
            let values: Vec<Value> = reply.targets.iter().map(render::summary).collect();
            return match output {
                Output::Json | Output::Sarif => print_json(&Value::Array(values)),
                Output::Table => render::print_table(
                    &["NAME", "STATE", "FINDINGS", "MAX", "DECIDED BY", "REASON"],
                    &values
                        .iter()
                        .map(|v| {
                            vec![
                                s(&v["name"]),
                                s(&v["state"]),
                                v["open_findings"].to_string(),
                                s(&v["max_severity"]),
                                render::actor_label(&s(&v["decided_by"])),
                                s(&v["reason"]),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            };
        }
        TargetCommand::Show { name } => {
            let detail = client
                .get_target(pb::TargetRef {
                    kind: kind as i32,
                    name,
                })
                .await?
                .into_inner();
            let v = render::detail(&detail);
            return match output {
                Output::Json | Output::Sarif => print_json(&v),
                Output::Table => {
                    let mut text = format!(
                        "{}/{}: {}\nreason:     {}\ndecided by: {}\ndecided at: {}\n",
                        s(&v["kind"]),
                        s(&v["name"]),
                        s(&v["state"]),
                        s(&v["reason"]),
                        render::actor_label(&s(&v["decided_by"])),
                        s(&v["decided_at"])
                    );
                    text.push_str(&findings_table(
                        v["findings"].as_array().map_or(&[][..], Vec::as_slice),
                    ));
                    print_text(&text)
                }
            };
        }
        TargetCommand::Scan(args) => {
            return crate::scan::through_daemon(client, kind, &args, output).await;
        }
        // Install, exec and quarantine exist only under the kind they apply to (cli.rs).
        TargetCommand::Install(args) => return crate::scan::install(client, &args, output).await,
        TargetCommand::Block(d) => decide(d, pb::EnforcementAction::Block),
        TargetCommand::Allow(a) => {
            let scopes: Vec<String> = a
                .scopes
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let mut request = decide(a.decide, pb::EnforcementAction::Allow);
            request.connections = a
                .connections
                .into_iter()
                .map(|connection| pb::ConnectionDeclaration {
                    connection,
                    scopes: scopes.clone(),
                })
                .collect();
            request
        }
        TargetCommand::Exec(args) => return crate::connections::exec(client, args).await,
        TargetCommand::Unblock(d) => decide(d, pb::EnforcementAction::Unblock),
        TargetCommand::Quarantine(args) => {
            return crate::quarantine::quarantine(client, args, output).await;
        }
        TargetCommand::Restore { name } => {
            return crate::quarantine::restore(client, name, output).await;
        }
        TargetCommand::Quarantined => return crate::quarantine::list(client, output).await,
    };
    let reply = client.set_enforcement(request).await?.into_inner();
    if let Some(pending) = &reply.pending {
        return crate::approvals::wait(client, pending, output, no_wait).await;
    }
    let mut v = render::summary(&reply.target.unwrap_or_default());
    if let Value::Object(map) = &mut v {
        map.insert("changed".into(), json!(reply.changed));
        map.insert("audit_seq".into(), json!(reply.audit_seq));
    }
    match output {
        Output::Json | Output::Sarif => print_json(&v),
        Output::Table => print_text(&format!(
            "{}/{}: {}{} (audit #{})",
            s(&v["kind"]),
            s(&v["name"]),
            s(&v["state"]),
            if reply.changed { "" } else { " (unchanged)" },
            reply.audit_seq
        )),
    }
}

/// Columns of a findings table.
const FINDING_COLUMNS: &[&str] = &["ID", "SEVERITY", "RULE", "LOCATION", "TITLE", "STATUS"];

fn findings_table(findings: &[Value]) -> String {
    render::table(FINDING_COLUMNS, &finding_rows(findings))
}

fn finding_rows(findings: &[Value]) -> Vec<Vec<String>> {
    findings
        .iter()
        .map(|f| {
            let line = f["line"].as_u64().unwrap_or(0);
            vec![
                f["id"].to_string(),
                s(&f["severity"]),
                s(&f["rule_id"]),
                if line > 0 {
                    format!("{}:{line}", s(&f["location"]))
                } else {
                    s(&f["location"])
                },
                s(&f["title"]),
                if f["dismissed"].as_bool() == Some(true) {
                    "dismissed".into()
                } else {
                    "open".into()
                },
            ]
        })
        .collect()
}

async fn finding_command(
    client: &mut Client,
    action: FindingCommand,
    output: Output,
    no_wait: bool,
) -> Result<(), Failure> {
    match action {
        FindingCommand::List {
            target,
            min_severity,
            all,
        } => {
            let request = pb::ListFindingsRequest {
                target: target.as_deref().map(parse_target).transpose()?,
                min_severity: min_severity
                    .as_deref()
                    .map(parse_severity)
                    .transpose()?
                    .map_or(0, |s| s as i32),
                include_dismissed: all,
            };
            let reply = client.list_findings(request).await?.into_inner();
            let values: Vec<Value> = reply.findings.iter().map(render::finding).collect();
            match output {
                Output::Json | Output::Sarif => print_json(&Value::Array(values)),
                Output::Table => render::print_table(FINDING_COLUMNS, &finding_rows(&values)),
            }
        }
        FindingCommand::Dismiss {
            id,
            reason,
            no_wait: wait_flag,
        } => {
            let no_wait = no_wait || wait_flag;
            let f = client
                .dismiss_finding(pb::DismissFindingRequest { id, reason })
                .await?
                .into_inner();
            match output {
                _ if f.pending.is_some() => {
                    let pending = f.pending.clone().unwrap_or_default();
                    crate::approvals::wait(client, &pending, output, no_wait).await
                }
                Output::Json | Output::Sarif => {
                    print_json(&render::finding(&f.finding.unwrap_or_default()))
                }
                Output::Table => print_text(&format!(
                    "finding {} dismissed",
                    f.finding.map_or(0, |f| f.id)
                )),
            }
        }
    }
}

/// The scan report file (`scan report --file`). Unknown fields are ignored so
/// producers can add their own.
#[derive(Debug, Deserialize)]
struct ReportFile {
    scanner: String,
    target: ReportTarget,
    #[serde(default)]
    findings: Vec<ReportFinding>,
}

#[derive(Debug, Deserialize)]
struct ReportTarget {
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ReportFinding {
    rule_id: String,
    severity: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    line: Option<u32>,
    #[serde(default)]
    category: String,
    #[serde(default)]
    snippet: String,
}

/// Largest report file `scan report` reads: more is refused before it is
/// parsed (a report is findings, not data; the daemon takes at most 10 000).
pub const MAX_REPORT_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads at most [`MAX_REPORT_FILE_BYTES`] (plus one, to tell) of a report.
fn read_report(source: impl std::io::Read, name: &str) -> Result<String, Failure> {
    use std::io::Read as _;
    let mut text = String::new();
    source
        .take(MAX_REPORT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Failure::new(USAGE, format!("reading {name}: {e}")))?;
    if text.len() as u64 > MAX_REPORT_FILE_BYTES {
        return Err(Failure::new(
            USAGE,
            format!(
                "{name}: the report is larger than {} MiB, the limit for `scan report`",
                MAX_REPORT_FILE_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(text)
}

/// Parses a scan report document into the wire request.
pub fn parse_report(text: &str) -> Result<pb::ScanReport, Failure> {
    let file: ReportFile =
        serde_json::from_str(text).map_err(|e| Failure::new(USAGE, format!("scan report: {e}")))?;
    let findings = file
        .findings
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(pb::FindingInput {
                rule_id: f.rule_id,
                severity: parse_severity(&f.severity).map_err(|e| {
                    Failure::new(USAGE, format!("scan report: findings[{i}]: {}", e.message))
                })? as i32,
                title: f.title,
                description: f.description,
                location: f.location,
                line: f.line.unwrap_or(0),
                category: f.category,
                snippet: f.snippet,
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    Ok(pb::ScanReport {
        scanner: file.scanner,
        target: Some(pb::TargetRef {
            kind: parse_kind(&file.target.kind)? as i32,
            name: file.target.name,
        }),
        findings,
    })
}

async fn scan_command(
    client: &mut Client,
    action: ScanCommand,
    output: Output,
) -> Result<(), Failure> {
    let ScanCommand::Report { file } = action;
    let text = if file.as_os_str() == "-" {
        read_report(std::io::stdin(), "stdin")?
    } else {
        let opened = std::fs::File::open(&file)
            .map_err(|e| Failure::new(USAGE, format!("reading {}: {e}", file.display())))?;
        read_report(opened, &file.display().to_string())?
    };
    let report = parse_report(&text)?;
    let encoded = prost::Message::encoded_len(&report);
    let reply = client
        .submit_scan_report(report)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => Failure::new(
                USAGE,
                format!(
                    "the report is {encoded} bytes on the wire, over the daemon's request limit \
                     ([server] max_message_bytes, 4 MiB by default): split it by target, or raise \
                     the limit ({})",
                    status.message()
                ),
            ),
            _ => Failure::from_status(&status),
        })?
        .into_inner();
    let values: Vec<Value> = reply.findings.iter().map(render::finding).collect();
    match output {
        Output::Json | Output::Sarif => {
            print_json(&json!({"findings": values, "audit_seq": reply.audit_seq}))
        }
        Output::Table => print_text(&format!(
            "{} finding(s) recorded (audit #{})\n{}",
            values.len(),
            reply.audit_seq,
            findings_table(&values)
        )),
    }
}

/// Columns of an audit table.
const ENTRY_COLUMNS: &[&str] = &[
    "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "REASON",
];

fn entries_table(entries: &[Value]) -> String {
    render::table(ENTRY_COLUMNS, &entry_rows(entries))
}

fn entry_rows(entries: &[Value]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let target = match &e["target"] {
                Value::Null => String::new(),
                t => format!("{}/{}", s(&t["kind"]), s(&t["name"])),
            };
            vec![
                e["seq"].to_string(),
                s(&e["ts"]),
                s(&e["actor"]["name"]),
                s(&e["action"]),
                target,
                s(&e["outcome"]),
                s(&e["reason"]),
            ]
        })
        .collect()
}

/// `audit verify --from-export FILE [--public-key KEY]`: checked locally, no daemon.
pub fn verify_export(
    file: &std::path::Path,
    public_key: Option<&str>,
    output: Output,
) -> Result<(), Failure> {
    let usage = |e| Failure::new(crate::exit::USAGE, e);
    let pinned = public_key
        .map(crate::export_verify::parse_public_key)
        .transpose()
        .map_err(usage)?;
    let report =
        crate::export_verify::verify_file_pinned(file, pinned.as_deref()).map_err(usage)?;
    match output {
        Output::Json | Output::Sarif => print_json(&json!(report))?,
        Output::Table if report.ok => print_text(&format!(
            "export intact: {} entries ({} repeats), {} head records ({} signed{}), last {}",
            report.entries_checked,
            report.duplicates,
            report.heads_checked,
            report.heads_signed,
            match (&report.signing_key, report.key_pinned) {
                (Some(_), true) => " by the pinned key".to_owned(),
                (Some(k), false) => format!(" by {k}, not pinned"),
                (None, _) => String::new(),
            },
            report.last.as_deref().unwrap_or("none")
        ))?,
        Output::Table => {}
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::new(
            AUDIT_BROKEN,
            format!(
                "audit export broken at entry {}: {}",
                report.first_bad_seq.unwrap_or(0),
                report.problem.unwrap_or_default()
            ),
        ))
    }
}

async fn audit_command(
    client: &mut Client,
    action: AuditCommand,
    output: Output,
) -> Result<(), Failure> {
    match action {
        AuditCommand::List {
            limit,
            since,
            actor,
            target,
        } => {
            let request = pb::ListAuditRequest {
                limit,
                since: since.unwrap_or_default(),
                actor: actor.unwrap_or_default(),
                target: target.as_deref().map(parse_target).transpose()?,
            };
            let reply = client.list_audit(request).await?.into_inner();
            let values: Vec<Value> = reply.entries.iter().map(render::entry).collect();
            match output {
                Output::Json | Output::Sarif => print_json(&Value::Array(values)),
                Output::Table => render::print_table(ENTRY_COLUMNS, &entry_rows(&values)),
            }
        }
        AuditCommand::Tail { from_start } => {
            let mut stream = client
                .follow_audit(pb::FollowAuditRequest {
                    after_seq: 0,
                    from_start,
                })
                .await?
                .into_inner();
            let reader_gone = render::stdout_closed();
            tokio::pin!(reader_gone);
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    // `audit tail | head`: the reader left while nothing was printing.
                    () = &mut reader_gone => return Ok(()),
                };
                let Some(item) = item else { break };
                let v = render::entry(&item?);
                match output {
                    Output::Json | Output::Sarif => print_json(&v)?,
                    Output::Table => {
                        let text = entries_table(std::slice::from_ref(&v));
                        print_text(text.lines().last().unwrap_or_default())?;
                    }
                }
            }
            Ok(())
        }
        AuditCommand::Export => {
            let mut stream = client
                .export_audit(pb::ExportAuditRequest {})
                .await?
                .into_inner();
            while let Some(item) = stream.next().await {
                print_json(&render::entry(&item?))?;
            }
            Ok(())
        }
        AuditCommand::Verify {
            from_export: Some(file),
            public_key,
            ..
        } => verify_export(&file, public_key.as_deref(), output),
        AuditCommand::Verify { head, .. } => {
            let reply = client
                .verify_audit(pb::VerifyAuditRequest {
                    head: head.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let h = reply.head.clone().unwrap_or_default();
            let v = json!({
                "ok": reply.ok,
                "entries_checked": reply.entries_checked,
                "head": format!("{}:{}", h.seq, h.hash),
                "first_bad_seq": (!reply.ok).then_some(reply.first_bad_seq),
                "problem": (!reply.ok).then_some(reply.problem.clone()),
            });
            match output {
                Output::Json | Output::Sarif => print_json(&v)?,
                Output::Table if reply.ok => print_text(&format!(
                    "audit chain intact: {} entries, head {}:{}",
                    reply.entries_checked, h.seq, h.hash
                ))?,
                Output::Table => {}
            }
            if reply.ok {
                Ok(())
            } else {
                Err(Failure::new(
                    AUDIT_BROKEN,
                    format!(
                        "audit chain broken at entry {}: {}",
                        reply.first_bad_seq, reply.problem
                    ),
                ))
            }
        }
    }
}
