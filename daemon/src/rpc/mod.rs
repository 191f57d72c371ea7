//! The gRPC `Control` service: validates input, identifies and authorises the
//! caller, calls the store, converts to wire types. Errors become statuses in
//! one place ([`crate::error`]).

pub mod access;
pub mod authn;
pub mod convert;
pub mod streams;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use defenseclaw_proto::v1 as pb;
use pb::control_server::Control;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::audit::{Entry, Head};
use crate::error::{Error, Result};
use crate::events::EnforcementChanged;
use crate::governance::protection::{Change, Ruling};
use crate::model::{
    Actor, Decision, EnforcementAction, EnforcementState, MAX_REASON_BYTES, Severity, Target,
    TargetKind, validate_text,
};
use crate::names;
use crate::rpc::authn::{Authenticator, Need};
use crate::state::{StateCache, Verdict};
use crate::store::{AuditQuery, FindingRow, ReportOrigin, Store, TargetRow, WriteEffect, WriteOp};

/// Most findings one scan report may carry.
pub const MAX_FINDINGS_PER_REPORT: usize = 10_000;
/// Default and largest page of `ListAudit`.
const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 10_000;

/// Shared daemon state the service works on.
pub struct ControlService {
    pub(crate) store: Store,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) authn: Arc<Authenticator>,
    pub(crate) started: Instant,
    pub(crate) socket: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) enforcement: broadcast::Sender<EnforcementChanged>,
    pub(crate) openclaw: crate::openclaw::MonitorHandle,
    pub(crate) admission: crate::governance::admission::Admission,
    pub(crate) stepups: Arc<crate::governance::stepup::StepUps>,
    pub(crate) vault: Arc<crate::governance::vault::TokenBroker>,
    pub(crate) coalescer: Arc<crate::audit_coalesce::AuditCoalescer>,
    pub(crate) streams: crate::rpc::streams::StreamLimits,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEntry, Status>> + Send + 'static>>;

impl ControlService {
    fn openclaw_status(&self) -> pb::OpenClawStatus {
        let s = self.openclaw.status();
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
            pending_enforcements: u32::try_from(self.openclaw.pending_enforcement_count())
                .unwrap_or(u32::MAX),
        }
    }

    /// Identifies the caller of `rpc` and checks it may do what `need` says; a
    /// refusal is itself audited before the caller hears of it.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        need: Need,
    ) -> Result<Actor> {
        match self.authn.identify(request, rpc, need).await {
            Ok(actor) => Ok(actor),
            Err(refusal) => Err(self.refuse(refusal).await),
        }
    }

    /// A re-declaration by anyone but the approver whose refresh token a grant
    /// keeps drops that credential (and its cached tokens) at once, approved or not.
    async fn drop_foreign_credentials(
        &self,
        server: &str,
        connections: &[crate::store::connections::ConnectionDecl],
        actor: &Actor,
    ) -> Result<()> {
        let effect = self
            .store
            .write(WriteOp::DropForeignCredentials {
                server: server.to_owned(),
                connections: connections.iter().map(|c| c.connection.clone()).collect(),
                keep_sub: actor.id.clone(),
                actor: actor.clone(),
            })
            .await?;
        let WriteEffect::CredentialsDropped { dropped } = effect else {
            return Err(unexpected(&effect));
        };
        for (connection, _) in &dropped {
            self.vault.forget_others(server, connection, &actor.id);
        }
        Ok(())
    }

    /// Audits a refused call (coalesced with its like), then hands back the
    /// error for the caller.
    async fn refuse(&self, refusal: crate::rpc::authn::Refusal) -> Error {
        if let Err(e) = self
            .coalescer
            .record(refusal.coalesce_key, refusal.audit)
            .await
        {
            tracing::error!(error = %e, "could not audit a refused call");
        }
        refusal.error
    }
}

fn target_from(field: &'static str, target: Option<pb::TargetRef>) -> Result<Target> {
    let target = target.ok_or_else(|| Error::invalid(field, "is required"))?;
    let kind = kind_from(field, target.kind)?
        .ok_or_else(|| Error::invalid(field, "kind is required (skill or mcp)"))?;
    names::target_name("target.name", &target.name)?;
    Ok(Target {
        kind,
        name: target.name,
    })
}

/// Connection declarations: only on an allow of an MCP server.
fn connections_from(
    target: &Target,
    action: EnforcementAction,
    declared: Vec<pb::ConnectionDeclaration>,
) -> Result<Vec<crate::store::connections::ConnectionDecl>> {
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    if target.kind != TargetKind::Mcp || action != EnforcementAction::Allow {
        return Err(Error::invalid(
            "connections",
            "are only for allowing an MCP server",
        ));
    }
    if declared.len() > 32 {
        return Err(Error::invalid("connections", "at most 32"));
    }
    let mut out: Vec<crate::store::connections::ConnectionDecl> = Vec::new();
    for d in declared {
        names::connection_name("connections.connection", &d.connection)?;
        crate::governance::vault::validate_scopes("connections.scopes", &d.scopes)?;
        if out.iter().any(|o| o.connection == d.connection) {
            return Err(Error::invalid(
                "connections",
                format!("{} is declared twice", crate::error::quoted(&d.connection)),
            ));
        }
        out.push(crate::store::connections::ConnectionDecl {
            connection: d.connection,
            scopes: d.scopes,
        });
    }
    Ok(out)
}

fn pb_grant(g: &crate::store::connections::GrantRow) -> pb::ConnectionGrant {
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

fn pb_account(a: &crate::store::connections::LinkedAccountRow) -> pb::LinkedAccount {
    pb::LinkedAccount {
        sub: a.sub.clone(),
        connection: a.connection.clone(),
        account_id: a.account_id.clone(),
        linked_at: a.linked_at.clone(),
    }
}

fn kind_from(field: &'static str, kind: i32) -> Result<Option<TargetKind>> {
    match pb::TargetKind::try_from(kind) {
        Ok(pb::TargetKind::Unspecified) => Ok(None),
        Ok(pb::TargetKind::Skill) => Ok(Some(TargetKind::Skill)),
        Ok(pb::TargetKind::Mcp) => Ok(Some(TargetKind::Mcp)),
        Err(_) => Err(Error::invalid(field, format!("unknown target kind {kind}"))),
    }
}

fn severity_from(field: &'static str, severity: i32) -> Result<Option<Severity>> {
    match pb::Severity::try_from(severity) {
        Ok(pb::Severity::Unspecified) => Ok(None),
        Ok(s) => Ok(Severity::from_rank(s as i64)),
        Err(_) => Err(Error::invalid(
            field,
            format!("unknown severity {severity}"),
        )),
    }
}

fn pb_kind(kind: TargetKind) -> i32 {
    match kind {
        TargetKind::Skill => pb::TargetKind::Skill as i32,
        TargetKind::Mcp => pb::TargetKind::Mcp as i32,
    }
}

fn pb_target(t: &Target) -> pb::TargetRef {
    pb::TargetRef {
        kind: pb_kind(t.kind),
        name: t.name.clone(),
    }
}

fn pb_decision(d: &Decision) -> pb::Decision {
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

fn pb_summary(row: &TargetRow) -> pb::TargetSummary {
    pb::TargetSummary {
        target: Some(pb_target(&row.target)),
        decision: Some(pb_decision(&row.decision)),
        open_findings: row.open_findings,
        max_open_severity: row.max_open_severity.map_or(0, |s| s as i32),
    }
}

pub(crate) fn pb_finding(f: &FindingRow) -> pb::Finding {
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

fn pb_head(h: &Head) -> pb::AuditHead {
    pb::AuditHead {
        seq: h.seq,
        hash: h.hash.clone(),
    }
}

fn unexpected(effect: &WriteEffect) -> Error {
    Error::Internal(format!("unexpected write effect {effect:?}"))
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let actor = self.authorize(&request, "GetStatus", Need::Read).await?;
        let open_findings = self.store.open_findings().await?;
        let settings = self.authn.settings();
        let jwks = self.authn.jwks_health();
        let auth = pb::AuthStatus {
            mode: match settings.mode {
                crate::oidc::AuthMode::Local => "local".into(),
                crate::oidc::AuthMode::Oidc => "oidc".into(),
            },
            issuer: settings.issuer_url().unwrap_or_default(),
            audience: settings.audience.clone().unwrap_or_default(),
            jwks_keys: jwks
                .as_ref()
                .map_or(0, |h| u32::try_from(h.keys).unwrap_or(u32::MAX)),
            jwks_serving_stale: jwks.as_ref().is_some_and(|h| h.serving_stale),
            jwks_last_error: jwks
                .as_ref()
                .and_then(|h| h.last_error.clone())
                .unwrap_or_default(),
            jwks_last_refresh_ok_at: jwks
                .as_ref()
                .and_then(|h| h.last_refresh_ok_at)
                .map(|t| crate::model::format_ts(time::OffsetDateTime::from(t)))
                .unwrap_or_default(),
        };
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            socket: self.socket.clone(),
            store_path: self.store.path().display().to_string(),
            counts: Some({
                // Targets and decisions from memory; the audit count is the head's seq
                // (the chain has no gaps); only open findings need the store.
                let (targets, blocked, allowed) = self.cache.counts();
                pb::TargetCounts {
                    targets,
                    blocked,
                    allowed,
                    open_findings,
                    audit_entries: self.store.head().seq,
                }
            }),
            audit_head: Some(pb_head(&self.store.head())),
            caller: Some(pb_actor(&actor)),
            daemon_pid: std::process::id(),
            auth: Some(auth),
            openclaw: Some(self.openclaw_status()),
        }))
    }

    async fn get_auth_config(
        &self,
        _request: Request<pb::GetAuthConfigRequest>,
    ) -> Result<Response<pb::AuthConfig>, Status> {
        let settings = self.authn.settings();
        Ok(Response::new(pb::AuthConfig {
            mode: match settings.mode {
                crate::oidc::AuthMode::Local => "local".into(),
                crate::oidc::AuthMode::Oidc => "oidc".into(),
            },
            issuer: settings.issuer_url().unwrap_or_default(),
            audience: settings.audience.clone().unwrap_or_default(),
            cli_client_id: settings.cli_client_id.clone().unwrap_or_default(),
            scopes: settings.roles.mapping().into_keys().collect(),
        }))
    }

    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsReply>, Status> {
        self.authorize(&request, "ListTargets", Need::Read).await?;
        let kind = kind_from("kind", request.get_ref().kind)?;
        let rows = self.store.list_targets(kind).await?;
        Ok(Response::new(pb::ListTargetsReply {
            targets: rows.iter().map(pb_summary).collect(),
        }))
    }

    async fn get_target(
        &self,
        request: Request<pb::TargetRef>,
    ) -> Result<Response<pb::TargetDetail>, Status> {
        self.authorize(&request, "GetTarget", Need::Read).await?;
        let target = target_from("target", Some(request.into_inner()))?;
        let row = self
            .store
            .get_target(target.clone())
            .await?
            .ok_or_else(|| Error::NotFound(format!("{} {:?}", target.kind, target.name)))?;
        let (target_kind, target_name) = (target.kind, target.name.clone());
        let findings = self.store.list_findings(Some(target), None, true).await?;
        let pending = match self.cache.held_by(target_kind, &target_name) {
            Some(id) => self
                .store
                .get_stepup(id)
                .await?
                .filter(|r| r.status == "pending")
                .map(|r| pb_pending(&r)),
            None => None,
        };
        Ok(Response::new(pb::TargetDetail {
            summary: Some(pb_summary(&row)),
            findings: findings.iter().map(pb_finding).collect(),
            pending,
        }))
    }

    async fn set_enforcement(
        &self,
        request: Request<pb::SetEnforcementRequest>,
    ) -> Result<Response<pb::SetEnforcementReply>, Status> {
        let actor = self
            .authorize(&request, "SetEnforcement", Need::Operate)
            .await?;
        let req = request.into_inner();
        let target = target_from("target", req.target)?;
        let action = match pb::EnforcementAction::try_from(req.action) {
            Ok(pb::EnforcementAction::Block) => EnforcementAction::Block,
            Ok(pb::EnforcementAction::Allow) => EnforcementAction::Allow,
            Ok(pb::EnforcementAction::Unblock) => EnforcementAction::Unblock,
            _ => return Err(Error::invalid("action", "must be block, allow or unblock").into()),
        };
        validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
        let connections = connections_from(&target, action, req.connections)?;
        if !connections.is_empty() {
            self.drop_foreign_credentials(&target.name, &connections, &actor)
                .await?;
        }
        // Granting credentials to a server keeps the approver's refresh token
        // (sealed) when it can: that takes a human approval.
        let unattended = !connections.is_empty() && self.vault.wants_unattended();
        let change = match action {
            EnforcementAction::Block => Change::Block,
            EnforcementAction::Allow => Change::Allow,
            EnforcementAction::Unblock => Change::Unblock,
        };
        let ruling = self.stepups.protection().rule(&target, change).await?;
        if unattended || ruling == Ruling::NeedsApproval {
            let action = match action {
                EnforcementAction::Block => crate::store::stepup::StepUpAction::Block,
                EnforcementAction::Allow => crate::store::stepup::StepUpAction::Allow,
                EnforcementAction::Unblock => crate::store::stepup::StepUpAction::Unblock,
            };
            let payload = crate::store::stepup::StepUpPayload {
                connections,
                unattended,
            };
            let row = self
                .stepups
                .request(actor, target.clone(), action, req.reason, None, payload)
                .await?;
            let summary = self
                .store
                .get_target(target.clone())
                .await?
                .map(|r| pb_summary(&r));
            return Ok(Response::new(pb::SetEnforcementReply {
                target: summary,
                changed: false,
                audit_seq: 0,
                pending: Some(pb_pending(&row)),
            }));
        }
        let enforce = WriteOp::SetEnforcement {
            target: target.clone(),
            action,
            reason: req.reason,
            actor: actor.clone(),
            details: serde_json::Value::Null,
        };
        let effect = if connections.is_empty() {
            self.store.write(enforce).await?
        } else {
            let grant = WriteOp::GrantConnections {
                server: target.name.clone(),
                grants: connections,
                approved_by: actor.id.clone(),
                subject: None,
                actor,
                details: serde_json::json!({"human_confirmed": false}),
            };
            match self.store.write(WriteOp::All(vec![enforce, grant])).await? {
                WriteEffect::All(effects) => effects
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("empty write effect".into()))?,
                other => return Err(unexpected(&other).into()),
            }
        };
        let WriteEffect::Enforcement {
            decision,
            changed,
            entry,
            open_findings,
        } = effect
        else {
            return Err(unexpected(&effect).into());
        };
        if changed {
            // Nobody listening (no runtime enforcer) is fine.
            let _ = self.enforcement.send(EnforcementChanged {
                target: target.clone(),
                state: decision.state,
            });
        }
        let row = TargetRow {
            target,
            decision,
            open_findings: open_findings.0,
            max_open_severity: open_findings.1,
        };
        Ok(Response::new(pb::SetEnforcementReply {
            target: Some(pb_summary(&row)),
            changed,
            audit_seq: entry.seq,
            pending: None,
        }))
    }

    async fn check_target(
        &self,
        request: Request<pb::TargetRef>,
    ) -> Result<Response<pb::CheckReply>, Status> {
        if let Err(refusal) = self.authn.check_read(&request, "CheckTarget").await {
            return Err(self.refuse(refusal).await.into());
        }
        let req = request.get_ref();
        let kind = kind_from("target", req.kind)?
            .ok_or_else(|| Error::invalid("target", "kind is required"))?;
        names::target_name("target.name", &req.name)?;
        let reply = match self.cache.check(kind, &req.name) {
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
        };
        Ok(Response::new(reply))
    }

    async fn submit_scan_report(
        &self,
        request: Request<pb::ScanReport>,
    ) -> Result<Response<pb::SubmitScanReportReply>, Status> {
        let actor = self
            .authorize(&request, "SubmitScanReport", Need::Operate)
            .await?;
        let report = request.into_inner();
        let target = target_from("target", report.target)?;
        names::scanner_name("scanner", &report.scanner)?;
        // The daemon's own scanners report only through the daemon: a peer using
        // their name could otherwise rewrite what the daemon found.
        if self.admission.scan.is_daemon_scanner(&report.scanner) {
            let reason = format!(
                "scanner name {:?} is reserved for the daemon's own scans; submit reports under another scanner name",
                report.scanner
            );
            let audit = WriteOp::Audit(crate::audit::NewEntry {
                action: "scan-report".into(),
                target: Some(target),
                severity: None,
                outcome: "denied".into(),
                reason: reason.clone(),
                details: serde_json::json!({
                    "scanner": report.scanner,
                    "findings": report.findings.len(),
                    "peer": {"uid": actor.uid, "pid": actor.pid},
                }),
                actor,
            });
            if let Err(e) = self.store.write(audit).await {
                tracing::error!(error = %e, "could not audit a refused scan report");
            }
            return Err(Error::PermissionDenied(reason).into());
        }
        if report.findings.len() > MAX_FINDINGS_PER_REPORT {
            return Err(
                Error::invalid("findings", format!("more than {MAX_FINDINGS_PER_REPORT}")).into(),
            );
        }
        let findings = report
            .findings
            .into_iter()
            .enumerate()
            .map(|(i, f)| crate::rpc::convert::finding_from_pb(i, f))
            .collect::<Result<Vec<_>>>()?;
        let effect = self
            .store
            .write(WriteOp::ScanReport {
                scanner: report.scanner,
                target,
                findings,
                actor,
                origin: ReportOrigin::Peer,
                keep_open_at: self.stepups.protection().report_keeps_open_at(),
            })
            .await?;
        let WriteEffect::Findings { findings, entry } = effect else {
            return Err(unexpected(&effect).into());
        };
        if let Some(target) = findings.first().map(|f| f.target.clone()) {
            let max = findings.iter().map(|f| f.severity).max();
            self.admission.propose_block_if_critical(&target, max).await;
        }
        Ok(Response::new(pb::SubmitScanReportReply {
            findings: findings.iter().map(pb_finding).collect(),
            audit_seq: entry.seq,
        }))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsReply>, Status> {
        self.authorize(&request, "ListFindings", Need::Read).await?;
        let req = request.into_inner();
        let target = match req.target {
            Some(t) if !(t.kind == 0 && t.name.is_empty()) => Some(target_from("target", Some(t))?),
            _ => None,
        };
        let min = severity_from("min_severity", req.min_severity)?;
        let rows = self
            .store
            .list_findings(target, min, req.include_dismissed)
            .await?;
        Ok(Response::new(pb::ListFindingsReply {
            findings: rows.iter().map(pb_finding).collect(),
        }))
    }

    async fn dismiss_finding(
        &self,
        request: Request<pb::DismissFindingRequest>,
    ) -> Result<Response<pb::DismissFindingReply>, Status> {
        let actor = self
            .authorize(&request, "DismissFinding", Need::Operate)
            .await?;
        let req = request.into_inner();
        if req.id == 0 {
            return Err(Error::invalid("id", "is required").into());
        }
        if req.reason.trim().is_empty() {
            return Err(Error::invalid("reason", "is required to dismiss a finding").into());
        }
        validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
        let existing = self
            .store
            .get_finding(req.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("finding {}", req.id)))?;
        if existing.dismissed.is_none()
            && self
                .stepups
                .protection()
                .rule(&existing.target, Change::Dismiss)
                .await?
                == Ruling::NeedsApproval
        {
            let row = self
                .stepups
                .request(
                    actor,
                    existing.target.clone(),
                    crate::store::stepup::StepUpAction::Dismiss,
                    req.reason,
                    Some(req.id),
                    Default::default(),
                )
                .await?;
            return Ok(Response::new(pb::DismissFindingReply {
                finding: Some(pb_finding(&existing)),
                pending: Some(pb_pending(&row)),
            }));
        }
        let effect = self
            .store
            .write(WriteOp::DismissFinding {
                id: req.id,
                reason: req.reason,
                actor,
            })
            .await?;
        let WriteEffect::Dismissed { finding, .. } = effect else {
            return Err(unexpected(&effect).into());
        };
        Ok(Response::new(pb::DismissFindingReply {
            finding: Some(pb_finding(&finding)),
            pending: None,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditReply>, Status> {
        self.authorize(&request, "ListAudit", Need::Read).await?;
        let req = request.into_inner();
        let target = match req.target {
            Some(t) if !(t.kind == 0 && t.name.is_empty()) => Some(target_from("target", Some(t))?),
            _ => None,
        };
        let since = if req.since.is_empty() {
            None
        } else {
            Some(crate::store::normalise_since(&req.since)?)
        };
        let actor = (!req.actor.is_empty()).then_some(req.actor);
        if let Some(a) = &actor {
            validate_text("actor", a, 512)?;
        }
        let limit = match req.limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => n.min(MAX_AUDIT_LIMIT),
        };
        let entries = self
            .store
            .list_audit(AuditQuery {
                limit,
                since,
                actor,
                target,
            })
            .await?;
        Ok(Response::new(pb::ListAuditReply {
            entries: entries.iter().map(pb_entry).collect(),
        }))
    }

    type FollowAuditStream = EntryStream;

    async fn follow_audit(
        &self,
        request: Request<pb::FollowAuditRequest>,
    ) -> Result<Response<Self::FollowAuditStream>, Status> {
        self.authorize(&request, "FollowAudit", Need::Read).await?;
        let req = request.into_inner();
        let store = self.store.clone();
        let cancel = self.cancel.clone();
        // Subscribe before reading the backlog so nothing falls in between.
        let mut live = store.subscribe();
        let mut last = if req.from_start {
            0
        } else if req.after_seq > 0 {
            req.after_seq
        } else {
            store.head().seq
        };
        let (tx, rx) = self.streams.open()?;
        tokio::spawn(async move {
            if catch_up(&store, &tx, &mut last, u64::MAX).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tx.closed() => break,
                    next = live.recv() => match next {
                        Ok(entry) if entry.seq <= last => {}
                        Ok(entry) if entry.seq == last + 1 => {
                            if tx.send(pb_entry(&entry)).await.is_err() { break; }
                            last = entry.seq;
                        }
                        Ok(entry) => {
                            // A gap: fill it from the store, then this entry.
                            if catch_up(&store, &tx, &mut last, entry.seq).await.is_err() { break; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            if catch_up(&store, &tx, &mut last, u64::MAX).await.is_err() { break; }
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }

    type ExportAuditStream = EntryStream;

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.authorize(&request, "ExportAudit", Need::Read).await?;
        let store = self.store.clone();
        let (tx, rx) = self.streams.open()?;
        tokio::spawn(async move {
            let mut last = 0;
            let _ = catch_up(&store, &tx, &mut last, u64::MAX).await;
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn scan_target(
        &self,
        request: Request<pb::ScanTargetRequest>,
    ) -> Result<Response<pb::ScanTargetReply>, Status> {
        let actor = self
            .authorize(&request, "ScanTarget", Need::Operate)
            .await?;
        let req = request.into_inner();
        let kind = kind_from("kind", req.kind)?
            .ok_or_else(|| Error::invalid("kind", "is required (skill or mcp)"))?;
        validate_text("path", &req.path, 4096)?;
        if !req.server.is_empty() {
            names::server_name("server", &req.server)?;
        }
        let results = self
            .admission
            .run(
                actor,
                crate::governance::admission::ScanRequest {
                    kind,
                    path: std::path::PathBuf::from(&req.path),
                    name: (!req.name.is_empty()).then_some(req.name),
                    server: (!req.server.is_empty()).then_some(req.server),
                    install: req.install,
                },
            )
            .await?;
        Ok(Response::new(pb::ScanTargetReply { results }))
    }

    async fn list_step_ups(
        &self,
        request: Request<pb::ListStepUpsRequest>,
    ) -> Result<Response<pb::ListStepUpsReply>, Status> {
        self.authorize(&request, "ListStepUps", Need::Read).await?;
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit.min(10_000)
        };
        let rows = self.store.list_stepups(req.pending_only, limit).await?;
        Ok(Response::new(pb::ListStepUpsReply {
            stepups: rows.iter().map(pb_stepup).collect(),
        }))
    }

    async fn get_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<pb::StepUp>, Status> {
        self.authorize(&request, "GetStepUp", Need::Read).await?;
        let id = request.into_inner().id;
        names::request_id("id", &id)?;
        let row = self
            .store
            .get_stepup(id.clone())
            .await?
            .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
        Ok(Response::new(pb_stepup(&row)))
    }

    type WatchStepUpStream =
        Pin<Box<dyn Stream<Item = Result<pb::StepUp, Status>> + Send + 'static>>;

    async fn watch_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<Self::WatchStepUpStream>, Status> {
        self.authorize(&request, "WatchStepUp", Need::Read).await?;
        let id = request.into_inner().id;
        names::request_id("id", &id)?;
        let (tx, rx) = self.streams.open()?;
        // Subscribe first, then read, so the end cannot slip between the two.
        let mut events = self.stepups.subscribe();
        let row = self
            .store
            .get_stepup(id.clone())
            .await?
            .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
        let cancel = self.cancel.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let done = row.status != "pending";
            if tx.send(pb_stepup(&row)).await.is_err() || done {
                return;
            }
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tx.closed() => break,
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.row.id == id => {
                            let end = ev.row.status != "pending";
                            if tx.send(pb_stepup(&ev.row)).await.is_err() || end { break; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            if let Ok(Some(r)) = store.get_stepup(id.clone()).await && r.status != "pending" {
                                let _ = tx.send(pb_stepup(&r)).await;
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn cancel_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<pb::StepUp>, Status> {
        let actor = self
            .authorize(&request, "CancelStepUp", Need::Operate)
            .await?;
        let id = request.into_inner().id;
        names::request_id("id", &id)?;
        let row = self.stepups.cancel(&id, actor).await?;
        Ok(Response::new(pb_stepup(&row)))
    }

    async fn list_open_claw_approvals(
        &self,
        request: Request<pb::ListOpenClawApprovalsRequest>,
    ) -> Result<Response<pb::ListOpenClawApprovalsReply>, Status> {
        self.authorize(&request, "ListOpenClawApprovals", Need::Read)
            .await?;
        Ok(Response::new(pb::ListOpenClawApprovalsReply {
            approvals: self
                .openclaw
                .approvals()
                .into_iter()
                .map(pb_approval)
                .collect(),
        }))
    }

    async fn get_connection_token(
        &self,
        request: Request<pb::GetConnectionTokenRequest>,
    ) -> Result<Response<pb::ConnectionToken>, Status> {
        let actor = self
            .authorize(&request, "GetConnectionToken", Need::Credential)
            .await?;
        // The caller's own token is the subject of an access-token exchange;
        // only a verified one (auth method oidc) is ever used.
        let bearer = crate::oidc::bearer_from_header(crate::rpc::authn::authorization(&request))
            .ok()
            .map(str::to_owned);
        let req = request.into_inner();
        names::server_name("server", &req.server)?;
        names::connection_name("connection", &req.connection)?;
        let issued = self
            .vault
            .token(
                &actor,
                bearer.as_deref(),
                &req.server,
                &req.connection,
                req.fresh,
            )
            .await?;
        Ok(Response::new(pb::ConnectionToken {
            access_token: issued.token.expose().to_owned(),
            expires_at: issued.expires_at,
            scopes: issued.scopes,
            cached: issued.cached,
            subject: issued.subject.to_owned(),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsReply>, Status> {
        self.authorize(&request, "ListConnections", Need::Read)
            .await?;
        let req = request.into_inner();
        let server = if req.server.is_empty() {
            None
        } else {
            names::server_name("server", &req.server)?;
            Some(req.server)
        };
        let grants = self.store.list_grants(server).await?;
        let accounts = self.store.list_linked_accounts().await?;
        Ok(Response::new(pb::ListConnectionsReply {
            grants: grants.iter().map(pb_grant).collect(),
            accounts: accounts.iter().map(pb_account).collect(),
        }))
    }

    async fn revoke_connection(
        &self,
        request: Request<pb::RevokeConnectionRequest>,
    ) -> Result<Response<pb::RevokeConnectionReply>, Status> {
        let actor = self
            .authorize(&request, "RevokeConnection", Need::Operate)
            .await?;
        let req = request.into_inner();
        names::server_name("server", &req.server)?;
        names::connection_name("connection", &req.connection)?;
        validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
        // Forget first: no token of a grant being revoked is handed out again.
        self.vault.forget(&req.server, Some(&req.connection));
        let effect = self
            .store
            .write(WriteOp::RevokeConnection {
                server: req.server,
                connection: req.connection,
                reason: req.reason,
                actor,
            })
            .await?;
        let WriteEffect::ConnectionRevoked { grant, entry } = effect else {
            return Err(unexpected(&effect).into());
        };
        Ok(Response::new(pb::RevokeConnectionReply {
            grant: Some(pb_grant(&grant)),
            audit_seq: entry.seq,
        }))
    }

    async fn record_connected_account(
        &self,
        request: Request<pb::RecordConnectedAccountRequest>,
    ) -> Result<Response<pb::RecordConnectedAccountReply>, Status> {
        let actor = self
            .authorize(&request, "RecordConnectedAccount", Need::Operate)
            .await?;
        let req = request.into_inner();
        names::connection_name("connection", &req.connection)?;
        names::account_id("account_id", &req.account_id)?;
        let account = crate::store::connections::LinkedAccountRow {
            sub: actor.id.clone(),
            connection: req.connection,
            account_id: req.account_id,
            linked_at: crate::model::now_ts(),
        };
        let effect = self
            .store
            .write(WriteOp::LinkAccount {
                account: account.clone(),
                actor,
            })
            .await?;
        let WriteEffect::AccountLinked { entry } = effect else {
            return Err(unexpected(&effect).into());
        };
        Ok(Response::new(pb::RecordConnectedAccountReply {
            account: Some(pb_account(&account)),
            audit_seq: entry.seq,
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditReply>, Status> {
        self.authorize(&request, "VerifyAudit", Need::Read).await?;
        let req = request.into_inner();
        let expected = if req.head.is_empty() {
            None
        } else {
            Some(
                Head::parse(&req.head)
                    .ok_or_else(|| Error::invalid("head", "expected SEQ:HASH (64 hex digits)"))?,
            )
        };
        let v = self.store.verify_audit(expected).await?;
        Ok(Response::new(pb::VerifyAuditReply {
            ok: v.ok,
            entries_checked: v.entries_checked,
            head: Some(pb_head(&v.head)),
            first_bad_seq: v.first_bad_seq.unwrap_or(0),
            problem: v.problem.unwrap_or_default(),
        }))
    }
}

fn rfc3339_of_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(crate::model::format_ts)
        .unwrap_or_default()
}

/// The short form of a pending step-up.
pub(crate) fn pb_pending(r: &crate::store::stepup::StepUpRow) -> pb::StepUpPending {
    pb::StepUpPending {
        request_id: r.id.clone(),
        binding_message: r.binding_message.clone(),
        approver: r.approver_sub.clone(),
        expires_at: rfc3339_of_unix(r.deadline),
        action: r.action.as_str().into(),
    }
}

/// Wire form of a step-up request.
pub(crate) fn pb_stepup(r: &crate::store::stepup::StepUpRow) -> pb::StepUp {
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
        status: r.status.clone(),
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
fn pb_approval(a: crate::openclaw::ApprovalView) -> pb::OpenClawApproval {
    pb::OpenClawApproval {
        id: a.id,
        kind: match a.kind {
            crate::openclaw::ApprovalKind::Exec => "exec".into(),
            crate::openclaw::ApprovalKind::Plugin => "plugin".into(),
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

/// Entries read from the store at a time for a stream (bounds what one
/// stream holds beyond its queue).
const AUDIT_PAGE: u32 = 100;

/// Sends stored entries with `last < seq <= until` in order, advancing `last`.
/// Errs when the receiver is gone.
async fn catch_up(
    store: &Store,
    tx: &crate::rpc::streams::StreamSender<pb::AuditEntry>,
    last: &mut u64,
    until: u64,
) -> Result<(), ()> {
    loop {
        let page = match store.audit_page(*last, AUDIT_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tx.fail(e.into());
                return Err(());
            }
        };
        if page.is_empty() {
            return Ok(());
        }
        for entry in page {
            if entry.seq > until {
                return Ok(());
            }
            tx.send(pb_entry(&entry)).await.map_err(|_| ())?;
            *last = entry.seq;
        }
    }
}
