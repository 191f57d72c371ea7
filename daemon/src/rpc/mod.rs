//! The gRPC `Control` service as adapters: each RPC decodes its request,
//! identifies and authorises the caller, makes one call into
//! [`crate::governance`] and encodes the reply. Wire conversion lives in
//! [`convert`]; errors become statuses in one place ([`crate::error`]).

pub mod access;
mod audit;
pub mod authn;
mod connections;
pub mod convert;
mod findings;
mod openclaw;
mod service;
mod status;
mod stepup;
pub mod streams;
mod targets;

use defenseclaw_proto::v1 as pb;
use pb::control_server::Control;
use tonic::{Request, Response, Status};

pub use service::ControlService;
use service::ReplyStream;

/// One line per RPC: each adapter lives in the file of its service area.
#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        status::get_status(self, request).await
    }

    async fn get_auth_config(
        &self,
        request: Request<pb::GetAuthConfigRequest>,
    ) -> Result<Response<pb::AuthConfig>, Status> {
        status::get_auth_config(self, request)
    }

    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsReply>, Status> {
        targets::list_targets(self, request).await
    }

    async fn get_target(
        &self,
        request: Request<pb::TargetRef>,
    ) -> Result<Response<pb::TargetDetail>, Status> {
        targets::get_target(self, request).await
    }

    async fn set_enforcement(
        &self,
        request: Request<pb::SetEnforcementRequest>,
    ) -> Result<Response<pb::SetEnforcementReply>, Status> {
        targets::set_enforcement(self, request).await
    }

    async fn check_target(
        &self,
        request: Request<pb::TargetRef>,
    ) -> Result<Response<pb::CheckReply>, Status> {
        targets::check_target(self, request).await
    }

    async fn submit_scan_report(
        &self,
        request: Request<pb::ScanReport>,
    ) -> Result<Response<pb::SubmitScanReportReply>, Status> {
        findings::submit_scan_report(self, request).await
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsReply>, Status> {
        findings::list_findings(self, request).await
    }

    async fn dismiss_finding(
        &self,
        request: Request<pb::DismissFindingRequest>,
    ) -> Result<Response<pb::DismissFindingReply>, Status> {
        findings::dismiss_finding(self, request).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditReply>, Status> {
        audit::list_audit(self, request).await
    }

    type FollowAuditStream = ReplyStream<pb::AuditEntry>;

    async fn follow_audit(
        &self,
        request: Request<pb::FollowAuditRequest>,
    ) -> Result<Response<Self::FollowAuditStream>, Status> {
        audit::follow_audit(self, request).await
    }

    type ExportAuditStream = ReplyStream<pb::AuditEntry>;

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        audit::export_audit(self, request).await
    }

    async fn scan_target(
        &self,
        request: Request<pb::ScanTargetRequest>,
    ) -> Result<Response<pb::ScanTargetReply>, Status> {
        targets::scan_target(self, request).await
    }

    async fn list_step_ups(
        &self,
        request: Request<pb::ListStepUpsRequest>,
    ) -> Result<Response<pb::ListStepUpsReply>, Status> {
        stepup::list_step_ups(self, request).await
    }

    async fn get_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<pb::StepUp>, Status> {
        stepup::get_step_up(self, request).await
    }

    type WatchStepUpStream = ReplyStream<pb::StepUp>;

    async fn watch_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<Self::WatchStepUpStream>, Status> {
        stepup::watch_step_up(self, request).await
    }

    async fn cancel_step_up(
        &self,
        request: Request<pb::StepUpRef>,
    ) -> Result<Response<pb::StepUp>, Status> {
        stepup::cancel_step_up(self, request).await
    }

    async fn list_open_claw_approvals(
        &self,
        request: Request<pb::ListOpenClawApprovalsRequest>,
    ) -> Result<Response<pb::ListOpenClawApprovalsReply>, Status> {
        openclaw::list_open_claw_approvals(self, request).await
    }

    async fn get_connection_token(
        &self,
        request: Request<pb::GetConnectionTokenRequest>,
    ) -> Result<Response<pb::ConnectionToken>, Status> {
        connections::get_connection_token(self, request).await
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsReply>, Status> {
        connections::list_connections(self, request).await
    }

    async fn revoke_connection(
        &self,
        request: Request<pb::RevokeConnectionRequest>,
    ) -> Result<Response<pb::RevokeConnectionReply>, Status> {
        connections::revoke_connection(self, request).await
    }

    async fn record_connected_account(
        &self,
        request: Request<pb::RecordConnectedAccountRequest>,
    ) -> Result<Response<pb::RecordConnectedAccountReply>, Status> {
        connections::record_connected_account(self, request).await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditReply>, Status> {
        audit::verify_audit(self, request).await
    }
}
