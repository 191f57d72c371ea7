//! Adapters for OpenClaw: the approvals the monitor saw, and `openclaw setup`.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{pb_approval, pb_gate_change};
use super::service::ControlService;

pub(super) async fn list_open_claw_approvals(
    svc: &ControlService,
    request: Request<pb::ListOpenClawApprovalsRequest>,
) -> Result<Response<pb::ListOpenClawApprovalsReply>, Status> {
    svc.authorize(&request, "ListOpenClawApprovals", Need::Read)
        .await?;
    Ok(Response::new(pb::ListOpenClawApprovalsReply {
        approvals: svc
            .gov
            .openclaw_approvals()
            .into_iter()
            .map(pb_approval)
            .collect(),
    }))
}

/// `openclaw setup [--dry-run] [--undo]`: a mutation, by a named operator.
pub(super) async fn open_claw_setup(
    svc: &ControlService,
    request: Request<pb::OpenClawSetupRequest>,
) -> Result<Response<pb::OpenClawSetupReply>, Status> {
    let actor = svc
        .authorize(&request, "OpenClawSetup", Need::Operate)
        .await?;
    let req = request.into_inner();
    let out = svc.gov.openclaw_setup(actor, req.dry_run, req.undo).await?;
    Ok(Response::new(pb::OpenClawSetupReply {
        changes: out.changes.iter().map(pb_gate_change).collect(),
        plugin: out.plugin.unwrap_or_default(),
        audit_seq: out.audit_seq,
        dry_run: req.dry_run,
        undo: req.undo,
    }))
}
