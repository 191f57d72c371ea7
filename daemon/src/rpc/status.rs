//! Adapters for the daemon's status and the authentication settings clients
//! need before they can call anything else.

use defenseclaw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{
    pb_actor, pb_auth_mode, pb_counts, pb_diagnostic, pb_exporter, pb_head, pb_openclaw_status,
};
use super::service::ControlService;
use crate::clock::format_ts;

pub(super) async fn get_status(
    svc: &ControlService,
    request: Request<pb::GetStatusRequest>,
) -> Result<Response<pb::StatusReply>, Status> {
    let actor = svc.authorize(&request, "GetStatus", Need::Read).await?;
    let view = svc.gov.status().await?;
    let settings = svc.authn.settings();
    let jwks = svc.authn.jwks_health();
    let auth = pb::AuthStatus {
        mode: pb_auth_mode(settings.mode),
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
            .map(|t| format_ts(time::OffsetDateTime::from(t)))
            .unwrap_or_default(),
    };
    let counts = pb_counts(&view);
    Ok(Response::new(pb::StatusReply {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: svc.started.elapsed().as_secs(),
        socket: svc.socket.clone(),
        store_path: view.store_path.display().to_string(),
        counts: Some(counts),
        audit_head: Some(pb_head(&view.head)),
        caller: Some(pb_actor(&actor)),
        daemon_pid: std::process::id(),
        auth: Some(auth),
        openclaw: Some(pb_openclaw_status(
            view.openclaw,
            view.pending_enforcements,
            view.gate,
            view.gate_setup,
        )),
        exporters: view
            .exporters
            .iter()
            .map(|s| pb_exporter(s, view.head.seq))
            .collect(),
        export_signing_key: view.export_signing_key.clone().unwrap_or_default(),
    }))
}

/// Unauthenticated on purpose: a client reads it to learn how to authenticate.
pub(super) async fn get_auth_config(
    svc: &ControlService,
    _request: Request<pb::GetAuthConfigRequest>,
) -> Result<Response<pb::AuthConfig>, Status> {
    let settings = svc.authn.settings();
    Ok(Response::new(pb::AuthConfig {
        mode: pb_auth_mode(settings.mode),
        issuer: settings.issuer_url().unwrap_or_default(),
        audience: settings.audience.clone().unwrap_or_default(),
        cli_client_id: settings.cli_client_id.clone().unwrap_or_default(),
        scopes: settings.roles.mapping().into_keys().collect(),
    }))
}

/// The daemon's checks of its own setup: the facts from start, then the live
/// ones (identity provider, OpenClaw gateway). Readers may call it; it shows
/// presence of secrets, never values.
pub(super) async fn diagnose(
    svc: &ControlService,
    request: Request<pb::DiagnoseRequest>,
) -> Result<Response<pb::DiagnoseReply>, Status> {
    svc.authorize(&request, "Diagnose", Need::Read).await?;
    let mut checks = svc
        .setup
        .as_ref()
        .map(|setup| setup.local_checks())
        .unwrap_or_default();
    if let Some(provider) = svc.authn.provider() {
        let discovery = provider
            .discovery()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let health = provider.health();
        // Fetched at most once per interval however often doctor runs.
        let stale = health
            .last_attempt_at
            .is_none_or(|at| at.elapsed().unwrap_or_default() >= DIAGNOSE_REFETCH);
        let jwks =
            if discovery.is_ok() && (health.keys == 0 || health.last_error.is_some()) && stale {
                provider.refresh_jwks().await.map_err(|e| e.to_string())
            } else {
                match health.last_error {
                    Some(e) if health.keys == 0 => Err(e),
                    _ => Ok(health.keys),
                }
            };
        checks.push(crate::doctor::idp_check(provider.issuer(), discovery, jwks));
    }
    let view = svc.gov.status().await?;
    checks.extend(
        view.exporters
            .iter()
            .map(|sink| crate::doctor::exporter_check(sink, view.head.seq)),
    );
    if !view.exporters.is_empty()
        && let Some(key) = &view.export_signing_key
    {
        checks.push(crate::doctor::export_key_check(key));
    }
    let openclaw_enabled = svc.setup.as_ref().is_some_and(|s| s.openclaw_enabled);
    checks.push(crate::doctor::openclaw_check(
        openclaw_enabled,
        &view.openclaw,
    ));
    if let Some(gate) = view.gate_setup.as_ref().filter(|_| openclaw_enabled) {
        checks.push(crate::doctor::gate_check(gate));
    }
    Ok(Response::new(pb::DiagnoseReply {
        version: env!("CARGO_PKG_VERSION").into(),
        checks: checks.into_iter().map(pb_diagnostic).collect(),
    }))
}

/// Least time between two key-set fetches `Diagnose` triggers.
const DIAGNOSE_REFETCH: std::time::Duration = std::time::Duration::from_secs(10);
