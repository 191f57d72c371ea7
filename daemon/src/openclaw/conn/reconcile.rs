//! Reconciliation after connect: subscribe, re-list approvals, read skills
//! and MCP servers, and push the daemon's pending enforcement into OpenClaw;
//! then redo the parts the gateway's change events or the timer call for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::rpc::{ALREADY_RESOLVED, Rpc, RpcError};
use crate::openclaw::engine::{Engine, SkillInfo};
use crate::openclaw::gate_setup::{self, GateError};
use crate::openclaw::host::{Host, HostVerdict, MonitorAudit, TargetKind};
use crate::openclaw::mcp_wiring;
use crate::openclaw::state::ApprovalKind;

const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// Wake-ups from the frame loop when the gateway says skills or config changed.
pub(super) struct Triggers {
    pub(super) skills: Notify,
    pub(super) config: Notify,
}

/// Records a resolve the gateway refused (a lost connection is retried instead).
pub(super) fn resolve_failed<H: Host>(
    engine: &Engine<H>,
    approval_id: &str,
    kind: ApprovalKind,
    err: &RpcError,
) {
    tracing::warn!(approval = %approval_id, error = %err, "openclaw: approval resolve failed");
    if matches!(err, RpcError::Disconnected | RpcError::Timeout) {
        // Re-sent when the approval is listed as pending after reconnecting.
        return;
    }
    engine.confirmed(approval_id);
    engine.shared.update_approval(approval_id, |v| {
        v.reason = format!("{}; resolve failed: {err}", v.reason);
    });
    engine.audit_detached(MonitorAudit {
        action: match kind {
            ApprovalKind::Exec => "openclaw.exec.approval".into(),
            ApprovalKind::Plugin => "openclaw.plugin.approval".into(),
        },
        target: None,
        outcome: "error".into(),
        reason: format!("resolve failed: {err}"),
        details: json!({ "approval_id": approval_id }),
    });
}

/// Per-connection background work: subscribe, re-list approvals, read
/// skills/MCP, reconcile enforcement; then react to triggers.
pub(super) async fn background<H: Host>(
    engine: Arc<Engine<H>>,
    rpc: Rpc,
    triggers: Arc<Triggers>,
    cancel: CancellationToken,
) {
    let work = async {
        if let Err(e) = rpc.call("sessions.subscribe", json!({})).await {
            tracing::warn!(error = %e, "openclaw: sessions.subscribe failed");
            engine
                .shared
                .update_status(|s| s.last_error = Some(format!("sessions.subscribe: {e}")));
        }
        relist_approvals(&engine, &rpc).await;
        refresh_skills(&engine, &rpc).await;
        refresh_mcp(&engine, &rpc).await;
        super::coverage::refresh_tools(&engine, &rpc).await;
        for (kind, name, blocked) in engine.host.enforced_targets().await {
            if blocked && needs_block(&engine, kind, &name) {
                engine.shared.push_enforcement(kind, &name, true);
            }
        }
        apply_pending(&engine, &rpc).await;
        gate_check(&engine, &rpc).await;
        wiring_check(&engine, &rpc).await;
        let mut periodic = tokio::time::interval(RECONCILE_EVERY);
        periodic.tick().await;
        loop {
            tokio::select! {
                _ = engine.shared.pending_notified() => apply_pending(&engine, &rpc).await,
                _ = triggers.skills.notified() => refresh_skills(&engine, &rpc).await,
                _ = triggers.config.notified() => {
                    refresh_mcp(&engine, &rpc).await;
                    super::coverage::refresh_tools(&engine, &rpc).await;
                    gate_check(&engine, &rpc).await;
                    wiring_check(&engine, &rpc).await;
                }
                () = engine.shared.gate_setup.rewire_notified() => wiring_check(&engine, &rpc).await,
                _ = periodic.tick() => {
                    relist_approvals(&engine, &rpc).await;
                    apply_pending(&engine, &rpc).await;
                    gate_check(&engine, &rpc).await;
                    wiring_check(&engine, &rpc).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        () = work => {}
    }
}

/// Whether a blocked target is present in OpenClaw and still enabled there.
fn needs_block<H: Host>(engine: &Engine<H>, kind: TargetKind, name: &str) -> bool {
    match kind {
        TargetKind::Skill => engine
            .skills()
            .iter()
            .any(|s| (s.key == name || s.name == name) && !s.disabled),
        TargetKind::Mcp => engine
            .mcp_servers()
            .get(name)
            .is_some_and(|enabled| *enabled),
    }
}

fn list_items(v: &Value) -> Vec<Value> {
    if let Some(a) = v.as_array() {
        return a.clone();
    }
    for key in ["approvals", "items", "pending"] {
        if let Some(a) = v[key].as_array() {
            return a.clone();
        }
    }
    Vec::new()
}

async fn relist_approvals<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    for kind in [ApprovalKind::Exec, ApprovalKind::Plugin] {
        let (list, resolve) = match kind {
            ApprovalKind::Exec => ("exec.approval.list", "exec.approval.resolve"),
            ApprovalKind::Plugin => ("plugin.approval.list", "plugin.approval.resolve"),
        };
        let items = match rpc.call(list, json!({})).await {
            Ok(v) => list_items(&v),
            Err(e) => {
                tracing::warn!(error = %e, method = list, "openclaw: listing approvals failed");
                continue;
            }
        };
        for item in items {
            let ev = match kind {
                ApprovalKind::Exec => engine.eval_exec(&item),
                ApprovalKind::Plugin => engine.eval_plugin(&item),
            };
            let (id, decision) = match ev {
                Some(ev) => {
                    engine.audit_detached(ev.audit);
                    match ev.verdict.wire() {
                        Some(d) => {
                            engine.expect_confirmation(&ev.id, d);
                            (ev.id, d)
                        }
                        None => continue,
                    }
                }
                // Decided before, still pending: the resolve was lost with the
                // previous connection; send it again.
                None => match item["id"]
                    .as_str()
                    .and_then(|id| Some((id, engine.unconfirmed(id)?)))
                {
                    Some((id, d)) => (id.to_owned(), d),
                    None => continue,
                },
            };
            match rpc
                .call(resolve, json!({"id": id, "decision": decision}))
                .await
            {
                Ok(_) => engine.confirmed(&id),
                Err(e) if e.reason_is(ALREADY_RESOLVED) => engine.confirmed(&id),
                Err(e) => resolve_failed(engine, &id, kind, &e),
            }
        }
    }
}

async fn refresh_skills<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let v = match rpc.call("skills.status", json!({})).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "openclaw: skills.status failed");
            return;
        }
    };
    let skills: Vec<SkillInfo> = v["skills"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let name = s["name"].as_str()?.to_owned();
                    Some(SkillInfo {
                        key: s["skillKey"].as_str().unwrap_or(&name).to_owned(),
                        base_dir: s["baseDir"].as_str().unwrap_or("").to_owned(),
                        disabled: s["disabled"].as_bool().unwrap_or(false),
                        name,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    engine
        .host
        .skills_reported(super::coverage::reported_skills(&v));
    let names: Vec<String> = skills.iter().map(|s| s.key.clone()).collect();
    for s in &skills {
        if !s.disabled
            && (matches!(
                engine.host.verdict(TargetKind::Skill, &s.key),
                HostVerdict::Blocked { .. }
            ) || matches!(
                engine.host.verdict(TargetKind::Skill, &s.name),
                HostVerdict::Blocked { .. }
            ))
        {
            engine
                .shared
                .push_enforcement(TargetKind::Skill, &s.key, true);
        }
    }
    engine.set_skills(skills);
    engine.host.observe_targets(TargetKind::Skill, names).await;
}

/// `mcp.servers` from a `config.get` payload: name → enabled.
fn mcp_servers_of(cfg: &Value) -> BTreeMap<String, bool> {
    for key in ["config", "parsed", "resolved", "runtimeConfig"] {
        if let Some(servers) = cfg[key]["mcp"]["servers"].as_object() {
            return servers
                .iter()
                .map(|(k, v)| (k.clone(), v["enabled"].as_bool().unwrap_or(true)))
                .collect();
        }
    }
    BTreeMap::new()
}

async fn refresh_mcp<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let cfg = match rpc.call("config.get", json!({})).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "openclaw: config.get failed");
            return;
        }
    };
    let servers = mcp_servers_of(&cfg);
    for (name, enabled) in &servers {
        if *enabled
            && matches!(
                engine.host.verdict(TargetKind::Mcp, name),
                HostVerdict::Blocked { .. }
            )
        {
            engine.shared.push_enforcement(TargetKind::Mcp, name, true);
        }
    }
    let names = servers.keys().cloned().collect();
    engine.set_mcp_servers(servers);
    engine.host.observe_targets(TargetKind::Mcp, names).await;
}

/// Reads the gate's state for status and, when setup was done and not undone,
/// puts back what someone turned off or loosened (audited; at most a few times
/// per window, so a gateway that keeps reverting is not fought in a loop).
async fn gate_check<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let gate = &engine.shared.gate_setup;
    if let Some(spec) = gate.spec() {
        let mut admitted = false;
        // A write racing ours changes the hash: read again once.
        for attempt in 0..2 {
            let docs = match gate_setup::read_docs(rpc).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "openclaw: reading the gate settings failed");
                    break;
                }
            };
            let changes: Vec<_> = gate_setup::plan(&spec, &docs)
                .into_iter()
                .filter(|c| c.changed)
                .collect();
            if changes.is_empty() {
                break;
            }
            if !admitted && !gate.admit_reapply() {
                let msg = "the gate was turned off again; not re-applied (too many re-applies in 10 minutes): run `defenseclawctl openclaw setup`";
                tracing::warn!("openclaw: {msg}");
                engine
                    .shared
                    .update_status(|s| s.last_error = Some(msg.into()));
                break;
            }
            admitted = true;
            let result = gate_setup::apply(rpc, &docs, &changes).await;
            let conflict = result.as_ref().is_err_and(GateError::is_conflict);
            if conflict && attempt == 0 {
                continue;
            }
            let (outcome, reason) = match result {
                Ok(()) => (
                    "applied",
                    "the gate was turned off or loosened in OpenClaw; re-applied".to_owned(),
                ),
                Err(e) => ("error", format!("re-applying the gate failed: {e}")),
            };
            engine
                .audit(MonitorAudit {
                    action: "openclaw-gate-reapplied".into(),
                    target: None,
                    outcome: outcome.into(),
                    reason,
                    details: json!({ "changes": changes }),
                })
                .await;
            break;
        }
    }
    match gate_setup::read_view(rpc, env!("CARGO_PKG_VERSION")).await {
        Ok(view) => gate.set_view(view),
        Err(e) => tracing::warn!(error = %e, "openclaw: reading the gate state failed"),
    }
}

/// While setup is in effect, makes OpenClaw start every MCP server the daemon
/// allows with connections through `defenseclawctl mcp exec`, and puts back
/// the original command of a wired server whose grant went away (revoked,
/// blocked). Each server's rewrite is audited.
async fn wiring_check<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    let gate = &engine.shared.gate_setup;
    let (Some(_), Some(wrapper)) = (gate.spec(), gate.wrapper()) else {
        return;
    };
    let Some(wanted) = engine.host.vault_servers().await else {
        return;
    };
    // A write racing ours changes the hash: read again once.
    for attempt in 0..2 {
        let docs = match gate_setup::read_docs(rpc).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "openclaw: reading MCP servers for wiring failed");
                return;
            }
        };
        let changes = mcp_wiring::plan(&wrapper, docs.config(), &wanted);
        if changes.is_empty() {
            return;
        }
        let result = gate_setup::apply(rpc, &docs, &changes).await;
        if result.as_ref().is_err_and(GateError::is_conflict) && attempt == 0 {
            continue;
        }
        let mut by_server: BTreeMap<String, (bool, Vec<Value>)> = BTreeMap::new();
        for c in &changes {
            if let Some((name, wraps)) = mcp_wiring::server_of(c) {
                by_server.insert(name.to_owned(), (wraps, Vec::new()));
            }
        }
        for c in &changes {
            let name = c
                .path
                .trim_start_matches("mcp.servers.")
                .rsplit_once('.')
                .map_or("", |(n, _)| n);
            if let Some((_, views)) = by_server.get_mut(name) {
                views.push(mcp_wiring::audit_view(c));
            }
        }
        for (name, (wraps, views)) in by_server {
            let (action, what) = if wraps {
                (
                    "openclaw-mcp-wrapped",
                    "now starts through `defenseclawctl mcp exec` (Token Vault)",
                )
            } else {
                (
                    "openclaw-mcp-unwrapped",
                    "has its own command back (no Token Vault grant)",
                )
            };
            let (outcome, reason) = match &result {
                Ok(()) => ("applied", format!("MCP server {name} {what}")),
                Err(e) => ("error", format!("rewriting MCP server {name} failed: {e}")),
            };
            engine
                .audit(MonitorAudit {
                    action: action.into(),
                    target: Some((TargetKind::Mcp, name)),
                    outcome: outcome.into(),
                    reason,
                    details: json!({ "changes": views }),
                })
                .await;
        }
        return;
    }
}

/// What pushing one enforcement change into OpenClaw came to.
enum EnforceResult {
    Done(Value),
    Unchanged,
    Absent,
}

async fn apply_one<H: Host>(
    engine: &Engine<H>,
    rpc: &Rpc,
    kind: TargetKind,
    name: &str,
    blocked: bool,
) -> Result<EnforceResult, RpcError> {
    match kind {
        TargetKind::Skill => {
            let key = engine.skill_key(name);
            rpc.call(
                "skills.update",
                json!({"skillKey": key, "enabled": !blocked}),
            )
            .await?;
            Ok(EnforceResult::Done(
                json!({"method": "skills.update", "skillKey": key, "enabled": !blocked}),
            ))
        }
        TargetKind::Mcp => {
            if name.contains('/') {
                // A single MCP tool: enforced through plugin approvals only.
                return Ok(EnforceResult::Unchanged);
            }
            for attempt in 0..2 {
                let cfg = rpc.call("config.get", json!({})).await?;
                let servers = mcp_servers_of(&cfg);
                let Some(enabled) = servers.get(name) else {
                    return Ok(EnforceResult::Absent);
                };
                if *enabled != blocked {
                    return Ok(EnforceResult::Unchanged);
                }
                let raw = json!({"mcp": {"servers": {name: {"enabled": !blocked}}}}).to_string();
                let mut params = json!({"raw": raw, "note": format!("defenseclawd: MCP server {name} {}", if blocked { "blocked" } else { "allowed" })});
                if let Some(h) = cfg["hash"].as_str() {
                    params["baseHash"] = Value::String(h.to_owned());
                }
                match rpc.call("config.patch", params).await {
                    Ok(_) => {
                        return Ok(EnforceResult::Done(
                            json!({"method": "config.patch", "path": format!("mcp.servers.{name}.enabled"), "enabled": !blocked}),
                        ));
                    }
                    Err(e)
                        if attempt == 0
                            && matches!(e, RpcError::Gateway { .. })
                            && e.to_string().to_lowercase().contains("hash") =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(RpcError::Timeout)
        }
    }
}

async fn apply_pending<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    for (kind, name, blocked) in engine.shared.take_pending() {
        let verb = if blocked { "block" } else { "allow" };
        match apply_one(engine, rpc, kind, &name, blocked).await {
            Ok(applied) => {
                engine.shared.clear_pending(kind, &name, blocked);
                let (outcome, reason, details) = match applied {
                    EnforceResult::Done(d) => ("applied", format!("{verb} applied in OpenClaw"), d),
                    EnforceResult::Unchanged => (
                        "unchanged",
                        format!("{verb}: OpenClaw already in that state"),
                        json!({}),
                    ),
                    EnforceResult::Absent => (
                        "absent",
                        format!("{verb}: not configured in OpenClaw"),
                        json!({}),
                    ),
                };
                engine.audit_detached(MonitorAudit {
                    action: "openclaw.enforce".into(),
                    target: Some((kind, name.clone())),
                    outcome: outcome.into(),
                    reason,
                    details,
                });
            }
            Err(RpcError::Disconnected) => return,
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "openclaw: enforcement not applied; will retry");
                engine.audit_detached(MonitorAudit {
                    action: "openclaw.enforce".into(),
                    target: Some((kind, name.clone())),
                    outcome: "error".into(),
                    reason: format!("{verb} not applied yet (will retry): {e}"),
                    details: json!({}),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_servers_are_read_from_config() {
        let cfg = json!({"hash": "h", "config": {"mcp": {"servers": {"a": {"command": "x"}, "b": {"enabled": false}}}}});
        let m = mcp_servers_of(&cfg);
        assert_eq!(m.get("a"), Some(&true));
        assert_eq!(m.get("b"), Some(&false));
    }
}
