//! Step-up: enforcement changes on HIGH/CRITICAL targets commit only after a
//! named human approves them out of band (OIDC CIBA; with Auth0, a Guardian
//! push). The daemon owns each request: it is stored before it is sent, polled
//! by the daemon (closing the CLI changes nothing), and resumed after a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::control::EnforcementChanged;
use crate::error::{Error, Result};
use crate::model::{Actor, EnforcementAction, EnforcementState, Severity, Target, now_ts};
use crate::oidc::RefreshToken;
use crate::oidc::{AuthReqId, CibaClient, CibaOutcome, binding_message, new_request_code};
use crate::state::StateCache;
use crate::store::connections::{ConnectionDecl, SealedSubject};
use crate::store::stepup::{StepUpAction, StepUpPayload, StepUpRow};
use crate::store::{Store, WriteEffect, WriteOp};
use crate::vault::seal::Sealer;

/// Auth0 accepts 5 CIBA requests per minute per user.
const PER_APPROVER_PER_MINUTE: usize = 5;

/// What happens when nobody confirmed in time, or the provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unconfirmed {
    /// Fail closed: a requested or proposed block commits (without human confirmation); nothing else does.
    KeepBlocked,
    /// Nothing commits.
    Allow,
}

/// `[stepup]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepUpSettings {
    /// Require human approval (needs `[auth] mode = "oidc"`, `daemon_client_id` and the client secret).
    pub enabled: bool,
    /// Changes on a target whose open findings reach this need approval.
    pub min_severity: Severity,
    /// A scan report with a finding at or above this makes the daemon propose a block.
    pub auto_block_severity: Severity,
    /// `"requester"` (the operator who asked) or a list of approver `sub`s
    /// (used for the daemon's own proposals, which have no requester).
    #[serde(deserialize_with = "crate::config::string_list")]
    pub approver: Vec<String>,
    /// How long the approver has, in seconds (≤ 300 keeps Auth0 on push).
    pub requested_expiry_secs: u32,
    /// When nobody answered in time.
    pub on_timeout: Unconfirmed,
    /// When the provider failed or refused.
    pub on_error: Unconfirmed,
}

impl Default for StepUpSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            min_severity: Severity::High,
            auto_block_severity: Severity::Critical,
            approver: vec!["requester".into()],
            requested_expiry_secs: 300,
            on_timeout: Unconfirmed::KeepBlocked,
            on_error: Unconfirmed::KeepBlocked,
        }
    }
}

impl StepUpSettings {
    /// Approvers from the configured list (not "requester").
    fn listed(&self) -> Vec<&str> {
        self.approver
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "requester")
            .collect()
    }
}

/// A progress event for watchers.
#[derive(Debug, Clone)]
pub struct StepUpEvent {
    /// The request after the change.
    pub row: StepUpRow,
}

/// Runs step-ups.
pub struct StepUps {
    settings: StepUpSettings,
    store: Store,
    cache: Arc<StateCache>,
    ciba: Option<Arc<CibaClient>>,
    enforcement: broadcast::Sender<EnforcementChanged>,
    events: broadcast::Sender<StepUpEvent>,
    cancel: CancellationToken,
    limiter: Mutex<HashMap<String, VecDeque<Instant>>>,
    system: Actor,
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for StepUps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepUps")
            .field("enabled", &self.settings.enabled)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
        enforcement: broadcast::Sender<EnforcementChanged>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            settings,
            store,
            cache,
            ciba,
            enforcement,
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

    /// The settings.
    pub fn settings(&self) -> &StepUpSettings {
        &self.settings
    }

    /// Progress of every step-up.
    pub fn subscribe(&self) -> broadcast::Receiver<StepUpEvent> {
        self.events.subscribe()
    }

    /// Whether a change on `target` needs a human: its open findings reach `min_severity`.
    pub async fn required_for(&self, target: &Target) -> Result<bool> {
        if !self.enabled() {
            return Ok(false);
        }
        let row = self.store.get_target(target.clone()).await?;
        Ok(row
            .and_then(|r| r.max_open_severity)
            .is_some_and(|m| m >= self.settings.min_severity))
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
        let id = new_request_code();
        // The phone says what is at stake: "DC-4F2A grant mcp github-mcp github".
        let what = match payload.connections.as_slice() {
            [] => target.name.clone(),
            decls => format!(
                "{} {}",
                target.name,
                decls
                    .iter()
                    .map(|d| d.connection.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        };
        let row = StepUpRow {
            binding_message: binding_message(&id, action.as_str(), target.kind.as_str(), &what),
            id,
            target: target.clone(),
            action,
            reason,
            finding_id,
            requester,
            approver_sub: approver,
            auth_req_id: None,
            created_at: now_ts(),
            deadline: unix_now() + i64::from(self.settings.requested_expiry_secs),
            interval_secs: 5,
            status: "pending".into(),
            outcome_reason: String::new(),
            decided_at: None,
            approver: None,
            payload,
        };
        let effect = self.store.write(WriteOp::StepUpOpen(Box::new(row))).await?;
        let WriteEffect::StepUpOpened { row, joined } = effect else {
            return Err(Error::Internal("unexpected write effect".into()));
        };
        if holds(row.action) {
            self.cache.hold(&row.target, &row.id);
            // Runtime enforcers treat a held target as blocked.
            let _ = self.enforcement.send(EnforcementChanged {
                target: row.target.clone(),
                state: EnforcementState::Blocked,
            });
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

    fn approver_for(&self, requester: &Actor) -> Result<String> {
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
        self.admit(&row.approver_sub).await;
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
        let sent = WriteOp::StepUpSent {
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
                "error",
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
            if row.deadline <= unix_now() {
                self.finish_with(
                    &row,
                    "timed_out",
                    "the deadline passed while the daemon was down",
                    None,
                )
                .await;
            } else if self.ciba.is_some() {
                let me = self.clone();
                tokio::spawn(async move { me.resume(row).await });
            } else {
                self.finish_with(&row, "error", "step-up is no longer configured", None)
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
                self.finish_with(row, "error", &reason, None).await;
            }
            CibaOutcome::Denied => {
                self.finish_with(row, "denied", "denied on the approver's device", None)
                    .await
            }
            CibaOutcome::TimedOut => {
                self.finish_with(row, "timed_out", "no answer before the deadline", None)
                    .await;
            }
            // Shutdown: the request stays pending and is resumed at the next start.
            CibaOutcome::Cancelled => {}
            CibaOutcome::Error(e) => self.finish_with(row, "error", &e.to_string(), None).await,
        }
    }

    /// Ends a request with `status`, committing what the semantics say.
    pub async fn finish_with(
        &self,
        row: &StepUpRow,
        status: &str,
        reason: &str,
        approver: Option<serde_json::Value>,
    ) {
        if let Err(e) = self
            .close(row, status, reason, approver, None, self.system.clone())
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
                        &crate::vault::subject_context(&row.target.name, &row.approver_sub),
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
            "approved",
            "approved on the approver's device",
            Some(approver),
            subject,
            self.system.clone(),
        )
        .await
    }

    /// Cancels a pending request (audited with `actor`).
    pub async fn cancel(&self, id: &str, actor: Actor) -> Result<StepUpRow> {
        let row = self
            .store
            .get_stepup(id.to_owned())
            .await?
            .ok_or_else(|| Error::NotFound(format!("step-up {id}")))?;
        self.close(
            &row,
            "cancelled",
            "cancelled by an operator",
            None,
            None,
            actor,
        )
        .await
    }

    async fn close(
        &self,
        row: &StepUpRow,
        status: &str,
        reason: &str,
        approver: Option<serde_json::Value>,
        subject: Option<SealedSubject>,
        actor: Actor,
    ) -> Result<StepUpRow> {
        let proposed = row.requester.auth_method == "system";
        let policy = match status {
            "timed_out" => Some(self.settings.on_timeout),
            "error" => Some(self.settings.on_error),
            _ => None,
        };
        let human = status == "approved";
        let mut details = serde_json::json!({"human_confirmed": human, "request_id": row.id});
        if let (Some(p), serde_json::Value::Object(map)) = (policy, &mut details) {
            map.insert("policy".into(), serde_json::json!(p));
        }
        let enforce = |action: EnforcementAction, why: String| {
            Box::new(WriteOp::SetEnforcement {
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
            })
        };
        let grant = |connections: Vec<ConnectionDecl>| {
            Box::new(WriteOp::GrantConnections {
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
            })
        };
        let commit: Option<Box<WriteOp>> = match (status, row.action) {
            ("approved", StepUpAction::Block) => {
                Some(enforce(EnforcementAction::Block, row.reason.clone()))
            }
            ("approved", StepUpAction::Allow) if !row.payload.connections.is_empty() => {
                Some(Box::new(WriteOp::All(vec![
                    *enforce(EnforcementAction::Allow, row.reason.clone()),
                    *grant(row.payload.connections.clone()),
                ])))
            }
            ("approved", StepUpAction::Allow) => {
                Some(enforce(EnforcementAction::Allow, row.reason.clone()))
            }
            ("approved", StepUpAction::Grant) => Some(grant(row.payload.connections.clone())),
            ("approved", StepUpAction::Unblock) => {
                Some(enforce(EnforcementAction::Unblock, row.reason.clone()))
            }
            ("approved", StepUpAction::Dismiss) => row.finding_id.map(|id| {
                Box::new(WriteOp::DismissFinding {
                    id,
                    reason: row.reason.clone(),
                    actor: row.requester.clone(),
                })
            }),
            // The approver overrode the daemon's own proposal: the target is allowed.
            ("denied", StepUpAction::Block) if proposed => Some(enforce(
                EnforcementAction::Allow,
                format!(
                    "override: {} denied the proposed block ({})",
                    row.approver_sub, row.id
                ),
            )),
            ("timed_out" | "error", StepUpAction::Block)
                if policy == Some(Unconfirmed::KeepBlocked) =>
            {
                Some(enforce(
                    EnforcementAction::Block,
                    format!(
                        "{} without confirmation ({status}); policy keeps it blocked",
                        row.reason
                    ),
                ))
            }
            _ => None,
        };
        let effect = self
            .store
            .write(WriteOp::StepUpClose {
                id: row.id.clone(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                approver,
                actor,
                commit,
                details,
            })
            .await?;
        let WriteEffect::StepUpClosed {
            row: closed,
            committed,
            ..
        } = effect
        else {
            return Err(Error::Internal("unexpected write effect".into()));
        };
        if !holds(closed.action) {
            let _ = self.events.send(StepUpEvent {
                row: (*closed).clone(),
            });
            return Ok(*closed);
        }
        self.cache.release(&closed.target, &closed.id);
        let committed = committed.map(|c| match *c {
            WriteEffect::All(effects) => effects.into_iter().next(),
            other => Some(other),
        });
        if let Some(Some(WriteEffect::Enforcement {
            decision,
            changed: true,
            ..
        })) = committed
        {
            let _ = self.enforcement.send(EnforcementChanged {
                target: closed.target.clone(),
                state: decision.state,
            });
        } else if self.cache.check(closed.target.kind, &closed.target.name)
            == crate::state::Verdict::Unknown
        {
            // Released hold with no decision: runtime enforcers re-enable it.
            let _ = self.enforcement.send(EnforcementChanged {
                target: closed.target.clone(),
                state: EnforcementState::None,
            });
        }
        let _ = self.events.send(StepUpEvent {
            row: (*closed).clone(),
        });
        Ok(*closed)
    }
}

/// Whether a pending request of this kind holds its target (fail closed).
/// A scope escalation does not: the server keeps what it already has.
fn holds(action: StepUpAction) -> bool {
    action != StepUpAction::Grant
}
