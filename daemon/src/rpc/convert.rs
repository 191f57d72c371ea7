//! Every conversion between wire types and the daemon's own: decoding (with
//! the validation a field needs on its way in) and encoding replies. The
//! adapters in [`crate::rpc`] call these; nothing below the RPC layer sees a
//! wire type.

use defenseclaw_proto::v1 as pb;

use crate::audit::{Entry, Head, Verification};
use crate::clock::format_ts;
use crate::error::{Error, Result, quoted};
use crate::governance::admission::ScanResult;
use crate::governance::queries::StatusView;
use crate::governance::vault::validate_scopes;
use crate::model::{
    Actor, Decision, EnforcementAction, EnforcementState, Severity, Target, TargetKind,
    validate_text,
};
use crate::names;
use crate::oidc::AuthMode;
use crate::openclaw::{ApprovalKind, ApprovalView, GateChange, GateView, GatewayStatus};
use crate::state::Verdict;
use crate::store::connections::{ConnectionDecl, GrantRow, LinkedAccountRow};
use crate::store::stepup::StepUpRow;
use crate::store::{FindingRow, NewFinding, TargetRow};

/// Most connections one `SetEnforcement` may declare.
const MAX_CONNECTIONS: usize = 32;

const MAX_SHORT: usize = 256;
const MAX_TITLE: usize = 1024;
const MAX_DESCRIPTION: usize = 16 * 1024;
const MAX_LOCATION: usize = 4096;
const MAX_SNIPPET: usize = 2048;

/// Checks one submitted finding; `index` names it in errors.
pub fn finding_from_pb(index: usize, f: pb::FindingInput) -> Result<NewFinding> {
    let field = |name: &'static str| -> &'static str { name };
    let severity = match pb::Severity::try_from(f.severity) {
        Ok(pb::Severity::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "findings.severity",
                format!("finding {index}: severity must be INFO, LOW, MEDIUM, HIGH or CRITICAL"),
            ));
        }
        Ok(s) => Severity::from_rank(s as i64).ok_or_else(|| {
            Error::invalid(
                "findings.severity",
                format!("finding {index}: unknown severity"),
            )
        })?,
    };
    if f.rule_id.trim().is_empty() {
        return Err(Error::invalid(
            "findings.rule_id",
            format!("finding {index}: is required"),
        ));
    }
    if f.title.trim().is_empty() {
        return Err(Error::invalid(
            "findings.title",
            format!("finding {index}: is required"),
        ));
    }
    let at = |e: Error| match e {
        Error::InvalidArgument { field, reason } => Error::InvalidArgument {
            field,
            reason: format!("finding {index}: {reason}"),
        },
        other => other,
    };
    validate_text(field("findings.rule_id"), &f.rule_id, MAX_SHORT).map_err(at)?;
    validate_text(field("findings.category"), &f.category, MAX_SHORT).map_err(at)?;
    validate_text(field("findings.title"), &f.title, MAX_TITLE).map_err(at)?;
    validate_text(
        field("findings.description"),
        &f.description,
        MAX_DESCRIPTION,
    )
    .map_err(at)?;
    validate_text(field("findings.location"), &f.location, MAX_LOCATION).map_err(at)?;
    validate_text(field("findings.snippet"), &f.snippet, MAX_SNIPPET).map_err(at)?;
    Ok(NewFinding {
        rule_id: f.rule_id,
        severity,
        title: f.title,
        description: f.description,
        location: f.location,
        line: f.line,
        category: f.category,
        snippet: f.snippet,
    })
}

/// A required target reference; `field` names it in errors.
pub fn target_from(field: &'static str, target: Option<pb::TargetRef>) -> Result<Target> {
    let target = target.ok_or_else(|| Error::invalid(field, "is required"))?;
    let kind = kind_from(field, target.kind)?
        .ok_or_else(|| Error::invalid(field, "kind is required (skill or mcp)"))?;
    names::target_name("target.name", &target.name)?;
    Ok(Target {
        kind,
        name: target.name,
    })
}

/// An optional target filter: absent or empty means every target.
pub fn target_filter(field: &'static str, target: Option<pb::TargetRef>) -> Result<Option<Target>> {
    match target {
        Some(t) if !(t.kind == 0 && t.name.is_empty()) => Ok(Some(target_from(field, Some(t))?)),
        _ => Ok(None),
    }
}

/// A target kind; unspecified is `None`.
pub fn kind_from(field: &'static str, kind: i32) -> Result<Option<TargetKind>> {
    match pb::TargetKind::try_from(kind) {
        Ok(pb::TargetKind::Unspecified) => Ok(None),
        Ok(pb::TargetKind::Skill) => Ok(Some(TargetKind::Skill)),
        Ok(pb::TargetKind::Mcp) => Ok(Some(TargetKind::Mcp)),
        Err(_) => Err(Error::invalid(field, format!("unknown target kind {kind}"))),
    }
}

/// A severity; unspecified is `None`.
pub fn severity_from(field: &'static str, severity: i32) -> Result<Option<Severity>> {
    match pb::Severity::try_from(severity) {
        Ok(pb::Severity::Unspecified) => Ok(None),
        Ok(s) => Ok(Severity::from_rank(s as i64)),
        Err(_) => Err(Error::invalid(
            field,
            format!("unknown severity {severity}"),
        )),
    }
}

/// An enforcement action; unspecified is refused.
pub fn action_from(action: i32) -> Result<EnforcementAction> {
    match pb::EnforcementAction::try_from(action) {
        Ok(pb::EnforcementAction::Block) => Ok(EnforcementAction::Block),
        Ok(pb::EnforcementAction::Allow) => Ok(EnforcementAction::Allow),
        Ok(pb::EnforcementAction::Unblock) => Ok(EnforcementAction::Unblock),
        _ => Err(Error::invalid("action", "must be block, allow or unblock")),
    }
}

/// Connection declarations: only on an allow of an MCP server.
pub fn connections_from(
    target: &Target,
    action: EnforcementAction,
    declared: Vec<pb::ConnectionDeclaration>,
) -> Result<Vec<ConnectionDecl>> {
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    if target.kind != TargetKind::Mcp || action != EnforcementAction::Allow {
        return Err(Error::invalid(
            "connections",
            "are only for allowing an MCP server",
        ));
    }
    if declared.len() > MAX_CONNECTIONS {
        return Err(Error::invalid("connections", "at most 32"));
    }
    let mut out: Vec<ConnectionDecl> = Vec::new();
    for d in declared {
        names::connection_name("connections.connection", &d.connection)?;
        validate_scopes("connections.scopes", &d.scopes)?;
        if out.iter().any(|o| o.connection == d.connection) {
            return Err(Error::invalid(
                "connections",
                format!("{} is declared twice", quoted(&d.connection)),
            ));
        }
        out.push(ConnectionDecl {
            connection: d.connection,
            scopes: d.scopes,
        });
    }
    Ok(out)
}

/// Wire form of a target kind.
pub fn pb_kind(kind: TargetKind) -> i32 {
    match kind {
        TargetKind::Skill => pb::TargetKind::Skill as i32,
        TargetKind::Mcp => pb::TargetKind::Mcp as i32,
    }
}

/// Wire form of a target.
pub fn pb_target(t: &Target) -> pb::TargetRef {
    pb::TargetRef {
        kind: pb_kind(t.kind),
        name: t.name.clone(),
    }
}

/// Wire form of a decision.
pub fn pb_decision(d: &Decision) -> pb::Decision {
    pb::Decision {
        state: match d.state {
            EnforcementState::None => pb::EnforcementState::None,
            EnforcementState::Blocked => pb::EnforcementState::Blocked,
            EnforcementState::Allowed => pb::EnforcementState::Allowed,
        } as i32,
        reason: d.reason.clone(),
        decided_by: d.decided_by.clone(),
        decided_at: d.decided_at.clone(),
    }
}

/// Wire form of a target with its decision and open findings.
pub fn pb_summary(row: &TargetRow) -> pb::TargetSummary {
    pb::TargetSummary {
        target: Some(pb_target(&row.target)),
        decision: Some(pb_decision(&row.decision)),
        open_findings: row.open_findings,
        max_open_severity: row.max_open_severity.map_or(0, |s| s as i32),
    }
}

/// Wire form of a stored finding.
pub fn pb_finding(f: &FindingRow) -> pb::Finding {
    let (dismissed_by, dismissed_at, dismiss_reason) = f.dismissed.clone().unwrap_or_default();
    pb::Finding {
        id: f.id,
        target: Some(pb_target(&f.target)),
        scanner: f.scanner.clone(),
        rule_id: f.rule_id.clone(),
        severity: f.severity as i32,
        title: f.title.clone(),
        description: f.description.clone(),
        location: f.location.clone(),
        line: f.line,
        category: f.category.clone(),
        snippet: f.snippet.clone(),
        created_at: f.created_at.clone(),
        dismissed: f.dismissed.is_some(),
        dismissed_by,
        dismissed_at,
        dismiss_reason,
    }
}

/// Wire form of one scanned target and its admission decision.
pub fn pb_scan_result(r: &ScanResult) -> pb::ScanResult {
    pb::ScanResult {
        target: Some(pb_target(&r.target)),
        path: r.path.clone(),
        max_severity: r.max_severity.map_or(0, |s| s as i32),
        findings: r.findings.iter().map(pb_finding).collect(),
        duration_ms: r.duration_ms,
        notes: r.notes.clone(),
        decision: r.decision.clone(),
        decision_reason: r.decision_reason.clone(),
        audit_seq: r.audit_seq,
        scanners: r.scanners.clone(),
        scanner_errors: r.scanner_errors.clone(),
    }
}

/// Wire form of an actor.
pub fn pb_actor(a: &Actor) -> pb::Actor {
    pb::Actor {
        id: a.id.clone(),
        name: a.name.clone(),
        auth_method: a.auth_method.clone(),
        uid: a.uid.unwrap_or(u32::MAX),
        gid: a.gid.unwrap_or(u32::MAX),
        pid: a.pid.unwrap_or(0),
        email: a.email.clone().unwrap_or_default(),
        issuer: a.issuer.clone().unwrap_or_default(),
        client_id: a.client_id.clone().unwrap_or_default(),
    }
}

/// Wire form of a stored audit entry.
pub fn pb_entry(e: &Entry) -> pb::AuditEntry {
    let kind = e.target_kind.parse::<TargetKind>().ok();
    pb::AuditEntry {
        seq: e.seq,
        ts: e.ts.clone(),
        action: e.action.clone(),
        target: kind.map(|k| pb::TargetRef {
            kind: pb_kind(k),
            name: e.target_name.clone(),
        }),
        severity: e.severity.parse::<Severity>().map_or(0, |s| s as i32),
        outcome: e.outcome.clone(),
        reason: e.reason.clone(),
        details_json: e.details.clone(),
        actor: Some(pb_actor(&e.actor())),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// Wire form of an export sink's state; `head_seq` gives its lag.
pub fn pb_exporter(s: &crate::export::SinkStatus, head_seq: u64) -> pb::ExporterStatus {
    pb::ExporterStatus {
        name: s.name.clone(),
        kind: s.kind.clone(),
        state: s.state.as_str().to_owned(),
        cursor: s.cursor,
        lag: head_seq.saturating_sub(s.cursor),
        last_error: s.last_error.clone().unwrap_or_default(),
        last_success_at: s.last_success_at.clone().unwrap_or_default(),
    }
}

/// Wire form of the audit chain's head.
pub fn pb_head(h: &Head) -> pb::AuditHead {
    pb::AuditHead {
        seq: h.seq,
        hash: h.hash.clone(),
    }
}

/// A recorded head `SEQ:HASH`; empty means none.
pub fn head_from(head: &str) -> Result<Option<Head>> {
    if head.is_empty() {
        return Ok(None);
    }
    Head::parse(head)
        .map(Some)
        .ok_or_else(|| Error::invalid("head", "expected SEQ:HASH (64 hex digits)"))
}

/// Wire form of an audit chain check.
pub fn pb_verification(v: Verification) -> pb::VerifyAuditReply {
    pb::VerifyAuditReply {
        ok: v.ok,
        entries_checked: v.entries_checked,
        head: Some(pb_head(&v.head)),
        first_bad_seq: v.first_bad_seq.unwrap_or(0),
        problem: v.problem.unwrap_or_default(),
    }
}

/// Wire form of a target's verdict.
pub fn pb_check(verdict: Verdict) -> pb::CheckReply {
    match verdict {
        Verdict::Unknown => pb::CheckReply {
            verdict: pb::Verdict::Unknown as i32,
            ..Default::default()
        },
        Verdict::Allowed(d) => pb::CheckReply {
            verdict: pb::Verdict::Allowed as i32,
            reason: d.reason,
            decided_by: d.decided_by,
            decided_at: d.decided_at,
        },
        Verdict::Blocked(d) => pb::CheckReply {
            verdict: pb::Verdict::Blocked as i32,
            reason: d.reason,
            decided_by: d.decided_by,
            decided_at: d.decided_at,
        },
    }
}

/// Wire form of the authentication mode.
pub fn pb_auth_mode(mode: AuthMode) -> String {
    match mode {
        AuthMode::Local => "local".into(),
        AuthMode::Oidc => "oidc".into(),
    }
}

/// Wire form of the daemon's counts (targets from memory, open findings from
/// the store, audit entries from the head's seq: the chain has no gaps).
pub fn pb_counts(v: &StatusView) -> pb::TargetCounts {
    let (targets, blocked, allowed) = v.targets;
    pb::TargetCounts {
        targets,
        blocked,
        allowed,
        open_findings: v.open_findings,
        audit_entries: v.head.seq,
    }
}

/// Wire form of the OpenClaw monitor's status.
pub fn pb_openclaw_status(
    s: GatewayStatus,
    pending_enforcements: usize,
    gate: crate::governance::tool_gate::GateCounts,
    gate_setup: Option<GateView>,
) -> pb::OpenClawStatus {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    pb::OpenClawStatus {
        state,
        url: s.url,
        server_version: s.server_version.unwrap_or_default(),
        protocol: s.protocol.unwrap_or(0),
        scopes: s.scopes,
        missing_scopes: s.missing_scopes,
        last_event_at: s.last_event_at.unwrap_or_default(),
        last_error: s.last_error.unwrap_or_default(),
        gateway_check: s.gateway_check.unwrap_or_default(),
        pending_enforcements: u32::try_from(pending_enforcements).unwrap_or(u32::MAX),
        gate: Some(pb_openclaw_gate(gate, gate_setup)),
    }
}

/// Wire form of the gate: the plugin and exec policy as last read from the
/// gateway (empty before the first read), and the daemon's decisions.
fn pb_openclaw_gate(
    counts: crate::governance::tool_gate::GateCounts,
    setup: Option<GateView>,
) -> pb::OpenClawGate {
    let setup = setup.unwrap_or_default();
    pb::OpenClawGate {
        plugin: setup.plugin,
        version: setup.version.unwrap_or_default(),
        exec_policy: setup.exec_policy,
        last_decision_at: counts.last_decision_at.unwrap_or_default(),
        decisions: Some(pb::GateDecisions {
            allowed: counts.allowed,
            denied: counts.denied,
            approved: counts.approved,
            timed_out: counts.timed_out,
        }),
    }
}

/// Wire form of one setting `openclaw setup` manages.
pub fn pb_gate_change(c: &GateChange) -> pb::OpenClawSetupChange {
    pb::OpenClawSetupChange {
        path: c.path.clone(),
        before: c.before.to_string(),
        after: c.after.to_string(),
        changed: c.changed,
    }
}

fn rfc3339_of_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(format_ts)
        .unwrap_or_default()
}

/// The short form of a pending step-up.
pub fn pb_pending(r: &StepUpRow) -> pb::StepUpPending {
    pb::StepUpPending {
        request_id: r.id.clone(),
        binding_message: r.binding_message.clone(),
        approver: r.approver_sub.clone(),
        expires_at: rfc3339_of_unix(r.deadline),
        action: r.action.as_str().into(),
    }
}

/// Wire form of a step-up request.
pub fn pb_stepup(r: &StepUpRow) -> pb::StepUp {
    pb::StepUp {
        id: r.id.clone(),
        target: Some(pb_target(&r.target)),
        action: r.action.as_str().into(),
        reason: r.reason.clone(),
        finding_id: r.finding_id.unwrap_or(0),
        requester: Some(pb_actor(&r.requester)),
        approver_sub: r.approver_sub.clone(),
        binding_message: r.binding_message.clone(),
        created_at: r.created_at.clone(),
        expires_at: rfc3339_of_unix(r.deadline),
        status: r.status.as_str().to_owned(),
        outcome_reason: r.outcome_reason.clone(),
        decided_at: r.decided_at.clone().unwrap_or_default(),
        approver_json: r
            .approver
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    }
}

/// Wire form of an OpenClaw approval the monitor saw.
pub fn pb_approval(a: ApprovalView) -> pb::OpenClawApproval {
    pb::OpenClawApproval {
        id: a.id,
        kind: match a.kind {
            ApprovalKind::Exec => "exec".into(),
            ApprovalKind::Plugin => "plugin".into(),
        },
        subject: a.subject,
        session_key: a.session_key.unwrap_or_default(),
        agent_id: a.agent_id.unwrap_or_default(),
        created_at_ms: a.created_at_ms.unwrap_or(0),
        expires_at_ms: a.expires_at_ms.unwrap_or(0),
        decision: a.decision,
        reason: a.reason,
        resolved_decision: a.resolved_decision.unwrap_or_default(),
        resolved_by: a.resolved_by.unwrap_or_default(),
    }
}

/// Wire form of a connection grant.
pub fn pb_grant(g: &GrantRow) -> pb::ConnectionGrant {
    pb::ConnectionGrant {
        server: g.server.clone(),
        connection: g.connection.clone(),
        declared_scopes: g.declared_scopes.clone(),
        granted_scopes: g.granted_scopes.clone(),
        approved_by: g.approved_by.clone(),
        approved_at: g.approved_at.clone(),
        last_used: g.last_used.clone().unwrap_or_default(),
        use_count: g.use_count,
        status: g.status.as_str().to_owned(),
        status_reason: g.status_reason.clone(),
        unattended: g.subject.is_some(),
    }
}

/// Wire form of a linked account.
pub fn pb_account(a: &LinkedAccountRow) -> pb::LinkedAccount {
    pb::LinkedAccount {
        sub: a.sub.clone(),
        connection: a.connection.clone(),
        account_id: a.account_id.clone(),
        linked_at: a.linked_at.clone(),
    }
}

/// What happened at the identity provider for `connections revoke --at-provider`.
pub fn pb_provider_revocation(
    p: &crate::governance::vault::revocation::ProviderRevocation,
) -> pb::ProviderRevocation {
    pb::ProviderRevocation {
        outcome: p.outcome.to_owned(),
        endpoint: p.endpoint.clone().unwrap_or_default(),
        subject_sub: p.subject_sub.clone().unwrap_or_default(),
        error: p.error.clone().unwrap_or_default(),
        shared_with: p.shared_with.clone(),
    }
}

/// A quarantine record on the wire.
pub fn pb_quarantine_record(r: &crate::store::quarantine::QuarantineRow) -> pb::QuarantineRecord {
    pb::QuarantineRecord {
        name: r.name.clone(),
        original_path: r.original_path.clone(),
        stored_path: r.stored_path.clone(),
        state: r.state.as_str().to_owned(),
        reason: r.reason.clone(),
        quarantined_by: r.quarantined_by.clone(),
        quarantined_at: r.quarantined_at.clone(),
    }
}

/// A quarantine or restore on the wire.
pub fn pb_quarantine(o: &crate::governance::quarantine::QuarantineOutcome) -> pb::QuarantineReply {
    pb::QuarantineReply {
        record: Some(pb_quarantine_record(&o.record)),
        how: o.how.to_owned(),
        notes: o.notes.clone(),
        audit_seq: o.audit_seq,
    }
}

/// A `Diagnose` check on the wire.
pub fn pb_diagnostic(check: crate::doctor::Check) -> pb::DiagnosticCheck {
    use crate::doctor::CheckState;
    use pb::diagnostic_check::State;
    let state = match check.state {
        CheckState::Ok => State::Ok,
        CheckState::Warn => State::Warn,
        CheckState::Fail => State::Fail,
    };
    pb::DiagnosticCheck {
        name: check.name.to_owned(),
        state: state as i32,
        detail: check.detail,
        fix: check.fix,
    }
}

/// The `auth-ibom/v1` document as the JSON the reply carries, refused when it
/// would not fit in a reply of `max_bytes`.
pub fn pb_ibom(
    doc: &defenseclaw_common::ibom::Document,
    max_bytes: usize,
) -> crate::error::Result<pb::ExportConnectionsReply> {
    let document_json = serde_json::to_string(doc)
        .map_err(|e| crate::error::Error::Internal(format!("encoding the inventory: {e}")))?;
    if document_json.len() > max_bytes {
        return Err(crate::error::Error::ResourceExhausted(format!(
            "the inventory is {} bytes, more than one reply carries ({max_bytes}); export a shorter period with --since",
            document_json.len()
        )));
    }
    Ok(pb::ExportConnectionsReply { document_json })
}
