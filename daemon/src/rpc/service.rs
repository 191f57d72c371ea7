//! The state every adapter works with, and the caller check each one starts with.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use super::authn::{Authenticator, Need, Refusal};
use super::streams;
use crate::error::{Error, Result};
use crate::governance::Governance;
use crate::model::Actor;

/// What the adapters work with: governance for every decision, plus what only
/// the RPC layer needs (caller identification, stream bounds, the daemon's
/// own facts for `GetStatus`).
pub struct ControlService {
    pub(super) gov: Governance,
    pub(super) authn: Arc<Authenticator>,
    pub(super) started: Instant,
    pub(super) socket: String,
    pub(super) cancel: CancellationToken,
    pub(super) streams: streams::StreamLimits,
    /// The daemon's setup as it started, for `Diagnose`.
    pub(super) setup: Option<Arc<crate::doctor::SetupFacts>>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// A server stream of `T` as tonic wants it.
pub(super) type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl ControlService {
    /// The service for the daemon listening on `socket`; streams end when
    /// `cancel` fires.
    pub fn new(
        gov: Governance,
        authn: Arc<Authenticator>,
        socket: String,
        cancel: CancellationToken,
        streams: streams::StreamLimits,
    ) -> Self {
        Self {
            gov,
            authn,
            started: Instant::now(),
            socket,
            cancel,
            streams,
            setup: None,
        }
    }

    /// Adds what `Diagnose` reports of the daemon's setup.
    #[must_use]
    pub fn with_setup(mut self, setup: crate::doctor::SetupFacts) -> Self {
        self.setup = Some(Arc::new(setup));
        self
    }

    /// Identifies the caller of `rpc` and checks it may do what `need` says; a
    /// refusal is itself audited before the caller hears of it.
    pub(super) async fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        need: Need,
    ) -> Result<Actor> {
        match self.authn.identify(request, rpc, need).await {
            Ok(actor) => Ok(actor),
            Err(refusal) => Err(self.refuse(refusal).await),
        }
    }

    /// Audits a refused call (coalesced with its like), then hands back the
    /// error for the caller.
    pub(super) async fn refuse(&self, refusal: Refusal) -> Error {
        self.gov
            .audit_refusal(refusal.coalesce_key, refusal.audit)
            .await;
        refusal.error
    }
}
