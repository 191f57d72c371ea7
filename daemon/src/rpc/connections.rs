//! Adapters for Token Vault connections: handing out a provider token,
//! listing grants and linked accounts, revoking (here and at the provider),
//! recording and unlinking a linked account.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::{Need, authorization};
use super::convert::{pb_account, pb_grant, pb_provider_revocation};
use super::service::ControlService;
use crate::model::{MAX_REASON_BYTES, validate_text};
use crate::names;
use crate::store::StatusChange;

pub(super) async fn get_connection_token(
    svc: &ControlService,
    request: Request<pb::GetConnectionTokenRequest>,
) -> Result<Response<pb::ConnectionToken>, Status> {
    let actor = svc
        .authorize(&request, "GetConnectionToken", Need::Credential)
        .await?;
    // The caller's own token is the subject of an access-token exchange;
    // only a verified one (auth method oidc) is ever used.
    let bearer = crate::oidc::bearer_from_header(authorization(&request))
        .ok()
        .map(str::to_owned);
    let req = request.into_inner();
    names::server_name("server", &req.server)?;
    names::connection_name("connection", &req.connection)?;
    let issued = svc
        .gov
        .connection_token(
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

pub(super) async fn list_connections(
    svc: &ControlService,
    request: Request<pb::ListConnectionsRequest>,
) -> Result<Response<pb::ListConnectionsReply>, Status> {
    svc.authorize(&request, "ListConnections", Need::Read)
        .await?;
    let req = request.into_inner();
    let server = if req.server.is_empty() {
        None
    } else {
        names::server_name("server", &req.server)?;
        Some(req.server)
    };
    let (grants, accounts) = svc.gov.list_connections(server).await?;
    Ok(Response::new(pb::ListConnectionsReply {
        grants: grants.iter().map(pb_grant).collect(),
        accounts: accounts.iter().map(pb_account).collect(),
    }))
}

pub(super) async fn revoke_connection(
    svc: &ControlService,
    request: Request<pb::RevokeConnectionRequest>,
) -> Result<Response<pb::RevokeConnectionReply>, Status> {
    let actor = svc
        .authorize(&request, "RevokeConnection", Need::Operate)
        .await?;
    let req = request.into_inner();
    check_grant_change(&req.server, &req.connection, &req.reason)?;
    if req.at_provider {
        return revoke_at_provider(svc, actor, req).await;
    }
    let (grant, audit_seq) = svc
        .gov
        .revoke_connection(actor, req.server, req.connection, req.reason)
        .await?;
    Ok(Response::new(pb::RevokeConnectionReply {
        grant: Some(pb_grant(&grant)),
        audit_seq,
        at_provider: None,
    }))
}

/// `connections revoke --at-provider`.
async fn revoke_at_provider(
    svc: &ControlService,
    actor: crate::model::Actor,
    req: pb::RevokeConnectionRequest,
) -> Result<Response<pb::RevokeConnectionReply>, Status> {
    let (grant, provider, audit_seq) = svc
        .gov
        .revoke_connection_at_provider(actor, req.server, req.connection, req.reason)
        .await?;
    Ok(Response::new(pb::RevokeConnectionReply {
        grant: Some(pb_grant(&grant)),
        audit_seq,
        at_provider: Some(pb_provider_revocation(&provider)),
    }))
}

/// `connections unlink`: the CLI deleted (or tried to delete) the caller's
/// account at the provider; grants using it become `unlinked`.
pub(super) async fn unlink_connected_account(
    svc: &ControlService,
    request: Request<pb::UnlinkConnectedAccountRequest>,
) -> Result<Response<pb::UnlinkConnectedAccountReply>, Status> {
    let actor = svc
        .authorize(&request, "UnlinkConnectedAccount", Need::Operate)
        .await?;
    let req = request.into_inner();
    names::connection_name("connection", &req.connection)?;
    if !req.account_id.is_empty() {
        names::account_id("account_id", &req.account_id)?;
    }
    if !matches!(
        req.provider_outcome.as_str(),
        "deleted" | "not_found" | "failed"
    ) {
        return Err(crate::error::Error::invalid(
            "provider_outcome",
            "must be deleted, not_found or failed",
        )
        .into());
    }
    validate_text("provider_error", &req.provider_error, MAX_REASON_BYTES)?;
    let mut at_provider = serde_json::json!({"outcome": req.provider_outcome});
    if !req.provider_error.is_empty() {
        at_provider["error"] = serde_json::json!(req.provider_error);
    }
    let unlinked = svc
        .gov
        .unlink_connected_account(actor, req.connection, req.account_id, at_provider)
        .await?;
    Ok(Response::new(pb::UnlinkConnectedAccountReply {
        grants: unlinked.grants.iter().map(pb_grant).collect(),
        record_removed: unlinked.record_removed,
        audit_seq: unlinked.entry.seq,
    }))
}

pub(super) async fn suspend_connection(
    svc: &ControlService,
    request: Request<pb::ConnectionStatusRequest>,
) -> Result<Response<pb::ConnectionStatusReply>, Status> {
    change_status(svc, request, "SuspendConnection", StatusChange::Suspend).await
}

pub(super) async fn resume_connection(
    svc: &ControlService,
    request: Request<pb::ConnectionStatusRequest>,
) -> Result<Response<pb::ConnectionStatusReply>, Status> {
    change_status(svc, request, "ResumeConnection", StatusChange::Resume).await
}

async fn change_status(
    svc: &ControlService,
    request: Request<pb::ConnectionStatusRequest>,
    rpc: &'static str,
    change: StatusChange,
) -> Result<Response<pb::ConnectionStatusReply>, Status> {
    let actor = svc.authorize(&request, rpc, Need::Operate).await?;
    let req = request.into_inner();
    check_grant_change(&req.server, &req.connection, &req.reason)?;
    let (grant, audit_seq) = svc
        .gov
        .change_connection_status(actor, req.server, req.connection, change, req.reason)
        .await?;
    Ok(Response::new(pb::ConnectionStatusReply {
        grant: Some(pb_grant(&grant)),
        audit_seq,
    }))
}

/// The fields every change of one grant carries.
fn check_grant_change(server: &str, connection: &str, reason: &str) -> crate::error::Result<()> {
    names::server_name("server", server)?;
    names::connection_name("connection", connection)?;
    validate_text("reason", reason, MAX_REASON_BYTES)
}

pub(super) async fn record_connected_account(
    svc: &ControlService,
    request: Request<pb::RecordConnectedAccountRequest>,
) -> Result<Response<pb::RecordConnectedAccountReply>, Status> {
    let actor = svc
        .authorize(&request, "RecordConnectedAccount", Need::Operate)
        .await?;
    let req = request.into_inner();
    names::connection_name("connection", &req.connection)?;
    names::account_id("account_id", &req.account_id)?;
    let (account, audit_seq) = svc
        .gov
        .record_connected_account(actor, req.connection, req.account_id)
        .await?;
    Ok(Response::new(pb::RecordConnectedAccountReply {
        account: Some(pb_account(&account)),
        audit_seq,
    }))
}
