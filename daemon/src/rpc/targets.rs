//! Adapters for targets: listing and reading them, the hot-path check,
//! changing enforcement, and scanning (with admission).

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{
    action_from, connections_from, kind_from, pb_check, pb_finding, pb_pending, pb_scan_result,
    pb_summary, target_from,
};
use super::service::ControlService;
use crate::error::Error;
use crate::governance::admission::ScanRequest;
use crate::governance::enforcement::EnforcementOutcome;
use crate::model::{MAX_REASON_BYTES, validate_text};
use crate::names;

pub(super) async fn list_targets(
    svc: &ControlService,
    request: Request<pb::ListTargetsRequest>,
) -> Result<Response<pb::ListTargetsReply>, Status> {
    svc.authorize(&request, "ListTargets", Need::Read).await?;
    let kind = kind_from("kind", request.get_ref().kind)?;
    let rows = svc.gov.list_targets(kind).await?;
    Ok(Response::new(pb::ListTargetsReply {
        targets: rows.iter().map(pb_summary).collect(),
    }))
}

pub(super) async fn get_target(
    svc: &ControlService,
    request: Request<pb::TargetRef>,
) -> Result<Response<pb::TargetDetail>, Status> {
    svc.authorize(&request, "GetTarget", Need::Read).await?;
    let target = target_from("target", Some(request.into_inner()))?;
    let detail = svc.gov.target_detail(target).await?;
    Ok(Response::new(pb::TargetDetail {
        summary: Some(pb_summary(&detail.summary)),
        findings: detail.findings.iter().map(pb_finding).collect(),
        pending: detail.pending.as_ref().map(pb_pending),
    }))
}

pub(super) async fn set_enforcement(
    svc: &ControlService,
    request: Request<pb::SetEnforcementRequest>,
) -> Result<Response<pb::SetEnforcementReply>, Status> {
    let actor = svc
        .authorize(&request, "SetEnforcement", Need::Operate)
        .await?;
    let req = request.into_inner();
    let target = target_from("target", req.target)?;
    let action = action_from(req.action)?;
    validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
    let connections = connections_from(&target, action, req.connections)?;
    let reply = match svc
        .gov
        .set_enforcement(actor, target, action, req.reason, connections)
        .await?
    {
        EnforcementOutcome::Pending { request, summary } => pb::SetEnforcementReply {
            target: summary.as_ref().map(pb_summary),
            changed: false,
            audit_seq: 0,
            pending: Some(pb_pending(&request)),
        },
        EnforcementOutcome::Done {
            summary,
            changed,
            audit_seq,
        } => pb::SetEnforcementReply {
            target: Some(pb_summary(&summary)),
            changed,
            audit_seq,
            pending: None,
        },
    };
    Ok(Response::new(reply))
}

/// The hot path of runtime enforcers: answered from memory, refusals coalesced.
pub(super) async fn check_target(
    svc: &ControlService,
    request: Request<pb::TargetRef>,
) -> Result<Response<pb::CheckReply>, Status> {
    if let Err(refusal) = svc.authn.check_read(&request, "CheckTarget").await {
        return Err(svc.refuse(refusal).await.into());
    }
    let req = request.get_ref();
    let kind = kind_from("target", req.kind)?
        .ok_or_else(|| Error::invalid("target", "kind is required"))?;
    names::target_name("target.name", &req.name)?;
    Ok(Response::new(pb_check(svc.gov.check(kind, &req.name))))
}

pub(super) async fn scan_target(
    svc: &ControlService,
    request: Request<pb::ScanTargetRequest>,
) -> Result<Response<pb::ScanTargetReply>, Status> {
    let actor = svc.authorize(&request, "ScanTarget", Need::Operate).await?;
    let req = request.into_inner();
    let kind = kind_from("kind", req.kind)?
        .ok_or_else(|| Error::invalid("kind", "is required (skill or mcp)"))?;
    validate_text("path", &req.path, 4096)?;
    if !req.server.is_empty() {
        names::server_name("server", &req.server)?;
    }
    let scan = ScanRequest {
        kind,
        path: std::path::PathBuf::from(&req.path),
        name: (!req.name.is_empty()).then_some(req.name),
        server: (!req.server.is_empty()).then_some(req.server),
        install: req.install,
    };
    let results = svc.gov.scan(actor, scan).await?;
    Ok(Response::new(pb::ScanTargetReply {
        results: results.iter().map(pb_scan_result).collect(),
    }))
}
