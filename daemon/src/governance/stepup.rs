//! Step-up: enforcement changes on HIGH/CRITICAL targets commit only after a
//! named human approves them out of band (OIDC CIBA; with Auth0, a Guardian
//! push). The daemon owns each request: it is stored before it is sent, polled
//! by the daemon (closing the CLI changes nothing), and resumed after a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::governance::{StepUpSettings, Unconfirmed};
use crate::error::{Error, Result};
use crate::governance::enforcer::Enforcer;
use crate::governance::protection::{Change, Protection, Ruling};
use crate::governance::vault::seal::Sealer;
use crate::model::{Actor, EnforcementAction, EnforcementState, Target};
use crate::oidc::RefreshToken;
use crate::oidc::{AuthReqId, CibaClient, CibaOutcome, binding_message, new_request_code};
use crate::state::StateCache;
use crate::store::connections::{ConnectionDecl, SealedSubject};
use crate::store::stepup::{CapRefusal, PendingCaps, StepUpAction, StepUpPayload, StepUpRow};
use crate::store::{
    Audit, ChangeGrantStatus, DismissFinding, GrantConnections, ResumeApproved, SetEnforcement,
    StatusChange, StepUpClose, StepUpCommit, StepUpOpen, StepUpOpened, StepUpSent, StepUpStatus,
    Store,
};

/// Auth0 accepts 5 CIBA requests per minute per user.
const PER_APPROVER_PER_MINUTE: usize = 5;

/// A progress event for watchers.
#[derive(Debug, Clone)]
pub struct StepUpEvent {
    /// The request after the change.
    pub row: StepUpRow,
}

/// Runs step-up requests: opens them, drives each to an end (approval,
/// denial, timeout, cancel) and commits what an approval allows.
pub struct StepUps {
    settings: StepUpSettings,
    store: Store,
    cache: Arc<StateCache>,
    ciba: Option<Arc<CibaClient>>,
    enforcer: Enforcer,
    events: broadcast::Sender<StepUpEvent>,
    cancel: CancellationToken,
    limiter: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Cap refusals already audited in the last minute, by cap and key.
    refusals_audited: Mutex<HashMap<String, Instant>>,
    system: Actor,
    sealer: Option<Arc<Sealer>>,
    protection: Protection,
}

/// One audit entry per cap and key within this window.
const REFUSAL_AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Bound on the remembered refusals (keys beyond it are pruned, then forgotten).
const MAX_REMEMBERED_REFUSALS: usize = 4096;

impl std::fmt::Debug for StepUps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepUps")
            .field("enabled", &self.settings.enabled)
            .finish_non_exhaustive()
    }
}

impl StepUps {
    /// Builds the manager; `ciba` is `None` when step-up is disabled; `sealer`
    /// (the token vault key) lets approvals keep a refresh token for unattended use.
    pub fn new(
        settings: StepUpSettings,
        store: Store,
        cache: Arc<StateCache>,
        ciba: Option<Arc<CibaClient>>,
        sealer: Option<Arc<Sealer>>,
        enforcer: Enforcer,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let protection = Protection::new(
            settings.enabled && ciba.is_some(),
            settings.min_severity,
            store.clone(),
        );
        Arc::new(Self {
            protection,
            refusals_audited: Mutex::new(HashMap::new()),
            settings,
            store,
            cache,
            ciba,
            enforcer,
            events,
            cancel,
            limiter: Mutex::new(HashMap::new()),
            system: Actor {
                id: "system:stepup".into(),
                name: "stepup".into(),
                ..Actor::system()
            },
            sealer,
        })
    }

    /// Whether approvals can keep a sealed refresh token (step-up on and a key configured).
    pub fn can_keep_subject(&self) -> bool {
        self.enabled() && self.sealer.is_some()
    }

    /// Whether step-up is on.
    pub fn enabled(&self) -> bool {
        self.settings.enabled && self.ciba.is_some()
    }

    /// The `[stepup]` settings this manager runs with.
    pub fn settings(&self) -> &StepUpSettings {
        &self.settings
    }

    /// Progress of every step-up.
    pub fn subscribe(&self) -> broadcast::Receiver<StepUpEvent> {
        self.events.subscribe()
    }

    /// The protection invariant every lowering path asks.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Opens (or joins) a step-up for `action` on `target`, holds the target
    /// and starts asking the approver. Returns the request.
    pub async fn request(
        self: &Arc<Self>,
        requester: Actor,
        target: Target,
        action: StepUpAction,
        reason: String,
        finding_id: Option<u64>,
        payload: StepUpPayload,
    ) -> Result<StepUpRow> {
        let approver = self.approver_for(&requester)?;
        self.request_to(
            approver, requester, target, action, reason, finding_id, payload,
        )
        .await
    }

    /// [`Self::request`] put to `approver` (a `sub`) rather than the one the
    /// `[stepup] approver` rule picks.
    #[allow(clippy::too_many_arguments)]
    pub async fn request_to(
        self: &Arc<Self>,
        approver: String,
        requester: Actor,
        target: Target,
        action: StepUpAction,
        reason: String,
        finding_id: Option<u64>,
        payload: StepUpPayload,
    ) -> Result<StepUpRow> {
        let id = new_request_code();
        // The phone says what is at stake: "DC-4F2A91C30B7E55D1 grant mcp github-mcp github".
        let mut message = binding_message(&id, action.as_str(), target.kind.as_str(), &target.name);
        for d in &payload.connections {
            message.push(' ');
            message.push_str(&binding_message("", "", "", &d.connection));
        }
        let row = StepUpRow {
            binding_message: message.chars().take(64).collect(),
            id,
            target: target.clone(),
            action,
            reason,
            finding_id,
            requester,
            approver_sub: approver,
            auth_req_id: None,
            created_at: self.store.clock().ts(),
            deadline: self.store.clock().unix() + i64::from(self.settings.requested_expiry_secs),
            interval_secs: 5,
            status: StepUpStatus::Pending,
            outcome_reason: String::new(),
            decided_at: None,
            approver: None,
            payload,
        };
        // The daemon's own proposals are bounded by the targets; operators by the caps.
        let caps = (row.requester.auth_method != "system").then_some(PendingCaps {
            per_requester: self.settings.max_pending_per_requester,
            per_target: self.settings.max_pending_per_target,
        });
        let (row, joined) = match self.store.write(StepUpOpen { row, caps }).await? {
            StepUpOpened::Opened { row, joined } => (row, joined),
            StepUpOpened::Refused(refusal) => return Err(self.refuse(*refusal).await),
        };
        if holds(row.action) {
            self.cache.hold(&row.target, &row.id);
            // Runtime enforcers treat a held target as blocked.
            self.enforcer
                .publish(&row.target, EnforcementState::Blocked);
        }
        let _ = self.events.send(StepUpEvent {
            row: (*row).clone(),
        });
        if !joined {
            let me = self.clone();
            let started = (*row).clone();
            tokio::spawn(async move { me.drive(started).await });
        }
        Ok(*row)
    }

    /// Audits a cap refusal once per cap and key a minute, then hands back the error.
    async fn refuse(&self, refusal: CapRefusal) -> Error {
        let message = format!(
            "too many pending step-up requests: {} ([stepup] {} = {}); wait for one to end or cancel one",
            refusal.what, refusal.cap, refusal.limit
        );
        let key = format!("{}\u{0}{}", refusal.cap, refusal.key);
        let first = {
            let mut seen = self
                .refusals_audited
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.len() >= MAX_REMEMBERED_REFUSALS {
                seen.retain(|_, at| at.elapsed() < REFUSAL_AUDIT_WINDOW);
                if seen.len() >= MAX_REMEMBERED_REFUSALS {
                    seen.clear();
                }
            }
            match seen.get(&key) {
                Some(at) if at.elapsed() < REFUSAL_AUDIT_WINDOW => false,
                _ => {
                    seen.insert(key, Instant::now());
                    true
                }
            }
        };
        if first {
            let audit = Audit(crate::audit::NewEntry {
                action: "stepup-refused".into(),
                target: Some(refusal.target.clone()),
                severity: None,
                outcome: "refused".into(),
                reason: message.clone(),
                details: serde_json::json!({
                    "cap": refusal.cap,
                    "limit": refusal.limit,
                    "pending": refusal.pending,
                    "key": refusal.key,
                    "action": refusal.action.as_str(),
                    "audited_once_per_secs": REFUSAL_AUDIT_WINDOW.as_secs(),
                }),
                actor: refusal.requester,
            });
            if let Err(e) = self.store.write(audit).await {
                tracing::error!(error = %e, "could not audit a refused step-up");
            }
        }
        Error::ResourceExhausted(message)
    }

    /// Who the `[stepup] approver` rule asks about `requester`'s change.
    pub fn approver_for(&self, requester: &Actor) -> Result<String> {
        let wants_requester = self.settings.approver.iter().any(|a| a == "requester");
        if wants_requester && requester.auth_method == "oidc" {
            return Ok(requester.id.clone());
        }
        self.settings
            .listed()
            .first()
            .map(|s| (*s).to_owned())
            .ok_or_else(|| {
                Error::FailedPrecondition(
                    "this change needs a human approval, but no approver is known: log in (`defenseclawctl auth login`) or set [stepup] approver".into(),
                )
            })
    }

    /// Waits for the per-approver limiter (queues rather than fails).
    async fn admit(&self, approver: &str) {
        loop {
            let wait = {
                let mut map = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
                let q = map.entry(approver.to_owned()).or_default();
                while q
                    .front()
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    q.pop_front();
                }
                if q.len() < PER_APPROVER_PER_MINUTE {
                    q.push_back(Instant::now());
                    None
                } else {
                    q.front()
                        .map(|t| Duration::from_secs(60).saturating_sub(t.elapsed()))
                }
            };
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d.max(Duration::from_millis(50))).await,
            }
        }
    }

    /// Sends the request to the provider and polls it to the end.
    async fn drive(self: Arc<Self>, row: StepUpRow) {
        let Some(ciba) = self.ciba.clone() else {
            return;
        };
        // Queued behind the per-approver limit: a request whose deadline passes
        // meanwhile is never sent; it ends as timed out (under on_timeout).
        let until_deadline = self.store.clock().until_unix(row.deadline);
        let admitted = tokio::select! {
            () = self.admit(&row.approver_sub) => true,
            () = tokio::time::sleep(until_deadline) => false,
            // Shutdown: it stays pending and is resumed (or timed out) at the next start.
            () = self.cancel.cancelled() => return,
        };
        if !admitted || row.deadline <= self.store.clock().unix() {
            self.finish_with(
                &row,
                StepUpStatus::TimedOut,
                "the deadline passed before the request could be sent; it was never sent to the identity provider",
                None,
            )
            .await;
            return;
        }
        // Cancelled while queued: nothing to send.
        match self.store.get_stepup(row.id.clone()).await {
            Ok(Some(now)) if now.status.is_pending() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(request = %row.id, error = %e, "could not re-read a queued step-up");
                return;
            }
        }
        // profile and email put the approver's name and email in the ID token;
        // offline_access brings the refresh token kept for unattended exchanges.
        let scope = if row.payload.unattended && self.sealer.is_some() {
            "openid profile email offline_access"
        } else {
            "openid profile email"
        };
        let started = ciba
            .start(
                &row.approver_sub,
                &row.binding_message,
                scope,
                Some(self.settings.requested_expiry_secs),
            )
            .await;
        let start = match started {
            Ok(s) => s,
            Err(e) => {
                self.finish(&row, CibaOutcome::Error(e)).await;
                return;
            }
        };
        let deadline = start
            .deadline()
            .duration_since(UNIX_EPOCH)
            .map_or(row.deadline, |d| {
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
            });
        let sent = StepUpSent {
            id: row.id.clone(),
            auth_req_id: start.auth_req_id.expose().to_owned(),
            deadline,
            interval_secs: start.interval,
        };
        if let Err(e) = self.store.write(sent).await {
            tracing::error!(request = %row.id, error = %e, "could not record a sent step-up");
        }
        let outcome = ciba
            .poll_until(
                &start.auth_req_id,
                start.deadline(),
                start.interval(),
                &self.cancel,
            )
            .await;
        self.finish(&row, outcome).await;
    }

    /// Resumes polling a request stored before a restart.
    async fn resume(self: Arc<Self>, row: StepUpRow) {
        let Some(ciba) = self.ciba.clone() else {
            return;
        };
        let Some(handle) = row.auth_req_id.clone() else {
            self.finish_with(
                &row,
                StepUpStatus::Error,
                "the daemon stopped before the request reached the identity provider",
                None,
            )
            .await;
            return;
        };
        let deadline = UNIX_EPOCH + Duration::from_secs(u64::try_from(row.deadline).unwrap_or(0));
        let outcome = ciba
            .poll_until(
                &AuthReqId::new(handle),
                deadline,
                Duration::from_secs(row.interval_secs),
                &self.cancel,
            )
            .await;
        self.finish(&row, outcome).await;
    }

    /// Re-holds and resumes every pending request; expired ones end as `timed_out`.
    pub async fn resume_pending(self: &Arc<Self>) -> Result<()> {
        for row in self.store.list_stepups(true, 10_000).await? {
            if holds(row.action) {
                self.cache.hold(&row.target, &row.id);
            }
            if row.deadline <= self.store.clock().unix() {
                self.finish_with(
                    &row,
                    StepUpStatus::TimedOut,
                    "the deadline passed while the daemon was down",
                    None,
                )
                .await;
            } else if self.ciba.is_some() {
                let me = self.clone();
                tokio::spawn(async move { me.resume(row).await });
            } else {
                self.finish_with(
                    &row,
                    StepUpStatus::Error,
                    "step-up is no longer configured",
                    None,
                )
                .await;
            }
        }
        Ok(())
    }

    async fn finish(&self, row: &StepUpRow, outcome: CibaOutcome) {
        match outcome {
            CibaOutcome::Approved(a) if a.sub == row.approver_sub => {
                let approver = serde_json::json!({"sub": a.sub, "email": a.email, "name": a.name});
                if let Err(e) = self
                    .close_approved(row, approver, a.refresh_token.as_ref())
                    .await
                {
                    tracing::error!(request = %row.id, error = %e, "could not close a step-up");
                }
            }
            CibaOutcome::Approved(a) => {
                let reason = format!(
                    "approved by {} but {} was asked; not accepted",
                    a.sub, row.approver_sub
                );
                self.finish_with(row, StepUpStatus::Error, &reason, None)
                    .await;
            }
            CibaOutcome::Denied => {
                self.finish_with(
                    row,
                    StepUpStatus::Denied,
                    "denied on the approver's device",
                    None,
                )
                .await
            }
            CibaOutcome::TimedOut => {
                self.finish_with(
                    row,
                    StepUpStatus::TimedOut,
                    "no answer before the deadline",
                    None,
                )
                .await;
            }
            // Shutdown: the request stays pending and is resumed at the next start.
            CibaOutcome::Cancelled => {}
            CibaOutcome::Error(e) => {
                self.finish_with(row, StepUpStatus::Error, &e.to_string(), None)
                    .await;
            }
        }
    }

    /// Ends a request with `status`, committing what the semantics say.
    pub async fn finish_with(
        &self,
        row: &StepUpRow,
        status: StepUpStatus,
        reason: &str,
        approver: Option<serde_json::Value>,
    ) {
        if let Err(e) = self
            .close(
                row,
                status,
                reason,
                approver,
                None,
                self.system.clone(),
                false,
            )
            .await
        {
            tracing::error!(request = %row.id, error = %e, "could not close a step-up");
        }
    }

    /// Ends a request as approved, sealing the approver's refresh token when
    /// the grant asked for unattended use.
    async fn close_approved(
        &self,
        row: &StepUpRow,
        approver: serde_json::Value,
        refresh_token: Option<&RefreshToken>,
    ) -> Result<StepUpRow> {
        let subject = match (row.payload.unattended, refresh_token, &self.sealer) {
            (true, Some(token), Some(sealer)) => Some(SealedSubject {
                sub: row.approver_sub.clone(),
                sealed: sealer
                    .seal(
                        token.expose().as_bytes(),
                        &crate::governance::vault::seal::subject_context(
                            &row.target.name,
                            &row.approver_sub,
                        ),
                    )
                    .map_err(|e| Error::Internal(e.to_string()))?,
            }),
            (true, None, Some(_)) => {
                tracing::warn!(request = %row.id, "the approval brought no refresh token; unattended exchanges will need a live operator token");
                None
            }
            _ => None,
        };
        self.close(
            row,
            StepUpStatus::Approved,
            "approved on the approver's device",
            Some(approver),
            subject,
            self.system.clone(),
            false,
        )
        .await
    }

    /// Cancels a pending request (audited with `actor`). The invariant decides
    /// what ends with it: a cancelled block (the daemon's own proposals too)
    /// commits as the fail-closed outcome, unconfirmed; nothing else commits.
    pub async fn cancel(&self, id: &str, actor: Actor) -> Result<StepUpRow> {
        let row = self
            .store
            .get_stepup(id.to_owned())
            .await?
            .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
        let ruling = self
            .protection
            .rule(&row.target, Change::Cancel(row.action))
            .await?;
        let (reason, fail_closed) = match ruling {
            Ruling::FailClosed => (
                "cancelled by an operator; a pending block ends blocked (fail closed, no human confirmed it)",
                true,
            ),
            Ruling::Commit | Ruling::NeedsApproval => ("cancelled by an operator", false),
        };
        self.close(
            &row,
            StepUpStatus::Cancelled,
            reason,
            None,
            None,
            actor,
            fail_closed,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn close(
        &self,
        row: &StepUpRow,
        status: StepUpStatus,
        reason: &str,
        approver: Option<serde_json::Value>,
        subject: Option<SealedSubject>,
        actor: Actor,
        fail_closed: bool,
    ) -> Result<StepUpRow> {
        let proposed = row.requester.auth_method == "system";
        let policy = match status {
            StepUpStatus::TimedOut => Some(self.settings.on_timeout),
            StepUpStatus::Error => Some(self.settings.on_error),
            _ => None,
        };
        let human = status == StepUpStatus::Approved;
        let mut details = serde_json::json!({"human_confirmed": human, "request_id": row.id});
        if let (Some(p), serde_json::Value::Object(map)) = (policy, &mut details) {
            map.insert("policy".into(), serde_json::json!(p));
        }
        if let (true, serde_json::Value::Object(map)) = (fail_closed, &mut details) {
            map.insert("policy".into(), serde_json::json!("fail_closed"));
        }
        let enforce = |action: EnforcementAction, why: String| SetEnforcement {
            target: row.target.clone(),
            action,
            reason: why,
            actor: row.requester.clone(),
            details: serde_json::json!({
                "stepup": row.id,
                "human_confirmed": human,
                "approver": approver.clone(),
                "binding_message": row.binding_message,
            }),
        };
        let grant = |connections: Vec<ConnectionDecl>| GrantConnections {
            server: row.target.name.clone(),
            grants: connections,
            approved_by: row.approver_sub.clone(),
            subject: subject.clone(),
            actor: row.requester.clone(),
            details: serde_json::json!({
                "stepup": row.id,
                "human_confirmed": human,
                "approver": approver.clone(),
            }),
        };
        let commit: Option<StepUpCommit> = match (status, row.action) {
            (StepUpStatus::Approved, StepUpAction::Block) => Some(StepUpCommit::Enforce(enforce(
                EnforcementAction::Block,
                row.reason.clone(),
            ))),
            (StepUpStatus::Approved, StepUpAction::Allow)
                if !row.payload.connections.is_empty() =>
            {
                Some(StepUpCommit::EnforceAndGrant(
                    enforce(EnforcementAction::Allow, row.reason.clone()),
                    Box::new(grant(row.payload.connections.clone())),
                ))
            }
            (StepUpStatus::Approved, StepUpAction::Allow) => Some(StepUpCommit::Enforce(enforce(
                EnforcementAction::Allow,
                row.reason.clone(),
            ))),
            (StepUpStatus::Approved, StepUpAction::Grant) => {
                Some(StepUpCommit::Grant(grant(row.payload.connections.clone())))
            }
            (StepUpStatus::Approved, StepUpAction::Unblock) => Some(StepUpCommit::Enforce(
                enforce(EnforcementAction::Unblock, row.reason.clone()),
            )),
            (StepUpStatus::Approved, StepUpAction::Resume) => resume_commit(row, approver.as_ref()),
            (StepUpStatus::Approved, StepUpAction::Dismiss) => row.finding_id.map(|id| {
                StepUpCommit::Dismiss(DismissFinding {
                    id,
                    reason: row.reason.clone(),
                    actor: row.requester.clone(),
                })
            }),
            // The approver overrode the daemon's own proposal: the target is allowed.
            (StepUpStatus::Denied, StepUpAction::Block) if proposed => {
                Some(StepUpCommit::Enforce(enforce(
                    EnforcementAction::Allow,
                    format!(
                        "override: {} denied the proposed block ({})",
                        row.approver_sub, row.id
                    ),
                )))
            }
            (StepUpStatus::Cancelled, StepUpAction::Block) if fail_closed => {
                Some(StepUpCommit::Enforce(enforce(
                    EnforcementAction::Block,
                    format!(
                        "{} (request {} cancelled; a pending block ends blocked)",
                        row.reason, row.id
                    ),
                )))
            }
            (StepUpStatus::TimedOut | StepUpStatus::Error, StepUpAction::Block)
                if policy == Some(Unconfirmed::KeepBlocked) =>
            {
                Some(StepUpCommit::Enforce(enforce(
                    EnforcementAction::Block,
                    format!(
                        "{} without confirmation ({status}); policy keeps it blocked",
                        row.reason
                    ),
                )))
            }
            _ => None,
        };
        let closed = self
            .store
            .write(StepUpClose {
                id: row.id.clone(),
                status,
                reason: reason.to_owned(),
                approver,
                actor,
                commit,
                details,
            })
            .await?;
        let (committed, closed) = (closed.committed, closed.row);
        self.enforcer.metrics().stepup(status.as_str());
        if !holds(closed.action) {
            let _ = self.events.send(StepUpEvent {
                row: (*closed).clone(),
            });
            return Ok(*closed);
        }
        self.cache.release(&closed.target, &closed.id);
        if !self.enforcer.published(
            &closed.target,
            committed.as_ref().and_then(|c| c.enforced()),
        ) && self.cache.check(closed.target.kind, &closed.target.name)
            == crate::state::Verdict::Unknown
        {
            // Released hold with no decision: runtime enforcers re-enable it.
            self.enforcer
                .publish(&closed.target, EnforcementState::None);
        }
        let _ = self.events.send(StepUpEvent {
            row: (*closed).clone(),
        });
        Ok(*closed)
    }
}

/// Whether a pending request of this kind holds its target (fail closed).
/// A scope escalation or a grant's resumption does not: the server keeps what
/// it already has.
fn holds(action: StepUpAction) -> bool {
    !matches!(action, StepUpAction::Grant | StepUpAction::Resume)
}

/// An approved resumption: the grant resumes, audited as the approving human.
fn resume_commit(row: &StepUpRow, approver: Option<&serde_json::Value>) -> Option<StepUpCommit> {
    let connection = row.payload.connections.first()?.connection.clone();
    let claim = |name: &str| {
        approver
            .and_then(|a| a.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let human = Actor {
        id: row.approver_sub.clone(),
        name: claim("name").unwrap_or_else(|| row.approver_sub.clone()),
        auth_method: "oidc".into(),
        uid: None,
        gid: None,
        pid: None,
        email: claim("email"),
        ..Actor::default()
    };
    Some(StepUpCommit::Resume(ResumeApproved(ChangeGrantStatus {
        server: row.target.name.clone(),
        connection,
        change: StatusChange::Resume,
        reason: format!("resumed by its approver over CIBA (request {})", row.id),
        actor: human,
        details: serde_json::json!({
            "stepup": row.id,
            "human_confirmed": true,
            "binding_message": row.binding_message,
            "requester": {"id": row.requester.id, "name": row.requester.name},
        }),
    })))
}
