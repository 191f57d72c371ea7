//! Token Vault for MCP servers: short-lived provider tokens, just in time.
//!
//! An operator allows an MCP server together with the connections it may use
//! (`mcp allow NAME --connection github`). At each start the server's wrapper
//! asks for a token; the broker checks the server is allowed and declared the
//! connection, exchanges an Auth0 credential for a provider token (the caller's
//! live token, else the approver's sealed refresh token), audits the exchange
//! and hands the token over. Tokens live in memory only, shared by concurrent
//! callers and cached until shortly before they expire.

mod resume;
pub mod revocation;
pub mod seal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, broadcast};
use tokio_util::sync::CancellationToken;

use crate::audit::NewEntry;
use crate::audit_coalesce::AuditCoalescer;
use crate::config::ConfigError;
use crate::config::governance::TokenVaultSettings;
use crate::error::{Error, Result};
use crate::events::EnforcementChanged;
use crate::governance::stepup::StepUps;
use crate::model::{Actor, EnforcementState, Target, TargetKind};
use crate::oidc::token_vault::{Subject, TokenVaultClient, VaultError};
use crate::oidc::{ProviderToken, RefreshToken};
use crate::state::{StateCache, Verdict};
use crate::store::connections::{ConnectionDecl, GrantRow, GrantStatus};
use crate::store::stepup::{StepUpAction, StepUpPayload};
use crate::store::{ConnectionUsed, Store};
use seal::{Sealer, subject_context};

/// Most scopes one connection declaration may ask for.
const MAX_SCOPES: usize = 64;

/// Checks requested provider scopes.
pub fn validate_scopes(field: &'static str, scopes: &[String]) -> Result<()> {
    if scopes.len() > MAX_SCOPES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    for s in scopes {
        if s.is_empty()
            || s.len() > 256
            || !s
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        {
            return Err(Error::invalid(
                field,
                format!(
                    "{} is not a scope (printable ASCII without spaces or quotes)",
                    crate::error::quoted(s)
                ),
            ));
        }
    }
    Ok(())
}

/// A provider token handed to a caller.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The provider token itself (never logged; `Debug` redacts it).
    pub token: ProviderToken,
    /// When it expires, seconds since the epoch.
    pub expires_at: i64,
    /// Scopes it carries (granted, else declared).
    pub scopes: Vec<String>,
    /// `access_token` or `refresh_token`: which subject was exchanged.
    pub subject: &'static str,
    /// Served from memory.
    pub cached: bool,
}

/// A failure shared by every caller of one exchange.
#[derive(Debug, Clone)]
enum Failure {
    Precondition(String),
    Unauthenticated(String),
    Unavailable(String),
    Internal(String),
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Precondition(m) => Error::FailedPrecondition(m),
            Failure::Unauthenticated(m) => Error::Unauthenticated(m),
            Failure::Unavailable(m) => Error::Unavailable(m),
            Failure::Internal(m) => Error::Internal(m),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    server: String,
    connection: String,
    sub: String,
}

struct Cached {
    issued: Issued,
    until: Instant,
}

type Flight = OnceCell<std::result::Result<Issued, Failure>>;

/// The credential to exchange, owned.
enum OwnedSubject {
    Access(String),
    Refresh(RefreshToken),
}

impl OwnedSubject {
    fn borrow(&self) -> Subject<'_> {
        match self {
            OwnedSubject::Access(t) => Subject::AccessToken(t),
            OwnedSubject::Refresh(t) => Subject::RefreshToken(t),
        }
    }
}

/// Hands out provider tokens.
pub struct TokenBroker {
    settings: TokenVaultSettings,
    store: Store,
    cache: Arc<StateCache>,
    client: Option<Arc<TokenVaultClient>>,
    sealer: Option<Arc<Sealer>>,
    stepups: Arc<StepUps>,
    /// `[token_vault] server_uids`: who may receive a server's tokens without an operator token.
    server_uids: HashMap<String, Vec<u32>>,
    /// Hand-outs and refusals are audited through it.
    coalescer: Arc<AuditCoalescer>,
    tokens: Mutex<HashMap<Key, Cached>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    /// Bumped whenever grants are revoked or servers blocked, so an exchange
    /// that started before does not refill the cache.
    generation: AtomicU64,
}

impl std::fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBroker")
            .field("enabled", &self.client.is_some())
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

impl TokenBroker {
    /// A broker; `client` is `None` when Token Vault is not configured.
    pub fn new(
        settings: TokenVaultSettings,
        store: Store,
        cache: Arc<StateCache>,
        client: Option<Arc<TokenVaultClient>>,
        sealer: Option<Arc<Sealer>>,
        stepups: Arc<StepUps>,
        coalescer: Arc<AuditCoalescer>,
    ) -> std::result::Result<Arc<Self>, ConfigError> {
        let server_uids = settings.server_uid_map()?;
        Ok(Arc::new(Self {
            server_uids,
            coalescer,
            settings,
            store,
            cache,
            client,
            sealer,
            stepups,
            tokens: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }))
    }

    /// Whether an `mcp allow` declaring connections should go through step-up
    /// to keep the approver's refresh token.
    pub fn wants_unattended(&self) -> bool {
        self.settings.unattended && self.stepups.can_keep_subject()
    }

    /// Drops every cached token of `server` (blocked), or of one of its connections (revoked).
    pub fn forget(&self, server: &str, connection: Option<&str>) {
        self.forget_where(|k| k.server == server && connection.is_none_or(|c| k.connection == c));
    }

    /// Drops the cached tokens of `server`'s `connection` exchanged for anyone but `keep_sub`
    /// (a grant re-declared by another operator).
    pub fn forget_others(&self, server: &str, connection: &str, keep_sub: &str) {
        self.forget_where(|k| {
            k.server == server && k.connection == connection && k.sub != keep_sub
        });
    }

    /// Drops every cached token.
    pub fn forget_all(&self) {
        self.forget_where(|_| true);
    }

    fn forget_where(&self, drop: impl Fn(&Key) -> bool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| !drop(k));
    }

    /// A token of `connection` for `server`, for `caller` (whose verified bearer
    /// token, if any, is `bearer`). `fresh` skips the cache (a server start).
    pub async fn token(
        &self,
        caller: &Actor,
        bearer: Option<&str>,
        server: &str,
        connection: &str,
        fresh: bool,
    ) -> Result<Issued> {
        let Some(client) = self.client.clone() else {
            return Err(Error::FailedPrecondition(
                "Token Vault is not configured: it needs [auth] mode = \"oidc\", daemon_client_id and the daemon's client secret".into(),
            ));
        };
        match self.cache.check(TargetKind::Mcp, server) {
            Verdict::Allowed(_) => {}
            Verdict::Blocked(d) => {
                return Err(Error::PermissionDenied(format!(
                    "MCP server {server} is blocked ({}); it gets no credentials",
                    d.reason
                )));
            }
            Verdict::Unknown => {
                return Err(Error::PermissionDenied(format!(
                    "MCP server {server} is not allowed: `defenseclawctl mcp allow {server} --connection {connection}`"
                )));
            }
        }
        let grant = self
            .store
            .get_grant(server.to_owned(), connection.to_owned())
            .await?;
        let grant = match grant {
            Some(g) if g.status == GrantStatus::Active => Some(self.suspend_if_idle(g).await?),
            other => other,
        };
        let grant = match grant {
            None => return Err(self.escalate(caller, server, connection).await),
            Some(g) if g.status == GrantStatus::Suspended => {
                // Only a caller who could get its token may have its approver asked.
                self.subject_for(caller, bearer, &g).await?;
                self.resume_or_refuse(caller, g).await?
            }
            Some(g) if g.status == GrantStatus::Unlinked => {
                return Err(Error::FailedPrecondition(format!(
                    "{server}'s grant for {connection} is unlinked ({}); link the account again with `defenseclawctl connections connect {connection}`, then re-approve the grant: `defenseclawctl mcp allow {server} --connection {connection}`",
                    g.status_reason
                )));
            }
            Some(g) if g.status == GrantStatus::Revoked => {
                return Err(Error::PermissionDenied(format!(
                    "{server}'s grant for {connection} was revoked ({}); declare it again with `defenseclawctl mcp allow {server} --connection {connection}`",
                    g.status_reason
                )));
            }
            Some(g) => g,
        };
        let (sub, subject) = self.subject_for(caller, bearer, &grant).await?;
        let key = Key {
            server: server.to_owned(),
            connection: connection.to_owned(),
            sub,
        };
        if !fresh && let Some(hit) = self.cached(&key) {
            self.audit_handout(caller, &key, &hit).await?;
            self.record_use(&key);
            return Ok(hit);
        }
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut led = false;
        let outcome = flight
            .get_or_init(|| {
                led = true;
                self.exchange(&client, caller, &grant, &key, subject)
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&key);
            }
        }
        let issued = outcome.map_err(Error::from)?;
        if !led {
            // Another caller's exchange: its entry names that caller, not this one.
            self.audit_handout(caller, &key, &issued).await?;
            self.record_use(&key);
        }
        Ok(issued)
    }

    /// Audits a token handed out without an exchange of its own (coalesced
    /// per peer uid, server, connection and credential), before the caller gets it.
    async fn audit_handout(&self, caller: &Actor, key: &Key, issued: &Issued) -> Result<()> {
        let uid = crate::audit_coalesce::peer_uid(caller.uid);
        let coalesce_key = crate::audit_coalesce::key(&[
            "token-handout",
            &uid,
            &caller.id,
            &key.server,
            &key.connection,
            &key.sub,
        ]);
        let entry = NewEntry {
            action: "token-handout".into(),
            target: Some(Target {
                kind: TargetKind::Mcp,
                name: key.server.clone(),
            }),
            severity: None,
            outcome: "success".into(),
            reason: format!(
                "{} token for {} handed to uid {uid}",
                key.connection, key.server
            ),
            details: serde_json::json!({
                "connection": key.connection,
                "subject": issued.subject,
                "subject_sub": key.sub,
                "cached": issued.cached,
            }),
            actor: caller.clone(),
        };
        self.coalescer
            .record(coalesce_key, entry)
            .await
            .map_err(|e| Error::Internal(format!("could not audit the hand-out: {e}")))
    }

    /// The caller's own token (mode a), else the grant's stored refresh token
    /// (mode b), which only a uid listed for the server in `server_uids` gets.
    async fn subject_for(
        &self,
        caller: &Actor,
        bearer: Option<&str>,
        grant: &GrantRow,
    ) -> Result<(String, OwnedSubject)> {
        if caller.auth_method == "oidc"
            && let Some(token) = bearer
        {
            return Ok((caller.id.clone(), OwnedSubject::Access(token.to_owned())));
        }
        let Some(stored) = &grant.subject else {
            return Err(Error::FailedPrecondition(format!(
                "no credential to exchange for {}/{}: start it as a logged-in operator (`defenseclawctl auth login`), or re-approve the grant with step-up and a token vault key so the daemon keeps one for unattended use",
                grant.server, grant.connection
            )));
        };
        let listed = self
            .server_uids
            .get(&grant.server)
            .is_some_and(|uids| caller.uid.is_some_and(|u| uids.contains(&u)));
        if !listed {
            return Err(self.refuse_unlisted(caller, grant, &stored.sub).await);
        }
        let Some(sealer) = &self.sealer else {
            return Err(Error::FailedPrecondition(format!(
                "{}/{} has a sealed credential but no token vault key is configured ([token_vault] key_file or the token-vault-key credential)",
                grant.server, grant.connection
            )));
        };
        let plain = sealer
            .open(&stored.sealed, &subject_context(&grant.server, &stored.sub))
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let token = String::from_utf8(plain).map_err(|_| {
            Error::FailedPrecondition("the stored credential is not text; re-approve".into())
        })?;
        Ok((
            stored.sub.clone(),
            OwnedSubject::Refresh(RefreshToken::new(token)),
        ))
    }

    fn cached(&self, key: &Key) -> Option<Issued> {
        if self.settings.cache_max_secs == 0 {
            return None;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        match tokens.get(key) {
            Some(c) if c.until > Instant::now() => Some(Issued {
                cached: true,
                ..c.issued.clone()
            }),
            Some(_) => {
                tokens.remove(key);
                None
            }
            None => None,
        }
    }

    /// Counts a token handed out without an exchange; bookkeeping only, so the
    /// caller does not wait for it.
    fn record_use(&self, key: &Key) {
        let store = self.store.clone();
        let op = ConnectionUsed {
            server: key.server.clone(),
            connection: key.connection.clone(),
            uses: 1,
            granted_scopes: None,
            status: None,
            audit: None,
        };
        tokio::spawn(async move {
            if let Err(e) = store.write(op).await {
                tracing::warn!(error = %e, "could not record a connection's use");
            }
        });
    }

    /// One exchange with the provider, audited before the token is handed out.
    async fn exchange(
        &self,
        client: &TokenVaultClient,
        caller: &Actor,
        grant: &GrantRow,
        key: &Key,
        subject: OwnedSubject,
    ) -> std::result::Result<Issued, Failure> {
        let generation = self.generation.load(Ordering::SeqCst);
        let subject = subject.borrow();
        let result = client.exchange(subject, &key.connection, None).await;
        // Every outcome: the grant's bookkeeping and one audit entry, together.
        let outcome = |uses: u64,
                       granted_scopes: Option<Vec<String>>,
                       status: Option<(GrantStatus, String)>,
                       result: &str,
                       reason: String,
                       extra: serde_json::Value| {
            let mut details = serde_json::json!({
                "connection": key.connection,
                "subject": subject.kind(),
                "subject_sub": key.sub,
            });
            // The health this exchange decided (read by the Auth-IBOM's history).
            if let (Some(map), Some((s, _))) = (details.as_object_mut(), &status) {
                map.insert("grant_status".into(), serde_json::json!(s.as_str()));
            }
            if let (Some(map), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra)
            {
                map.extend(extra);
            }
            ConnectionUsed {
                server: key.server.clone(),
                connection: key.connection.clone(),
                uses,
                granted_scopes,
                status,
                audit: Some(NewEntry {
                    action: "token-exchange".into(),
                    target: Some(Target {
                        kind: TargetKind::Mcp,
                        name: key.server.clone(),
                    }),
                    severity: None,
                    outcome: result.to_owned(),
                    reason,
                    details,
                    actor: caller.clone(),
                }),
            }
        };
        let exchanged = match result {
            Ok(x) => x,
            Err(e) => {
                let broken = matches!(
                    (&e, subject),
                    (
                        VaultError::NotConnected { .. } | VaultError::ReconnectNeeded { .. },
                        _
                    ) | (VaultError::SubjectRejected { .. }, Subject::RefreshToken(_))
                );
                self.audit_failure(outcome(
                    0,
                    None,
                    broken.then(|| (GrantStatus::Broken, e.to_string())),
                    "error",
                    e.to_string(),
                    serde_json::json!({"error": e.code()}),
                ))
                .await;
                return Err(failure_of(&e, subject, &key.server, &key.connection));
            }
        };
        let granted = exchanged
            .scopes
            .clone()
            .unwrap_or_else(|| grant.declared_scopes.clone());
        let missing: Vec<&str> = grant
            .declared_scopes
            .iter()
            .filter(|s| !granted.contains(s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let reason = format!(
                "reconnect needed: the {} token lacks declared scopes {}; run `defenseclawctl connections connect {} --scopes \"{}\"`",
                key.connection,
                missing.join(" "),
                key.connection,
                grant.declared_scopes.join(" ")
            );
            self.audit_failure(outcome(
                0,
                Some(granted.clone()),
                Some((GrantStatus::Broken, reason.clone())),
                "error",
                reason.clone(),
                serde_json::json!({"error": "scopes_missing", "granted_scopes": granted}),
            ))
            .await;
            return Err(Failure::Precondition(reason));
        }
        let expires_at = u64::try_from(crate::clock::unix_now())
            .unwrap_or(0)
            .saturating_add(exchanged.expires_in);
        // Audited (and counted) before anyone sees the token.
        self.store
            .write(outcome(
                1,
                Some(granted.clone()),
                Some((GrantStatus::Active, String::new())),
                "success",
                format!("{} token for {}", key.connection, key.server),
                serde_json::json!({"expires_in": exchanged.expires_in, "scopes": granted}),
            ))
            .await
            .map_err(|e| Failure::Internal(format!("could not audit the exchange: {e}")))?;
        let issued = Issued {
            token: exchanged.access_token,
            expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
            scopes: granted,
            subject: subject.kind(),
            cached: false,
        };
        let keep = Duration::from_secs(
            exchanged
                .expires_in
                .saturating_sub(self.settings.cache_margin_secs)
                .min(self.settings.cache_max_secs),
        );
        if !keep.is_zero() && self.generation.load(Ordering::SeqCst) == generation {
            self.tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    key.clone(),
                    Cached {
                        issued: issued.clone(),
                        until: Instant::now() + keep,
                    },
                );
        }
        Ok(issued)
    }

    /// Records a failed exchange; the caller hears of the failure either way.
    async fn audit_failure(&self, op: ConnectionUsed) {
        if let Err(e) = self.store.write(op).await {
            tracing::error!(error = %e, "could not audit a failed exchange");
        }
    }

    /// A caller without an operator token asking for a server its uid is not
    /// listed for: refused, audited (coalesced like every refusal).
    async fn refuse_unlisted(&self, caller: &Actor, grant: &GrantRow, sub: &str) -> Error {
        let uid = crate::audit_coalesce::peer_uid(caller.uid);
        let message = format!(
            "uid {uid} may not receive {}'s tokens without an operator token: list it for the server in [token_vault] server_uids (\"{}={uid}\"), or call with an operator token (`defenseclawctl auth login`)",
            grant.server, grant.server
        );
        let entry = NewEntry {
            action: "permission-denied".into(),
            target: Some(Target {
                kind: TargetKind::Mcp,
                name: grant.server.clone(),
            }),
            severity: None,
            outcome: "refused".into(),
            reason: message.clone(),
            details: serde_json::json!({
                "rpc": "GetConnectionToken",
                "connection": grant.connection,
                "subject_sub": sub,
                "config_key": "token_vault.server_uids",
            }),
            actor: caller.clone(),
        };
        let key = crate::audit_coalesce::key(&[
            "refusal",
            &uid,
            "permission-denied",
            "GetConnectionToken",
            &grant.server,
        ]);
        if let Err(e) = self.coalescer.record(key, entry).await {
            tracing::error!(error = %e, "could not audit a refused token request");
        }
        Error::PermissionDenied(message)
    }

    /// A request for an undeclared connection: refused at once, audited as
    /// `scope_escalation`, and put to the approvers.
    async fn escalate(&self, caller: &Actor, server: &str, connection: &str) -> Error {
        let declared: Vec<String> = match self.store.list_grants(Some(server.to_owned())).await {
            Ok(grants) => grants
                .into_iter()
                .filter(|g| g.status != GrantStatus::Revoked)
                .map(|g| g.connection)
                .collect(),
            Err(e) => return e,
        };
        let target = Target {
            kind: TargetKind::Mcp,
            name: server.to_owned(),
        };
        let mut message = format!(
            "{server} did not declare connection {connection} (declared: {})",
            if declared.is_empty() {
                "none".to_owned()
            } else {
                declared.join(", ")
            }
        );
        let mut details = serde_json::json!({
            "connection": connection,
            "declared": declared,
        });
        if self.stepups.enabled() {
            let payload = StepUpPayload {
                connections: vec![ConnectionDecl {
                    connection: connection.to_owned(),
                    scopes: Vec::new(),
                }],
                unattended: self.wants_unattended(),
            };
            match self
                .stepups
                .request(
                    caller.clone(),
                    target.clone(),
                    StepUpAction::Grant,
                    format!("{server} asks for {connection}"),
                    None,
                    payload,
                )
                .await
            {
                Ok(row) => {
                    message.push_str(&format!(
                        "; asked {} to approve it (request {})",
                        row.approver_sub, row.id
                    ));
                    details["stepup"] = serde_json::json!(row.id);
                }
                Err(e) => {
                    message.push_str(&format!("; could not ask for approval: {e}"));
                }
            }
        } else {
            message.push_str(&format!(
                "; declare it with `defenseclawctl mcp allow {server} --connection {connection}`"
            ));
        }
        let audit = NewEntry {
            action: "scope_escalation".into(),
            target: Some(target),
            severity: None,
            outcome: "refused".into(),
            reason: message.clone(),
            details,
            actor: caller.clone(),
        };
        // Repeated asks join the pending step-up; their entries are coalesced.
        let uid = crate::audit_coalesce::peer_uid(caller.uid);
        let key = crate::audit_coalesce::key(&[
            "refusal",
            &uid,
            &caller.id,
            "scope_escalation",
            server,
            connection,
        ]);
        if let Err(e) = self.coalescer.record(key, audit).await {
            tracing::error!(error = %e, "could not audit a scope escalation");
        }
        Error::PermissionDenied(message)
    }
}

/// What the caller is told, by Auth0's error.
fn failure_of(e: &VaultError, subject: Subject<'_>, server: &str, connection: &str) -> Failure {
    match (e, subject) {
        (VaultError::SubjectRejected { .. }, Subject::AccessToken(_)) => Failure::Unauthenticated(
            format!("{e}; log in again with `defenseclawctl auth login`"),
        ),
        (VaultError::SubjectRejected { .. }, Subject::RefreshToken(_)) => {
            Failure::Precondition(format!(
                "{e}; the stored approval no longer works: re-approve with `defenseclawctl mcp allow {server} --connection {connection}`"
            ))
        }
        (VaultError::Unavailable(_) | VaultError::InvalidResponse(_), _) => {
            Failure::Unavailable(e.to_string())
        }
        _ => Failure::Precondition(e.to_string()),
    }
}
impl TokenBroker {
    /// Follows committed enforcement changes until `cancel`: a blocked
    /// server's cached provider tokens are dropped at once.
    pub async fn forget_blocked(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<EnforcementChanged>,
        cancel: CancellationToken,
    ) {
        loop {
            // Senders live as long as the daemon: stop on shutdown, not on close.
            let change = tokio::select! {
                () = cancel.cancelled() => return,
                change = changes.recv() => change,
            };
            match change {
                Ok(change) => {
                    if change.target.kind == TargetKind::Mcp
                        && change.state == EnforcementState::Blocked
                    {
                        self.forget(&change.target.name, None);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    tracing::warn!(
                        "missed enforcement changes; dropping every cached provider token"
                    );
                    self.forget_all();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
