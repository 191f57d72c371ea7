//! Adapter for what the OpenClaw monitor saw: the gateway's approvals.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::pb_approval;
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
