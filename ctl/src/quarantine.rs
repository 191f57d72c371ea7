//! `skill quarantine`, `skill restore` and `skill quarantined`: moving a
//! skill's folder out of the agent's reach and back, through the daemon.

use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::{Output, QuarantineArgs};
use crate::client::Client;
use crate::exit::{Failure, USAGE};
use crate::render::{self, print_json, print_text, s};

fn record(r: &pb::QuarantineRecord) -> Value {
    json!({
        "name": r.name,
        "original_path": r.original_path,
        "stored_path": r.stored_path,
        "state": r.state,
        "reason": r.reason,
        "quarantined_by": r.quarantined_by,
        "quarantined_at": r.quarantined_at,
    })
}

fn reply(verb: &str, r: &pb::QuarantineReply, output: Output) -> Result<(), Failure> {
    let mut v = r.record.as_ref().map(record).unwrap_or_else(|| json!({}));
    v["how"] = json!(r.how);
    v["notes"] = json!(r.notes);
    v["audit_seq"] = json!(r.audit_seq);
    match output {
        Output::Json | Output::Sarif => print_json(&v),
        Output::Table => {
            let (from, to) = if verb == "restored" {
                (s(&v["stored_path"]), s(&v["original_path"]))
            } else {
                (s(&v["original_path"]), s(&v["stored_path"]))
            };
            let mut text = format!(
                "skill/{}: {verb} ({}) {from} -> {to} (audit #{})",
                s(&v["name"]),
                r.how,
                r.audit_seq
            );
            for note in &r.notes {
                text.push_str(&format!("\nnote: {note}"));
            }
            print_text(&text)
        }
    }
}

/// `skill quarantine NAME [--path DIR] [--reason R]`.
pub(crate) async fn quarantine(
    client: &mut Client,
    args: QuarantineArgs,
    output: Output,
) -> Result<(), Failure> {
    let path = match args.path {
        Some(p) if !p.is_absolute() => std::env::current_dir()
            .map_err(|e| Failure::new(USAGE, format!("--path: {e}")))?
            .join(p),
        Some(p) => p,
        None => Default::default(),
    };
    let r = client
        .quarantine_skill(pb::QuarantineSkillRequest {
            name: args.name,
            path: path.display().to_string(),
            reason: args.reason,
        })
        .await?
        .into_inner();
    reply("quarantined", &r, output)
}

/// `skill restore NAME`.
pub(crate) async fn restore(
    client: &mut Client,
    name: String,
    output: Output,
) -> Result<(), Failure> {
    let r = client
        .restore_skill(pb::RestoreSkillRequest { name })
        .await?
        .into_inner();
    reply("restored", &r, output)
}

/// `skill quarantined`.
pub(crate) async fn list(client: &mut Client, output: Output) -> Result<(), Failure> {
    let r = client
        .list_quarantined(pb::ListQuarantinedRequest {})
        .await?
        .into_inner();
    let values: Vec<Value> = r.records.iter().map(record).collect();
    match output {
        Output::Json | Output::Sarif => print_json(&Value::Array(values)),
        Output::Table => render::print_table(
            &["NAME", "STATE", "FROM", "BY", "AT", "REASON"],
            &values
                .iter()
                .map(|v| {
                    vec![
                        s(&v["name"]),
                        s(&v["state"]),
                        s(&v["original_path"]),
                        s(&v["quarantined_by"]),
                        s(&v["quarantined_at"]),
                        s(&v["reason"]),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
}
