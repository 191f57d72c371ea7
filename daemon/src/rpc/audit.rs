//! Adapters for the audit log: listing, verifying, and the two streams
//! (follow from a point on, export everything) with their catch-up plumbing.

use defenseclaw_proto::v1 as pb;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::authn::Need;
use super::convert::{head_from, pb_entry, pb_verification, target_filter};
use super::service::{ControlService, ReplyStream};
use super::streams::StreamSender;
use crate::governance::Governance;
use crate::model::validate_text;
use crate::store::AuditQuery;

/// Default and largest page of `ListAudit`.
const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 10_000;

/// Entries read from the store at a time for a stream (bounds what one
/// stream holds beyond its queue).
const AUDIT_PAGE: u32 = 100;

pub(super) async fn list_audit(
    svc: &ControlService,
    request: Request<pb::ListAuditRequest>,
) -> Result<Response<pb::ListAuditReply>, Status> {
    svc.authorize(&request, "ListAudit", Need::Read).await?;
    let req = request.into_inner();
    let target = target_filter("target", req.target)?;
    let since = if req.since.is_empty() {
        None
    } else {
        Some(crate::store::normalise_since(&req.since)?)
    };
    let actor = (!req.actor.is_empty()).then_some(req.actor);
    if let Some(a) = &actor {
        validate_text("actor", a, 512)?;
    }
    let limit = match req.limit {
        0 => DEFAULT_AUDIT_LIMIT,
        n => n.min(MAX_AUDIT_LIMIT),
    };
    let entries = svc
        .gov
        .list_audit(AuditQuery {
            limit,
            since,
            actor,
            target,
        })
        .await?;
    Ok(Response::new(pb::ListAuditReply {
        entries: entries.iter().map(pb_entry).collect(),
    }))
}

pub(super) async fn follow_audit(
    svc: &ControlService,
    request: Request<pb::FollowAuditRequest>,
) -> Result<Response<ReplyStream<pb::AuditEntry>>, Status> {
    svc.authorize(&request, "FollowAudit", Need::Read).await?;
    let req = request.into_inner();
    let gov = svc.gov.clone();
    let cancel = svc.cancel.clone();
    // Subscribe before reading the backlog so nothing falls in between.
    let mut live = gov.follow_audit();
    let mut last = if req.from_start {
        0
    } else if req.after_seq > 0 {
        req.after_seq
    } else {
        gov.audit_head().seq
    };
    let (tx, rx) = svc.streams.open()?;
    tokio::spawn(async move {
        if catch_up(&gov, &tx, &mut last, u64::MAX).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tx.closed() => break,
                next = live.recv() => match next {
                    Ok(entry) if entry.seq <= last => {}
                    Ok(entry) if entry.seq == last + 1 => {
                        if tx.send(pb_entry(&entry)).await.is_err() { break; }
                        last = entry.seq;
                    }
                    Ok(entry) => {
                        // A gap: fill it from the store, then this entry.
                        if catch_up(&gov, &tx, &mut last, entry.seq).await.is_err() { break; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if catch_up(&gov, &tx, &mut last, u64::MAX).await.is_err() { break; }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    Ok(Response::new(Box::pin(rx)))
}

pub(super) async fn export_audit(
    svc: &ControlService,
    request: Request<pb::ExportAuditRequest>,
) -> Result<Response<ReplyStream<pb::AuditEntry>>, Status> {
    svc.authorize(&request, "ExportAudit", Need::Read).await?;
    let gov = svc.gov.clone();
    let (tx, rx) = svc.streams.open()?;
    tokio::spawn(async move {
        let mut last = 0;
        let _ = catch_up(&gov, &tx, &mut last, u64::MAX).await;
    });
    Ok(Response::new(Box::pin(rx)))
}

pub(super) async fn verify_audit(
    svc: &ControlService,
    request: Request<pb::VerifyAuditRequest>,
) -> Result<Response<pb::VerifyAuditReply>, Status> {
    svc.authorize(&request, "VerifyAudit", Need::Read).await?;
    let expected = head_from(&request.into_inner().head)?;
    let v = svc.gov.verify_audit(expected).await?;
    Ok(Response::new(pb_verification(v)))
}

/// Sends stored entries with `last < seq <= until` in order, advancing `last`.
/// Errs when the receiver is gone.
async fn catch_up(
    gov: &Governance,
    tx: &StreamSender<pb::AuditEntry>,
    last: &mut u64,
    until: u64,
) -> Result<(), ()> {
    loop {
        let page = match gov.audit_page(*last, AUDIT_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tx.fail(e.into());
                return Err(());
            }
        };
        if page.is_empty() {
            return Ok(());
        }
        for entry in page {
            if entry.seq > until {
                return Ok(());
            }
            tx.send(pb_entry(&entry)).await.map_err(|_| ())?;
            *last = entry.seq;
        }
    }
}
