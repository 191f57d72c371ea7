//! `connections export` (the Auth-IBOM as JSON or CSV), `connections export
//! --verify FILE` (a document checked against the daemon's audit log and its
//! head), and the end user's `connections list|revoke --mine`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use defenseclaw_common::ibom::{self, ChainEntry, Document, Event, EventActor, Grant};
use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::cli::{ExportArgs, Output};
use crate::client::Client;
use crate::connections::{at_provider_json, at_provider_text};
use crate::exit::{AUDIT_BROKEN, FAILURE, Failure, USAGE};
use crate::render::{self, print_json, print_text, s};

/// Largest document `--verify` reads.
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Problems listed before the rest are counted only.
const MAX_PROBLEMS: usize = 100;
/// The CSV columns, in order (documented in docs/schema/auth-ibom-v1.md).
pub const CSV_COLUMNS: &[&str] = &[
    "server",
    "connection",
    "status",
    "declared_scopes",
    "granted_scopes",
    "approved_by",
    "approver_email",
    "approval_method",
    "human_confirmed",
    "request_id",
    "requested_by",
    "approved_at",
    "subjects",
    "unattended",
    "created_at",
    "last_used",
    "use_count",
    "history",
    "last_event_seq",
    "last_event_hash",
    "audit_head_seq",
    "audit_head_hash",
];

/// `connections export [--since TIME] [-o json|csv]` and `--verify FILE`.
pub async fn export(
    client: &mut Client,
    args: ExportArgs,
    csv: bool,
    output: Output,
) -> Result<(), Failure> {
    if let Some(file) = args.verify {
        if csv {
            return Err(Failure::new(
                USAGE,
                "--verify reads the JSON document; -o csv is for writing one",
            ));
        }
        return verify(client, &file, output).await;
    }
    let reply = client
        .export_connections(pb::ExportConnectionsRequest {
            since: args.since.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let doc: Document = serde_json::from_str(&reply.document_json)
        .map_err(|e| Failure::new(FAILURE, format!("the daemon's inventory is not valid: {e}")))?;
    if csv {
        return write_raw(&to_csv(&doc));
    }
    let pretty = serde_json::to_string_pretty(&doc)
        .map_err(|e| Failure::new(FAILURE, format!("encoding the inventory: {e}")))?;
    write_raw(&format!("{pretty}\n"))
}

fn write_raw(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::writing(&e))
}

/// One CSV cell: quoted, quotes doubled, control characters dropped, and a
/// leading `= + - @` neutralised so a spreadsheet never runs it as a formula.
fn cell(v: &str) -> String {
    let clean: String = v.chars().filter(|c| !c.is_control()).collect();
    let clean = if clean.starts_with(['=', '+', '-', '@']) {
        format!("'{clean}")
    } else {
        clean
    };
    format!("\"{}\"", clean.replace('"', "\"\""))
}

/// The document as CSV: a header row, then one row per grant.
pub fn to_csv(doc: &Document) -> String {
    let mut out = CSV_COLUMNS
        .iter()
        .map(|c| cell(c))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    for g in &doc.grants {
        let last = g.history.last();
        let history = g
            .history
            .iter()
            .map(|e| {
                format!(
                    "{}:{}:{}@{} by {}",
                    e.seq, e.action, e.status, e.ts, e.actor.id
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let row = [
            g.server.clone(),
            g.connection.clone(),
            g.status.clone(),
            g.declared_scopes.join(" "),
            g.granted_scopes.join(" "),
            g.approval.approved_by.clone(),
            g.approval.approver_email.clone().unwrap_or_default(),
            g.approval.method.clone(),
            g.approval.human_confirmed.to_string(),
            g.approval.request_id.clone().unwrap_or_default(),
            g.approval.requested_by.id.clone(),
            g.approval.approved_at.clone(),
            g.subjects.join(" "),
            g.unattended.to_string(),
            g.created_at.clone(),
            g.last_used.clone().unwrap_or_default(),
            g.use_count.to_string(),
            history,
            last.map(|e| e.seq.to_string()).unwrap_or_default(),
            last.map(|e| e.hash.clone()).unwrap_or_default(),
            doc.audit_head.seq.to_string(),
            doc.audit_head.hash.clone(),
        ];
        out.push_str(&row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// What `--verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Nothing differs.
    pub ok: bool,
    /// Grants compared.
    pub grants_checked: usize,
    /// Events compared.
    pub events_checked: usize,
    /// Audit entries of the daemon's log checked (hash chain).
    pub audit_entries_checked: u64,
    /// The document's audit head, `seq:hash`.
    pub audit_head: String,
    /// Every difference, naming the grant, the event's seq and the field.
    pub problems: Vec<String>,
}

fn read_document(path: &Path) -> Result<Document, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::new(USAGE, format!("reading {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Failure::new(USAGE, format!("reading {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(Failure::new(
            USAGE,
            format!(
                "{} is larger than {MAX_DOCUMENT_BYTES} bytes",
                path.display()
            ),
        ));
    }
    let head: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            AUDIT_BROKEN,
            format!("{} is not a JSON document: {e}", path.display()),
        )
    })?;
    if head.get("schema").and_then(Value::as_str) != Some(ibom::SCHEMA) {
        return Err(Failure::new(
            USAGE,
            format!(
                "{} is not an {} document (its \"schema\" is {})",
                path.display(),
                ibom::SCHEMA,
                head.get("schema").unwrap_or(&Value::Null)
            ),
        ));
    }
    serde_json::from_value(head).map_err(|e| {
        Failure::new(
            AUDIT_BROKEN,
            format!(
                "{} does not follow the {} schema: {e}",
                path.display(),
                ibom::SCHEMA
            ),
        )
    })
}

fn chain_entry(e: &pb::AuditEntry) -> ChainEntry {
    let actor = e.actor.clone().unwrap_or_default();
    ChainEntry {
        seq: e.seq,
        hash: e.hash.clone(),
        ts: e.ts.clone(),
        action: e.action.clone(),
        target_kind: match e.target.as_ref().map(|t| t.kind) {
            Some(k) if k == pb::TargetKind::Mcp as i32 => "mcp".into(),
            Some(k) if k == pb::TargetKind::Skill as i32 => "skill".into(),
            _ => String::new(),
        },
        target_name: e
            .target
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        outcome: e.outcome.clone(),
        reason: e.reason.clone(),
        details: serde_json::from_str(&e.details_json).unwrap_or(Value::Null),
        actor: EventActor {
            id: actor.id,
            name: actor.name,
            auth_method: actor.auth_method,
        },
    }
}

/// `connections export --verify FILE`.
async fn verify(client: &mut Client, path: &Path, output: Output) -> Result<(), Failure> {
    let doc = read_document(path)?;
    // The daemon's whole log: its chain is checked with the same code as
    // `audit verify --from-export`, then the inventory is derived from it.
    let mut stream = client
        .export_audit(pb::ExportAuditRequest {})
        .await?
        .into_inner();
    let mut lines = Vec::new();
    let mut chain = Vec::new();
    let mut at_head: Option<String> = None;
    while let Some(item) = stream.next().await {
        let e = item?;
        serde_json::to_writer(&mut lines, &render::entry(&e))
            .map_err(|e| Failure::new(FAILURE, format!("encoding an audit entry: {e}")))?;
        lines.push(b'\n');
        if e.seq == doc.audit_head.seq {
            at_head = Some(e.hash.clone());
        }
        if e.seq <= doc.audit_head.seq && ibom::ACTIONS.contains(&e.action.as_str()) {
            chain.push(chain_entry(&e));
        }
    }
    let log = crate::export_verify::verify_lines(std::io::Cursor::new(lines))
        .map_err(|e| Failure::new(FAILURE, e))?;
    let mut report = VerifyReport {
        audit_entries_checked: log.entries_checked,
        audit_head: format!("{}:{}", doc.audit_head.seq, doc.audit_head.hash),
        ..VerifyReport::default()
    };
    if !log.ok {
        report.problems.push(format!(
            "the daemon's audit log itself does not verify at entry {}: {}",
            log.first_bad_seq.unwrap_or(0),
            log.problem.unwrap_or_default()
        ));
    }
    match (doc.audit_head.seq, at_head) {
        (0, _) if doc.audit_head.hash == crate::export_verify::GENESIS => {}
        (seq, None) => report.problems.push(format!(
            "the document's audit head {seq} is not in the daemon's log (it ends at {}): the log was cut, or the document is from another daemon",
            log.last.as_deref().unwrap_or("0")
        )),
        (seq, Some(hash)) if hash != doc.audit_head.hash => report.problems.push(format!(
            "the document's audit head {seq} has hash {}, the log's entry {seq} has {hash}",
            doc.audit_head.hash
        )),
        _ => {}
    }
    let (grants, accounts) = ibom::derive(chain, doc.since.as_deref());
    compare(&doc, &grants, &accounts, &mut report);
    report.ok = report.problems.is_empty();
    match output {
        Output::Json | Output::Sarif => print_json(&json!(report))?,
        Output::Table if report.ok => print_text(&format!(
            "inventory matches the audit log: {} grants, {} events, head {} ({} audit entries verified)",
            report.grants_checked,
            report.events_checked,
            report.audit_head,
            report.audit_entries_checked
        ))?,
        Output::Table => {
            for p in &report.problems {
                print_text(p)?;
            }
        }
    }
    if report.ok {
        Ok(())
    } else {
        let n = report.problems.len();
        Err(Failure::new(
            AUDIT_BROKEN,
            format!(
                "the inventory does not match the audit log ({n} problem{}): {}",
                if n == 1 { "" } else { "s" },
                report.problems.first().cloned().unwrap_or_default()
            ),
        ))
    }
}

fn push(report: &mut VerifyReport, problem: String) {
    if report.problems.len() < MAX_PROBLEMS {
        report.problems.push(problem);
    } else if report.problems.len() == MAX_PROBLEMS {
        report.problems.push("… more problems not listed".into());
    }
}

fn shown<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// One field of the document against the log's value.
fn field<T: serde::Serialize + PartialEq>(
    report: &mut VerifyReport,
    what: &str,
    name: &str,
    doc: &T,
    log: &T,
) {
    if doc != log {
        push(
            report,
            format!(
                "{what}: {name} is {} in the document, {} in the audit log",
                shown(doc),
                shown(log)
            ),
        );
    }
}

fn compare_event(report: &mut VerifyReport, what: &str, doc: &Event, log: &Event) {
    let what = format!("{what}: event seq {} ({})", log.seq, log.action);
    if doc.hash != log.hash {
        push(
            report,
            format!(
                "{what}: hash is {} in the document, the audit entry's is {}",
                doc.hash, log.hash
            ),
        );
    }
    field(report, &what, "ts", &doc.ts, &log.ts);
    field(report, &what, "action", &doc.action, &log.action);
    field(report, &what, "status", &doc.status, &log.status);
    field(report, &what, "actor", &doc.actor, &log.actor);
    field(report, &what, "reason", &doc.reason, &log.reason);
    field(
        report,
        &what,
        "human_confirmed",
        &doc.human_confirmed,
        &log.human_confirmed,
    );
    field(
        report,
        &what,
        "request_id",
        &doc.request_id,
        &log.request_id,
    );
}

fn compare_grant(report: &mut VerifyReport, doc: &Grant, log: &Grant) {
    let what = format!("grant {}/{}", log.server, log.connection);
    field(report, &what, "status", &doc.status, &log.status);
    field(
        report,
        &what,
        "declared_scopes",
        &doc.declared_scopes,
        &log.declared_scopes,
    );
    field(report, &what, "approval", &doc.approval, &log.approval);
    field(report, &what, "subjects", &doc.subjects, &log.subjects);
    field(
        report,
        &what,
        "unattended",
        &doc.unattended,
        &log.unattended,
    );
    field(
        report,
        &what,
        "created_at",
        &doc.created_at,
        &log.created_at,
    );
    let in_doc: BTreeMap<u64, &Event> = doc.history.iter().map(|e| (e.seq, e)).collect();
    let in_log: BTreeMap<u64, &Event> = log.history.iter().map(|e| (e.seq, e)).collect();
    if in_doc.len() != doc.history.len() {
        push(
            report,
            format!("{what}: an event appears twice in its history"),
        );
    }
    for (seq, l) in &in_log {
        match in_doc.get(seq) {
            None => push(
                report,
                format!(
                    "{what}: event seq {seq} ({} → {}, by {}) is in the audit log but missing from the document",
                    l.action, l.status, l.actor.id
                ),
            ),
            Some(d) => {
                report.events_checked += 1;
                compare_event(report, &what, d, l);
            }
        }
    }
    for seq in in_doc.keys().filter(|s| !in_log.contains_key(s)) {
        push(
            report,
            format!("{what}: event seq {seq} is not a change of this grant in the audit log"),
        );
    }
    let doc_order: Vec<u64> = doc.history.iter().map(|e| e.seq).collect();
    if doc_order.windows(2).any(|w| w[0] >= w[1]) {
        push(report, format!("{what}: its history is not in seq order"));
    }
}

fn compare(
    doc: &Document,
    grants: &[Grant],
    accounts: &[ibom::Account],
    report: &mut VerifyReport,
) {
    let key = |g: &Grant| (g.server.clone(), g.connection.clone());
    let in_doc: BTreeMap<_, &Grant> = doc.grants.iter().map(|g| (key(g), g)).collect();
    let in_log: BTreeMap<_, &Grant> = grants.iter().map(|g| (key(g), g)).collect();
    if in_doc.len() != doc.grants.len() {
        push(report, "a grant appears twice in the document".into());
    }
    for ((server, connection), l) in &in_log {
        match in_doc.get(&(server.clone(), connection.clone())) {
            None => push(
                report,
                format!(
                    "grant {server}/{connection} is in the audit log but missing from the document"
                ),
            ),
            Some(d) => {
                report.grants_checked += 1;
                compare_grant(report, d, l);
            }
        }
    }
    for (server, connection) in in_doc.keys().filter(|k| !in_log.contains_key(*k)) {
        push(
            report,
            format!("grant {server}/{connection} is in the document but not in the audit log"),
        );
    }
    let akey = |a: &ibom::Account| (a.sub.clone(), a.connection.clone());
    let doc_accounts: BTreeMap<_, _> = doc.linked_accounts.iter().map(|a| (akey(a), a)).collect();
    let log_accounts: BTreeMap<_, _> = accounts.iter().map(|a| (akey(a), a)).collect();
    for (k, l) in &log_accounts {
        match doc_accounts.get(k) {
            None => push(
                report,
                format!(
                    "linked account {} of {} (seq {}) is in the audit log but missing from the document",
                    k.1, k.0, l.seq
                ),
            ),
            Some(d) if d != l => push(
                report,
                format!(
                    "linked account {} of {} (seq {}): {} in the document, {} in the audit log",
                    k.1,
                    k.0,
                    l.seq,
                    shown(d),
                    shown(l)
                ),
            ),
            Some(_) => {}
        }
    }
    for k in doc_accounts
        .keys()
        .filter(|k| !log_accounts.contains_key(*k))
    {
        push(
            report,
            format!(
                "linked account {} of {} is in the document but not in the audit log",
                k.1, k.0
            ),
        );
    }
}

/// `connections list --mine`.
pub async fn list_mine(client: &mut Client, output: Output) -> Result<(), Failure> {
    let reply = client
        .list_my_connections(pb::ListMyConnectionsRequest {})
        .await?
        .into_inner();
    let grants: Vec<Value> = reply.grants.iter().map(crate::connections::grant).collect();
    match output {
        Output::Json | Output::Sarif => print_json(&json!({
            "grants": grants,
            "accounts": reply.accounts.iter().map(|a| json!({
                "sub": a.sub, "connection": a.connection,
                "account_id": a.account_id, "linked_at": a.linked_at,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => print_text(&render::table(
            &[
                "SERVER",
                "CONNECTION",
                "STATUS",
                "SCOPES",
                "LAST USED",
                "USES",
            ],
            &reply
                .grants
                .iter()
                .map(|g| {
                    vec![
                        g.server.clone(),
                        g.connection.clone(),
                        g.status.clone(),
                        if g.granted_scopes.is_empty() {
                            g.declared_scopes.join(" ")
                        } else {
                            g.granted_scopes.join(" ")
                        },
                        g.last_used.clone(),
                        g.use_count.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        )),
    }
}

/// `connections revoke --mine SERVER CONNECTION`.
pub async fn revoke_mine(
    client: &mut Client,
    server: String,
    connection: String,
    reason: String,
    output: Output,
) -> Result<(), Failure> {
    let reply = client
        .revoke_my_connection(pb::RevokeConnectionRequest {
            server,
            connection,
            reason,
            at_provider: false,
        })
        .await?
        .into_inner();
    let mut v = reply
        .grant
        .as_ref()
        .map(crate::connections::grant)
        .unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("audit_seq".into(), json!(reply.audit_seq));
        if let Some(p) = &reply.at_provider {
            map.insert("at_provider".into(), at_provider_json(p));
        }
    }
    // A refresh token of theirs the daemon held is revoked at the provider too.
    let there = reply
        .at_provider
        .as_ref()
        .map(|p| format!("; {}", at_provider_text(p)))
        .unwrap_or_default();
    match output {
        Output::Json | Output::Sarif => print_json(&v)?,
        Output::Table => print_text(&format!(
            "revoked {}'s grant for {} (audit #{}); status {}{there}",
            s(&v["server"]),
            s(&v["connection"]),
            reply.audit_seq,
            s(&v["status"])
        ))?,
    }
    match reply.at_provider {
        Some(p) if p.outcome == "failed" => Err(Failure::new(
            FAILURE,
            format!(
                "the grant is revoked here (audit #{}), but your refresh token was not revoked at the identity provider: {}",
                reply.audit_seq, p.error
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(cell("a\"b"), "\"a\"\"b\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(cell("line\nbreak\r"), "\"linebreak\"");
    }
}
