//! A grant's status changed by decision rather than by an exchange: suspended
//! or resumed by an operator, suspended by the daemon after it idled, resumed
//! by its approver over CIBA, each change with its audit entry
//! (`connection-suspend`, `connection-resume`).

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::connections::{GrantRow, GrantStatus, get};
use super::writer::{Operation, Tx};
use crate::audit::{Entry, NewEntry};
use crate::error::{Error, Result};
use crate::model::{Actor, Target, TargetKind};

/// What an operator asks of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Stop serving it until resumed.
    Suspend,
    /// Serve it again.
    Resume,
}

impl StatusChange {
    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Suspend => "connection-suspend",
            Self::Resume => "connection-resume",
        }
    }
}

/// Suspend or resume one grant, audited.
#[derive(Debug, Clone)]
pub struct ChangeGrantStatus {
    /// MCP server name.
    pub server: String,
    /// Connection name.
    pub connection: String,
    /// Suspend or resume.
    pub change: StatusChange,
    /// Why (recorded on the grant and in the audit entry).
    pub reason: String,
    /// Who decided.
    pub actor: Actor,
    /// Extra audit details (a CIBA approval's request id, for example).
    pub details: serde_json::Value,
}

/// A grant after a status change, with the change's audit entry.
#[derive(Debug, Clone)]
pub struct StatusChanged {
    /// The grant as stored now.
    pub grant: Box<GrantRow>,
    /// Audit entry written.
    pub entry: Arc<Entry>,
}

fn server_target(server: &str) -> Target {
    Target {
        kind: TargetKind::Mcp,
        name: server.to_owned(),
    }
}

fn set_status(
    conn: &Connection,
    server: &str,
    connection: &str,
    status: GrantStatus,
    reason: &str,
    now: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE connection_grants SET status = ?3, status_reason = ?4, status_changed_at = ?5
         WHERE server = ?1 AND connection = ?2",
    )
    .and_then(|mut s| s.execute(params![server, connection, status, reason, now]))
    .map(|_| ())
    .map_err(Error::store("changing a connection grant's status"))
}

impl Operation for ChangeGrantStatus {
    type Effect = StatusChanged;

    fn apply(self, tx: &mut Tx<'_>) -> Result<StatusChanged> {
        let Self {
            server,
            connection,
            change,
            reason,
            actor,
            details,
        } = self;
        let now = tx.now();
        let conn = tx.conn();
        let Some(before) = get(conn, &server, &connection)? else {
            return Err(Error::NotFound(format!(
                "{server} has no grant for connection {connection}"
            )));
        };
        let to = match (change, before.status) {
            (StatusChange::Suspend, GrantStatus::Active | GrantStatus::Broken) => {
                GrantStatus::Suspended
            }
            (StatusChange::Resume, GrantStatus::Suspended) => GrantStatus::Active,
            (StatusChange::Suspend, GrantStatus::Suspended) => {
                return Err(Error::FailedPrecondition(format!(
                    "{server}'s grant for {connection} is already suspended"
                )));
            }
            (StatusChange::Resume, GrantStatus::Active) => {
                return Err(Error::FailedPrecondition(format!(
                    "{server}'s grant for {connection} is not suspended (it is active)"
                )));
            }
            (_, status) => {
                return Err(Error::FailedPrecondition(format!(
                    "{server}'s grant for {connection} is {}: declare it again with `defenseclawctl mcp allow {server} --connection {connection}`",
                    status.as_str()
                )));
            }
        };
        let stored_reason = if to == GrantStatus::Active {
            ""
        } else {
            reason.as_str()
        };
        set_status(conn, &server, &connection, to, stored_reason, &now)?;
        let grant = get(conn, &server, &connection)?
            .ok_or_else(|| Error::Internal(format!("grant {server}/{connection} vanished")))?;
        let mut all = serde_json::json!({
            "connection": connection,
            "from": before.status.as_str(),
            "to": to.as_str(),
        });
        if let (Some(all), serde_json::Value::Object(extra)) = (all.as_object_mut(), details) {
            all.extend(extra);
        }
        let entry = tx.append(&NewEntry {
            action: change.action().into(),
            target: Some(server_target(&server)),
            severity: None,
            outcome: "success".into(),
            reason,
            details: all,
            actor,
        })?;
        Ok(StatusChanged {
            grant: Box::new(grant),
            entry,
        })
    }
}

/// A suspended grant resumed because its approver said yes over CIBA: as a
/// [`ChangeGrantStatus`] resume, except that a grant no longer suspended
/// (revoked, unlinked or resumed by hand meanwhile) is left as it is, so the
/// step-up still closes.
#[derive(Debug, Clone)]
pub struct ResumeApproved(pub ChangeGrantStatus);

impl Operation for ResumeApproved {
    type Effect = Option<StatusChanged>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Option<StatusChanged>> {
        let op = ChangeGrantStatus {
            change: StatusChange::Resume,
            ..self.0
        };
        match get(tx.conn(), &op.server, &op.connection)? {
            Some(g) if g.status == GrantStatus::Suspended => op.apply(tx).map(Some),
            _ => Ok(None),
        }
    }
}

/// Suspends active grants unused since `cutoff` (last use, declaration or
/// resumption, whichever is latest): all of them, or one server's one
/// connection. Each suspension is audited as `actor` (the daemon).
#[derive(Debug, Clone)]
pub struct SuspendIdle {
    /// Only this grant (server, connection), or every grant.
    pub only: Option<(String, String)>,
    /// Stored timestamp: grants idle since before it are suspended.
    pub cutoff: String,
    /// The configured idle limit, for the audit entry.
    pub idle_secs: u64,
    /// The daemon.
    pub actor: Actor,
}

impl Operation for SuspendIdle {
    type Effect = Vec<StatusChanged>;

    fn apply(self, tx: &mut Tx<'_>) -> Result<Vec<StatusChanged>> {
        let now = tx.now();
        let idle: Vec<(String, String, String)> = {
            let mut stmt = tx
                .conn()
                .prepare_cached(
                    "SELECT server, connection,
                            max(coalesce(last_used, ''), coalesce(status_changed_at, ''), approved_at)
                     FROM connection_grants
                     WHERE status = ?1
                       AND (?2 IS NULL OR (server = ?2 AND connection = ?3))
                       AND max(coalesce(last_used, ''), coalesce(status_changed_at, ''), approved_at) < ?4
                     ORDER BY server, connection",
                )
                .map_err(Error::store("finding idle connection grants"))?;
            let rows = stmt
                .query_map(
                    params![
                        GrantStatus::Active,
                        self.only.as_ref().map(|o| o.0.as_str()),
                        self.only.as_ref().map(|o| o.1.as_str()),
                        self.cutoff
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(Error::store("finding idle connection grants"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store("finding idle connection grants"))?
        };
        let mut changed = Vec::with_capacity(idle.len());
        for (server, connection, since) in idle {
            let reason = format!(
                "unused since {since} (idle limit {}s); the approver or an operator resumes it",
                self.idle_secs
            );
            set_status(
                tx.conn(),
                &server,
                &connection,
                GrantStatus::Suspended,
                &reason,
                &now,
            )?;
            let grant = get(tx.conn(), &server, &connection)?
                .ok_or_else(|| Error::Internal(format!("grant {server}/{connection} vanished")))?;
            let entry = tx.append(&NewEntry {
                action: StatusChange::Suspend.action().into(),
                target: Some(server_target(&server)),
                severity: None,
                outcome: "success".into(),
                reason,
                details: serde_json::json!({
                    "connection": connection,
                    "from": GrantStatus::Active.as_str(),
                    "to": GrantStatus::Suspended.as_str(),
                    "idle": true,
                    "idle_since": since,
                    "idle_suspend_secs": self.idle_secs,
                }),
                actor: self.actor.clone(),
            })?;
            changed.push(StatusChanged {
                grant: Box::new(grant),
                entry,
            });
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, format_ts};
    use crate::state::StateCache;
    use crate::store::connections::ConnectionDecl;
    use crate::store::{ConnectionUsed, GrantConnections, RevokeConnection, Store, WriterContext};

    fn daemon() -> Actor {
        Actor {
            id: "system:token-vault".into(),
            name: "token-vault".into(),
            ..Actor::system()
        }
    }

    fn change(change: StatusChange) -> ChangeGrantStatus {
        ChangeGrantStatus {
            server: "gh".into(),
            connection: "github".into(),
            change,
            reason: "by hand".into(),
            actor: Actor::system(),
            details: serde_json::Value::Null,
        }
    }

    fn idle(clock: &Clock, secs: u64) -> SuspendIdle {
        let cutoff = clock.now() - Duration::from_secs(secs);
        SuspendIdle {
            only: Some(("gh".into(), "github".into())),
            cutoff: format_ts(cutoff),
            idle_secs: secs,
            actor: daemon(),
        }
    }

    fn used(status: Option<(GrantStatus, String)>) -> ConnectionUsed {
        ConnectionUsed {
            server: "gh".into(),
            connection: "github".into(),
            uses: 1,
            granted_scopes: None,
            status,
            audit: None,
        }
    }

    #[tokio::test]
    async fn idle_suspension_holds_until_a_person_resumes_and_resumption_restarts_the_idle_clock() {
        let dir = tempfile::tempdir().unwrap();
        let start = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let clock = Clock::manual(start);
        let (store, _writer) = Store::open(
            &dir.path().join("state.db"),
            WriterContext {
                cache: Arc::new(StateCache::default()),
                head_log_every: 0,
                clock: clock.clone(),
            },
        )
        .unwrap();
        store
            .write(GrantConnections {
                server: "gh".into(),
                grants: vec![ConnectionDecl {
                    connection: "github".into(),
                    scopes: vec!["repo".into()],
                }],
                approved_by: "auth0|op".into(),
                subject: None,
                actor: Actor::system(),
                details: serde_json::Value::Null,
            })
            .await
            .unwrap();
        let get = || store.get_grant("gh".into(), "github".into());

        // Used recently: not idle.
        clock.advance(Duration::from_secs(50));
        store.write(used(None)).await.unwrap();
        clock.advance(Duration::from_secs(50));
        assert!(store.write(idle(&clock, 60)).await.unwrap().is_empty());
        assert_eq!(get().await.unwrap().unwrap().status, GrantStatus::Active);

        // Idle past the limit: suspended, audited by the daemon as itself.
        clock.advance(Duration::from_secs(20));
        let changed = store.write(idle(&clock, 60)).await.unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].grant.status, GrantStatus::Suspended);
        assert_eq!(changed[0].entry.action, "connection-suspend");
        assert_eq!(changed[0].entry.actor_id, "system:token-vault");

        // Attack: a successful exchange that raced the suspension does not reactivate it.
        store
            .write(used(Some((GrantStatus::Active, String::new()))))
            .await
            .unwrap();
        assert_eq!(get().await.unwrap().unwrap().status, GrantStatus::Suspended);
        // Attack: suspending twice is refused, not re-audited.
        let err = store
            .write(change(StatusChange::Suspend))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already suspended"), "{err}");

        // Resumed by hand: active, and the idle clock restarts at the resumption.
        clock.advance(Duration::from_secs(3600));
        let resumed = store.write(change(StatusChange::Resume)).await.unwrap();
        assert_eq!(resumed.grant.status, GrantStatus::Active);
        assert_eq!(resumed.entry.action, "connection-resume");
        assert!(store.write(idle(&clock, 60)).await.unwrap().is_empty());
        let err = store.write(change(StatusChange::Resume)).await.unwrap_err();
        assert!(err.to_string().contains("not suspended"), "{err}");

        // Suspended by hand, then revoked: resume cannot bring a revoked grant back.
        store.write(change(StatusChange::Suspend)).await.unwrap();
        store
            .write(RevokeConnection {
                server: "gh".into(),
                connection: "github".into(),
                reason: "gone".into(),
                actor: Actor::system(),
                at_provider: None,
            })
            .await
            .unwrap();
        let err = store.write(change(StatusChange::Resume)).await.unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        let missing = ChangeGrantStatus {
            server: "other".into(),
            ..change(StatusChange::Suspend)
        };
        assert!(matches!(
            store.write(missing).await.unwrap_err(),
            Error::NotFound(_)
        ));
    }
}
