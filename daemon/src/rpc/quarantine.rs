//! Adapters for quarantine: moving a skill's folder out of the agent's reach
//! and back, and listing what is quarantined.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{pb_quarantine, pb_quarantine_record};
use super::service::ControlService;
use crate::model::{MAX_REASON_BYTES, validate_text};

pub(super) async fn quarantine_skill(
    svc: &ControlService,
    request: Request<pb::QuarantineSkillRequest>,
) -> Result<Response<pb::QuarantineReply>, Status> {
    let actor = svc
        .authorize(&request, "QuarantineSkill", Need::Operate)
        .await?;
    let req = request.into_inner();
    crate::names::target_name("name", &req.name)?;
    validate_text("path", &req.path, 4096)?;
    validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
    let path = (!req.path.is_empty()).then(|| std::path::PathBuf::from(&req.path));
    let done = svc
        .gov
        .quarantine_skill(actor, &req.name, path, req.reason)
        .await?;
    Ok(Response::new(pb_quarantine(&done)))
}

pub(super) async fn restore_skill(
    svc: &ControlService,
    request: Request<pb::RestoreSkillRequest>,
) -> Result<Response<pb::QuarantineReply>, Status> {
    let actor = svc
        .authorize(&request, "RestoreSkill", Need::Operate)
        .await?;
    let req = request.into_inner();
    crate::names::target_name("name", &req.name)?;
    let done = svc.gov.restore_skill(actor, &req.name).await?;
    Ok(Response::new(pb_quarantine(&done)))
}

pub(super) async fn list_quarantined(
    svc: &ControlService,
    request: Request<pb::ListQuarantinedRequest>,
) -> Result<Response<pb::ListQuarantinedReply>, Status> {
    svc.authorize(&request, "ListQuarantined", Need::Read)
        .await?;
    let rows = svc.gov.list_quarantined().await?;
    Ok(Response::new(pb::ListQuarantinedReply {
        records: rows.iter().map(pb_quarantine_record).collect(),
    }))
}
