//! Idle suspension, and a suspended grant at its next use: a grant unused for
//! `idle_suspend_secs` is suspended when next asked for; with step-up on, its approver is asked
//! over CIBA ("DC-… resume mcp SERVER CONNECTION") while the call waits; an
//! approval resumes it (audited as the approver) and the call is served, a
//! denial or no answer keeps it suspended and the call is refused, each with
//! its own reason. With step-up off the call is refused naming the command an
//! operator runs to resume it.

use std::time::Duration;

use tokio::sync::broadcast;

use super::TokenBroker;
use crate::error::{Error, HeldReason, Result};
use crate::governance::stepup::StepUpEvent;
use crate::model::{Actor, Target, TargetKind};
use crate::store::connections::{ConnectionDecl, GrantRow, GrantStatus};
use crate::store::stepup::{StepUpAction, StepUpPayload, StepUpRow};
use crate::store::{StepUpStatus, SuspendIdle};

/// How often the store is re-read while waiting, in case an event was missed.
const RECHECK: Duration = Duration::from_secs(5);
/// Waiting ends this long after the request's own deadline at the latest.
const GRACE: Duration = Duration::from_secs(60);

impl TokenBroker {
    /// Suspends `grant` (audited by the daemon as its own actor, cached
    /// tokens dropped) when it has not been used for `idle_suspend_secs`;
    /// returns the grant as it stands afterwards.
    pub(super) async fn suspend_if_idle(&self, grant: GrantRow) -> Result<GrantRow> {
        let idle = self.settings.idle_suspend_secs;
        if idle == 0 {
            return Ok(grant);
        }
        let limit = time::Duration::seconds(i64::try_from(idle).unwrap_or(i64::MAX));
        let Some(cutoff) = self.store.clock().now().checked_sub(limit) else {
            return Ok(grant);
        };
        let changed = self
            .store
            .write(SuspendIdle {
                only: Some((grant.server.clone(), grant.connection.clone())),
                cutoff: crate::clock::format_ts(cutoff),
                idle_secs: idle,
                actor: Actor {
                    id: "system:token-vault".into(),
                    name: "token-vault".into(),
                    ..Actor::system()
                },
            })
            .await?;
        match changed.into_iter().next() {
            Some(c) => {
                self.forget(&grant.server, Some(&grant.connection));
                Ok(*c.grant)
            }
            None => Ok(grant),
        }
    }

    /// `grant` is suspended: ask its approver to resume it (step-up on) and
    /// return it resumed, or refuse with why it stays suspended.
    pub(super) async fn resume_or_refuse(
        &self,
        caller: &Actor,
        grant: GrantRow,
    ) -> Result<GrantRow> {
        let (server, connection) = (grant.server.clone(), grant.connection.clone());
        let by_hand = format!("`defenseclawctl connections resume {server} {connection}`");
        if !self.stepups.enabled() {
            return Err(Error::GrantHeld {
                reason: HeldReason::Suspended,
                message: format!(
                    "{server}'s grant for {connection} is suspended ({}); it is not served until an operator resumes it: {by_hand}",
                    grant.status_reason
                ),
            });
        }
        let approver = match approver_sub(&grant.approved_by) {
            Some(sub) => sub.to_owned(),
            None => self
                .stepups
                .approver_for(caller)
                .map_err(|e| Error::GrantHeld {
                    reason: HeldReason::ResumeFailed,
                    message: format!(
                        "{server}'s grant for {connection} is suspended and nobody can be asked to resume it ({e}); an operator can: {by_hand}"
                    ),
                })?,
        };
        // Subscribed before the request opens, so its end cannot be missed.
        let mut events = self.stepups.subscribe();
        let opened = self
            .stepups
            .request_to(
                approver,
                caller.clone(),
                Target {
                    kind: TargetKind::Mcp,
                    name: server.clone(),
                },
                StepUpAction::Resume,
                format!("{server} asks for its suspended {connection} grant"),
                None,
                StepUpPayload {
                    connections: vec![ConnectionDecl {
                        connection: connection.clone(),
                        scopes: Vec::new(),
                    }],
                    unattended: false,
                },
            )
            .await;
        let row = match opened {
            Ok(row) => row,
            Err(e) => {
                return Err(Error::GrantHeld {
                    reason: HeldReason::ResumeFailed,
                    message: format!(
                        "{server}'s grant for {connection} is suspended and its approver could not be asked ({e}); an operator can resume it: {by_hand}"
                    ),
                });
            }
        };
        let ended = self.wait_for_end(&mut events, row).await?;
        let held = |reason, what: String| Error::GrantHeld {
            reason,
            message: format!(
                "{server}'s grant for {connection} stays suspended: {what} (request {}); an operator can resume it: {by_hand}",
                ended.id
            ),
        };
        match ended.status {
            StepUpStatus::Approved => {}
            StepUpStatus::Denied => {
                return Err(held(
                    HeldReason::ResumeDenied,
                    format!("{} denied resuming it", ended.approver_sub),
                ));
            }
            StepUpStatus::TimedOut => {
                return Err(held(
                    HeldReason::ResumeTimedOut,
                    format!("{} did not answer before the deadline", ended.approver_sub),
                ));
            }
            StepUpStatus::Pending => {
                return Err(held(
                    HeldReason::ResumeFailed,
                    "the approval is still pending; try again once it is answered".into(),
                ));
            }
            StepUpStatus::Error | StepUpStatus::Cancelled => {
                return Err(held(
                    HeldReason::ResumeFailed,
                    format!(
                        "asking {} failed ({})",
                        ended.approver_sub, ended.outcome_reason
                    ),
                ));
            }
        }
        match self
            .store
            .get_grant(server.clone(), connection.clone())
            .await?
        {
            Some(g) if g.status == GrantStatus::Active => Ok(g),
            Some(g) => Err(Error::FailedPrecondition(format!(
                "{server}'s grant for {connection} was approved for resumption (request {}) but is {} now",
                ended.id,
                g.status.as_str()
            ))),
            None => Err(Error::NotFound(format!(
                "{server}'s grant for {connection}"
            ))),
        }
    }

    /// Follows step-up events (and re-reads the store now and then) until
    /// the request `row` ends, or its deadline is long past.
    async fn wait_for_end(
        &self,
        events: &mut broadcast::Receiver<StepUpEvent>,
        row: StepUpRow,
    ) -> Result<StepUpRow> {
        let expiry = u64::from(self.stepups.settings().requested_expiry_secs);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(expiry) + GRACE;
        loop {
            let recheck = tokio::time::sleep(RECHECK);
            tokio::select! {
                event = events.recv() => match event {
                    Ok(StepUpEvent { row: now }) if now.id == row.id && !now.status.is_pending() => {
                        return Ok(now);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => tokio::time::sleep(RECHECK).await,
                },
                () = recheck => {}
            }
            let now = self
                .store
                .get_stepup(row.id.clone())
                .await?
                .ok_or_else(|| Error::Internal(format!("step-up {} vanished", row.id)))?;
            if !now.status.is_pending() || tokio::time::Instant::now() >= give_up {
                return Ok(now);
            }
        }
    }
}

/// The `sub` of the person who approved a grant, when it was a person known to
/// the identity provider (not a local user or the daemon).
fn approver_sub(approved_by: &str) -> Option<&str> {
    let local = approved_by.is_empty()
        || approved_by.starts_with("uid:")
        || approved_by == "system"
        || approved_by.starts_with("system:");
    (!local).then_some(approved_by)
}

#[cfg(test)]
mod tests {
    use super::approver_sub;

    #[test]
    fn only_people_at_the_provider_are_asked() {
        assert_eq!(approver_sub("auth0|op"), Some("auth0|op"));
        for local in ["", "uid:1000", "system", "system:token-vault"] {
            assert_eq!(approver_sub(local), None, "{local}");
        }
    }
}
