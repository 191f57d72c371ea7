//! Adapters for findings: peers' scan reports, listing, dismissal.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{
    finding_from_pb, pb_finding, pb_pending, severity_from, target_filter, target_from,
};
use super::service::ControlService;
use crate::error::Error;
use crate::model::{MAX_REASON_BYTES, validate_text};
use crate::names;

pub(super) async fn submit_scan_report(
    svc: &ControlService,
    request: Request<pb::ScanReport>,
) -> Result<Response<pb::SubmitScanReportReply>, Status> {
    let actor = svc
        .authorize(&request, "SubmitScanReport", Need::Operate)
        .await?;
    let report = request.into_inner();
    let target = target_from("target", report.target)?;
    names::scanner_name("scanner", &report.scanner)?;
    // Decoded lazily: governance refuses a reserved scanner name or too many
    // findings before any finding is looked at.
    let findings = report
        .findings
        .into_iter()
        .enumerate()
        .map(|(i, f)| finding_from_pb(i, f));
    let (findings, audit_seq) = svc
        .gov
        .submit_scan_report(actor, report.scanner, target, findings)
        .await?;
    Ok(Response::new(pb::SubmitScanReportReply {
        findings: findings.iter().map(pb_finding).collect(),
        audit_seq,
    }))
}

pub(super) async fn list_findings(
    svc: &ControlService,
    request: Request<pb::ListFindingsRequest>,
) -> Result<Response<pb::ListFindingsReply>, Status> {
    svc.authorize(&request, "ListFindings", Need::Read).await?;
    let req = request.into_inner();
    let target = target_filter("target", req.target)?;
    let min = severity_from("min_severity", req.min_severity)?;
    let rows = svc
        .gov
        .list_findings(target, min, req.include_dismissed)
        .await?;
    Ok(Response::new(pb::ListFindingsReply {
        findings: rows.iter().map(pb_finding).collect(),
    }))
}

pub(super) async fn dismiss_finding(
    svc: &ControlService,
    request: Request<pb::DismissFindingRequest>,
) -> Result<Response<pb::DismissFindingReply>, Status> {
    let actor = svc
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
    let done = svc.gov.dismiss_finding(actor, req.id, req.reason).await?;
    Ok(Response::new(pb::DismissFindingReply {
        finding: Some(pb_finding(&done.finding)),
        pending: done.pending.as_ref().map(pb_pending),
    }))
}
