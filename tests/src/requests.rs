//! Short builders for the control-plane requests tests send most, so a test
//! reads as what it asks rather than as proto boilerplate.

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

/// A skill target.
pub fn skill(name: &str) -> Option<pb::TargetRef> {
    Some(pb::TargetRef {
        kind: pb::TargetKind::Skill as i32,
        name: name.to_owned(),
    })
}

/// An MCP server target.
pub fn mcp(name: &str) -> Option<pb::TargetRef> {
    Some(pb::TargetRef {
        kind: pb::TargetKind::Mcp as i32,
        name: name.to_owned(),
    })
}

/// A `SetEnforcement` of `action` on `target` with no connections.
pub fn set(
    target: Option<pb::TargetRef>,
    action: pb::EnforcementAction,
    reason: &str,
) -> pb::SetEnforcementRequest {
    pb::SetEnforcementRequest {
        target,
        action: action as i32,
        reason: reason.to_owned(),
        connections: Vec::new(),
    }
}

/// Verifies the audit chain (against a recorded `head`, or none when empty).
pub async fn verify(
    client: &mut ControlClient<Channel>,
    head: &str,
) -> Result<pb::VerifyAuditReply, tonic::Status> {
    client
        .verify_audit(pb::VerifyAuditRequest {
            head: head.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}
