//! Step-up approvals: waiting for a human on a held change, and the
//! `approvals` commands.

use std::io::IsTerminal;

use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::cli::{ApprovalsCommand, Output};
use crate::client::Client;
use crate::exit::{Failure, STEPUP_CANCELLED, STEPUP_DENIED, STEPUP_ERROR, STEPUP_TIMED_OUT};
use crate::render::{self, print_text as text};

use crate::render::write_line as out;

/// A step-up as JSON.
pub fn stepup_json(s: &pb::StepUp) -> Value {
    let t = s.target.clone().unwrap_or_default();
    json!({
        "request_id": s.id,
        "target": {"kind": render::kind_name(t.kind), "name": t.name},
        "action": s.action,
        "reason": s.reason,
        "finding_id": (s.finding_id != 0).then_some(s.finding_id),
        "requester": s.requester.as_ref().map(render::actor),
        "approver": s.approver_sub,
        "binding_message": s.binding_message,
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "status": s.status,
        "outcome_reason": s.outcome_reason,
        "decided_at": (!s.decided_at.is_empty()).then_some(&s.decided_at),
        "approved_by": serde_json::from_str::<Value>(&s.approver_json).ok(),
    })
}

fn outcome_code(status: &str) -> Option<u8> {
    match status {
        "approved" => None,
        "denied" => Some(STEPUP_DENIED),
        "timed_out" => Some(STEPUP_TIMED_OUT),
        "cancelled" => Some(STEPUP_CANCELLED),
        _ => Some(STEPUP_ERROR),
    }
}

/// Prints the pending request and, unless `no_wait`, follows it to its end.
pub async fn wait(
    client: &mut Client,
    pending: &pb::StepUpPending,
    output: Output,
    no_wait: bool,
) -> Result<(), Failure> {
    let first = json!({
        "request_id": pending.request_id,
        "binding_message": pending.binding_message,
        "approver": pending.approver,
        "expires_at": pending.expires_at,
    });
    match output {
        Output::Table => eprintln!(
            "{}",
            render::escape_text(&format!(
                "This change needs a human approval.\n  request:  {}\n  approver: {} (confirm on their device; expires {})\n  message:  {}",
                pending.request_id, pending.approver, pending.expires_at, pending.binding_message
            ))
        ),
        _ => out(&first.to_string())?,
    }
    if no_wait {
        if output == Output::Table {
            text(&pending.request_id)?;
        }
        return Ok(());
    }
    watch(client, &pending.request_id, output, false).await
}

async fn watch(
    client: &mut Client,
    id: &str,
    output: Output,
    print_pending: bool,
) -> Result<(), Failure> {
    let mut stream = client
        .watch_step_up(pb::StepUpRef { id: id.to_owned() })
        .await?
        .into_inner();
    let spinner = output == Output::Table && std::io::stderr().is_terminal();
    let frames = ['|', '/', '-', '\\'];
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(150));
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick(), if spinner => {
                eprint!("\r{} waiting for approval of {id}…", frames[n % frames.len()]);
                n += 1;
            }
            item = stream.next() => {
                let Some(item) = item else {
                    return Err(Failure::new(STEPUP_ERROR, format!("lost the daemon while waiting for {id}; `defenseclawctl approvals watch {id}` resumes")));
                };
                let s = item?;
                if s.status == "pending" {
                    if print_pending && output != Output::Table {
                        out(&stepup_json(&s).to_string())?;
                    }
                    continue;
                }
                if spinner {
                    eprint!("\r\x1b[K");
                }
                let last = json!({
                    "outcome": s.status,
                    "request_id": s.id,
                    "reason": s.outcome_reason,
                    "approver": serde_json::from_str::<Value>(&s.approver_json).unwrap_or(json!({"sub": s.approver_sub})),
                });
                match output {
                    Output::Table => text(&format!("{}: {} ({})", s.id, s.status, s.outcome_reason))?,
                    _ => out(&last.to_string())?,
                }
                return match outcome_code(&s.status) {
                    None => Ok(()),
                    Some(code) => Err(Failure::new(code, format!("step-up {}: {}", s.id, s.status))),
                };
            }
        }
    }
}

/// `approvals list|show|watch|cancel`.
pub async fn command(
    client: &mut Client,
    action: ApprovalsCommand,
    output: Output,
) -> Result<(), Failure> {
    match action {
        ApprovalsCommand::List { pending } => {
            let reply = client
                .list_step_ups(pb::ListStepUpsRequest {
                    pending_only: pending,
                    limit: 100,
                })
                .await?
                .into_inner();
            let values: Vec<Value> = reply.stepups.iter().map(stepup_json).collect();
            match output {
                Output::Table => text(&render::table(
                    &["ID", "STATUS", "ACTION", "TARGET", "APPROVER", "EXPIRES"],
                    &reply
                        .stepups
                        .iter()
                        .map(|s| {
                            let t = s.target.clone().unwrap_or_default();
                            vec![
                                s.id.clone(),
                                s.status.clone(),
                                s.action.clone(),
                                format!("{}/{}", render::kind_name(t.kind), t.name),
                                s.approver_sub.clone(),
                                s.expires_at.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )),
                _ => out(&Value::Array(values).to_string()),
            }
        }
        ApprovalsCommand::Show { id } => {
            let s = client.get_step_up(pb::StepUpRef { id }).await?.into_inner();
            let v = stepup_json(&s);
            match output {
                Output::Table => text(&serde_json::to_string_pretty(&v).unwrap_or_default()),
                _ => out(&v.to_string()),
            }
        }
        ApprovalsCommand::Watch { id } => watch(client, &id, output, true).await,
        ApprovalsCommand::Cancel { id } => {
            let s = client
                .cancel_step_up(pb::StepUpRef { id })
                .await?
                .into_inner();
            match output {
                Output::Table => text(&format!("{}: {}", s.id, s.status)),
                _ => out(&stepup_json(&s).to_string()),
            }
        }
    }
}
