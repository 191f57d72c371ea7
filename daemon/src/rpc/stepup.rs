//! Adapters for step-up requests: listing, reading, watching one to its end,
//! and cancelling.

use defenseclaw_proto::v1 as pb;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::pb_stepup;
use super::service::{ControlService, ReplyStream};
use crate::error::Error;
use crate::names;

/// Default and largest page of `ListStepUps`.
const DEFAULT_STEPUP_LIMIT: u32 = 100;
const MAX_STEPUP_LIMIT: u32 = 10_000;

pub(super) async fn list_step_ups(
    svc: &ControlService,
    request: Request<pb::ListStepUpsRequest>,
) -> Result<Response<pb::ListStepUpsReply>, Status> {
    svc.authorize(&request, "ListStepUps", Need::Read).await?;
    let req = request.into_inner();
    let limit = if req.limit == 0 {
        DEFAULT_STEPUP_LIMIT
    } else {
        req.limit.min(MAX_STEPUP_LIMIT)
    };
    let rows = svc.gov.list_stepups(req.pending_only, limit).await?;
    Ok(Response::new(pb::ListStepUpsReply {
        stepups: rows.iter().map(pb_stepup).collect(),
    }))
}

pub(super) async fn get_step_up(
    svc: &ControlService,
    request: Request<pb::StepUpRef>,
) -> Result<Response<pb::StepUp>, Status> {
    svc.authorize(&request, "GetStepUp", Need::Read).await?;
    let id = request.into_inner().id;
    names::request_id("id", &id)?;
    let row = svc
        .gov
        .get_stepup(id.clone())
        .await?
        .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
    Ok(Response::new(pb_stepup(&row)))
}

pub(super) async fn watch_step_up(
    svc: &ControlService,
    request: Request<pb::StepUpRef>,
) -> Result<Response<ReplyStream<pb::StepUp>>, Status> {
    svc.authorize(&request, "WatchStepUp", Need::Read).await?;
    let id = request.into_inner().id;
    names::request_id("id", &id)?;
    let (tx, rx) = svc.streams.open()?;
    // Subscribe first, then read, so the end cannot slip between the two.
    let mut events = svc.gov.follow_stepups();
    let row = svc
        .gov
        .get_stepup(id.clone())
        .await?
        .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
    let cancel = svc.cancel.clone();
    let gov = svc.gov.clone();
    tokio::spawn(async move {
        let done = !row.status.is_pending();
        if tx.send(pb_stepup(&row)).await.is_err() || done {
            return;
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tx.closed() => break,
                ev = events.recv() => match ev {
                    Ok(ev) if ev.row.id == id => {
                        let end = !ev.row.status.is_pending();
                        if tx.send(pb_stepup(&ev.row)).await.is_err() || end { break; }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Ok(Some(r)) = gov.get_stepup(id.clone()).await && !r.status.is_pending() {
                            let _ = tx.send(pb_stepup(&r)).await;
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    Ok(Response::new(Box::pin(rx)))
}

pub(super) async fn cancel_step_up(
    svc: &ControlService,
    request: Request<pb::StepUpRef>,
) -> Result<Response<pb::StepUp>, Status> {
    let actor = svc
        .authorize(&request, "CancelStepUp", Need::Operate)
        .await?;
    let id = request.into_inner().id;
    names::request_id("id", &id)?;
    let row = svc.gov.cancel_step_up(&id, actor).await?;
    Ok(Response::new(pb_stepup(&row)))
}
