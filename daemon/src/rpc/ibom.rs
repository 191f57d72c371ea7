//! Adapters for the Auth-IBOM export and the end user's own grants
//! (`connections export`, `connections list|revoke --mine`).

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{pb_account, pb_grant, pb_ibom, pb_provider_revocation};
use super::service::ControlService;
use crate::model::{MAX_REASON_BYTES, validate_text};
use crate::names;

/// Largest inventory one reply carries (the CLI accepts up to 64 MiB).
const MAX_IBOM_BYTES: usize = 32 * 1024 * 1024;

pub(super) async fn export_connections(
    svc: &ControlService,
    request: Request<pb::ExportConnectionsRequest>,
) -> Result<Response<pb::ExportConnectionsReply>, Status> {
    svc.authorize(&request, "ExportConnections", Need::Read)
        .await?;
    let req = request.into_inner();
    let since = if req.since.is_empty() {
        None
    } else {
        Some(crate::store::normalise_since(&req.since)?)
    };
    let doc = svc.gov.export_ibom(since).await?;
    Ok(Response::new(pb_ibom(&doc, MAX_IBOM_BYTES)?))
}

pub(super) async fn list_my_connections(
    svc: &ControlService,
    request: Request<pb::ListMyConnectionsRequest>,
) -> Result<Response<pb::ListConnectionsReply>, Status> {
    let actor = svc
        .authorize(&request, "ListMyConnections", Need::Own)
        .await?;
    let (grants, accounts) = svc.gov.my_connections(&actor).await?;
    Ok(Response::new(pb::ListConnectionsReply {
        grants: grants.iter().map(pb_grant).collect(),
        accounts: accounts.iter().map(pb_account).collect(),
    }))
}

pub(super) async fn revoke_my_connection(
    svc: &ControlService,
    request: Request<pb::RevokeConnectionRequest>,
) -> Result<Response<pb::RevokeConnectionReply>, Status> {
    let actor = svc
        .authorize(&request, "RevokeMyConnection", Need::Own)
        .await?;
    let req = request.into_inner();
    names::server_name("server", &req.server)?;
    names::connection_name("connection", &req.connection)?;
    validate_text("reason", &req.reason, MAX_REASON_BYTES)?;
    if req.at_provider {
        return Err(crate::error::Error::invalid(
            "at_provider",
            "revoking at the identity provider is an operator's `connections revoke --at-provider`",
        )
        .into());
    }
    let (grant, provider, audit_seq) = svc
        .gov
        .revoke_my_connection(actor, req.server, req.connection, req.reason)
        .await?;
    Ok(Response::new(pb::RevokeConnectionReply {
        grant: Some(pb_grant(&grant)),
        audit_seq,
        at_provider: provider.as_ref().map(pb_provider_revocation),
    }))
}
