//! Who is calling and may they do this: local peer credentials, or in `oidc`
//! mode a verified bearer token mapped to roles. Every refusal is returned with
//! the audit entry that records it (never the token).

use std::sync::Arc;
use std::time::Duration;

use tonic::Request;

use crate::audit::NewEntry;
use crate::error::Error;
use crate::model::Actor;
use crate::oidc::{
    AuthMode, AuthRejection, AuthSettings, JwksHealth, Provider, Role, TokenVerifier,
    UserInfoCache, VerifiedToken, bearer_from_header,
};
use crate::rpc::access::{AccessPolicy, Caller, UserNames};
use crate::store::profile::{self, Phase};

/// What an RPC needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading state: any peer that can reach the socket.
    Read,
    /// Changing enforcement, submitting scans, dismissing findings.
    Operate,
    /// Administrative actions, beyond what an operator may do.
    Admin,
    /// A provider token for an MCP server: an operator token, or (unattended,
    /// no token) a local peer the access policy lets mutate.
    Credential,
    /// Acting on one's own grants only (`connections list|revoke --mine`): a
    /// verified login token and no role (oidc); any local peer (local mode,
    /// where the peer's `uid:<n>` is who they are). The adapter limits the
    /// call to the caller's own grants.
    Own,
}

/// A refused call: the error for the caller and the entry for the audit log.
#[derive(Debug)]
pub struct Refusal {
    /// What the caller gets.
    pub error: Error,
    /// What the audit log gets.
    pub audit: NewEntry,
    /// Refusals with the same key (peer uid, call, reason) share one audit
    /// entry per window ([`crate::audit_coalesce`]).
    pub coalesce_key: String,
}

/// Verifier state in `oidc` mode.
pub struct Oidc {
    verifier: TokenVerifier,
    userinfo: UserInfoCache,
    provider: Arc<Provider>,
}

/// Identifies and authorises callers.
pub struct Authenticator {
    settings: AuthSettings,
    policy: AccessPolicy,
    names: UserNames,
    oidc: Option<Oidc>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.settings.mode)
            .finish_non_exhaustive()
    }
}

/// Why the authenticator could not be built from `[auth]`.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The identity provider's settings are unusable.
    #[error(transparent)]
    Provider(#[from] crate::oidc::OidcError),
    /// `oidc` mode without the audience tokens must carry.
    #[error("[auth] mode = \"oidc\" needs audience")]
    MissingAudience,
}

impl Authenticator {
    /// Builds the authenticator; in `oidc` mode starts fetching the issuer's keys
    /// in the background (start-up does not wait for the identity provider).
    pub fn new(settings: AuthSettings, policy: AccessPolicy) -> Result<Self, AuthSetupError> {
        let oidc = match settings.mode {
            AuthMode::Local => None,
            AuthMode::Oidc => {
                let provider = Provider::from_settings(&settings)?;
                let audience = settings
                    .audience
                    .clone()
                    .ok_or(AuthSetupError::MissingAudience)?;
                let verifier = TokenVerifier::new(provider.clone(), audience, settings.leeway_secs);
                let userinfo = UserInfoCache::new(
                    provider.clone(),
                    Duration::from_secs(600),
                    Duration::from_secs(60),
                );
                let warm = provider.clone();
                tokio::spawn(async move {
                    match warm.refresh_jwks().await {
                        Ok(keys) => {
                            tracing::info!(issuer = %warm.issuer(), keys, "identity provider keys loaded")
                        }
                        Err(e) => {
                            tracing::warn!(issuer = %warm.issuer(), error = %e, "identity provider keys not loaded yet; will retry on demand")
                        }
                    }
                });
                Some(Oidc {
                    verifier,
                    userinfo,
                    provider,
                })
            }
        };
        Ok(Self {
            settings,
            policy,
            names: UserNames::default(),
            oidc,
        })
    }

    /// The `[auth]` settings in force.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The identity provider (oidc mode).
    pub fn provider(&self) -> Option<Arc<Provider>> {
        self.oidc.as_ref().map(|o| o.provider.clone())
    }

    /// JWKS cache state (oidc mode).
    pub fn jwks_health(&self) -> Option<JwksHealth> {
        self.oidc.as_ref().map(|o| o.provider.health())
    }

    /// The local actor for a call (peer credentials only).
    pub fn local_actor<T>(&self, request: &Request<T>) -> Actor {
        self.names.local_actor(&Caller::of(request))
    }

    /// The hot read path: reads need no identity, but a token that is sent must
    /// be valid. Verifies it (a cache hit allocates nothing) without building an actor.
    pub async fn check_read<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
    ) -> Result<(), Refusal> {
        let Some(oidc) = &self.oidc else {
            return Ok(());
        };
        let Some(header) = authorization(request) else {
            return Ok(());
        };
        let verified = match bearer_from_header(Some(header)) {
            Ok(bearer) => oidc.verifier.verify_shared(bearer).await.map(|_| ()),
            Err(rejection) => Err(rejection),
        };
        match verified {
            Ok(()) => Ok(()),
            Err(_) => self.identify(request, rpc, Need::Read).await.map(|_| ()),
        }
    }

    /// Identifies the caller of `rpc` and checks it may do what `need` says.
    pub async fn identify<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        need: Need,
    ) -> Result<Actor, Refusal> {
        let started = profile::start();
        let out = self.identify_caller(request, rpc, need).await;
        profile::record(Phase::Authorize, started);
        out
    }

    async fn identify_caller<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        need: Need,
    ) -> Result<Actor, Refusal> {
        let caller = Caller::of(request);
        let local = self.names.local_actor(&caller);
        let Some(oidc) = &self.oidc else {
            if matches!(need, Need::Read | Need::Own)
                || self.policy.may_mutate(&caller, &self.names)
            {
                return Ok(local);
            }
            let reason = format!(
                "uid {} is not allowed to call {rpc} (see [access] mutate_uids / mutate_gids)",
                caller
                    .uid
                    .map_or_else(|| "unknown".to_owned(), |u| u.to_string())
            );
            return Err(refusal(
                Error::PermissionDenied(reason.clone()),
                "permission-denied",
                reason,
                rpc,
                local,
                None,
            ));
        };
        let header = authorization(request);
        if header.is_none()
            && (need == Need::Read
                || (need == Need::Credential && self.policy.may_mutate(&caller, &self.names)))
        {
            return Ok(local);
        }
        let token = match bearer_from_header(header) {
            Ok(bearer) => oidc
                .verifier
                .verify_shared(bearer)
                .await
                .map(|t| (t, bearer)),
            Err(rejection) => Err(rejection),
        };
        let (mut token, bearer) = match token {
            Ok(ok) => ok,
            Err(rejection) => {
                let reason = if rejection.reason == crate::oidc::RejectReason::Missing
                    && need == Need::Own
                {
                    format!(
                        "{rpc} needs you to log in: run `defenseclawctl auth login` (or set DEFENSECLAW_TOKEN)"
                    )
                } else if rejection.reason == crate::oidc::RejectReason::Missing {
                    format!(
                        "{rpc} needs an operator token: run `defenseclawctl auth login` (or set DEFENSECLAW_TOKEN)"
                    )
                } else {
                    format!("{rejection}; log in again with `defenseclawctl auth login`")
                };
                return Err(refusal(
                    Error::Unauthenticated(reason.clone()),
                    "auth-refused",
                    reason,
                    rpc,
                    local,
                    Some(&rejection),
                ));
            }
        };
        let required = match need {
            Need::Read | Need::Own => None,
            Need::Operate | Need::Credential => Some(Role::Operator),
            Need::Admin => Some(Role::Admin),
        };
        if let Some(required) = required {
            let roles = self.settings.roles_for(&token);
            if !roles.iter().any(|r| r.satisfies(required)) {
                let reason = format!(
                    "{} ({}) lacks the {} role needed for {rpc}; grant one of the scopes or permissions mapped to it in [auth] roles",
                    token.sub,
                    token.email.as_deref().unwrap_or("no email"),
                    required.as_str()
                );
                let actor = oidc_actor(&token, &caller);
                return Err(refusal(
                    Error::PermissionDenied(reason.clone()),
                    "permission-denied",
                    reason,
                    rpc,
                    actor,
                    None,
                ));
            }
            // Name and email from the provider when the token lacks them; never from the client.
            if (token.name.is_none() || token.email.is_none())
                && let Err(e) = oidc
                    .userinfo
                    .enrich(Arc::make_mut(&mut token), bearer)
                    .await
            {
                tracing::debug!(sub = %token.sub, error = %e, "userinfo lookup failed");
            }
        }
        Ok(oidc_actor(&token, &caller))
    }
}

/// The `authorization` metadata value, if any.
pub fn authorization<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
}

fn oidc_actor(token: &VerifiedToken, caller: &Caller) -> Actor {
    Actor {
        id: token.sub.clone(),
        name: token
            .name
            .clone()
            .or_else(|| token.email.clone())
            .unwrap_or_else(|| token.sub.clone()),
        auth_method: "oidc".into(),
        uid: caller.uid,
        gid: caller.gid,
        pid: caller.pid,
        email: token.email.clone(),
        issuer: Some(token.issuer.clone()),
        client_id: token.client_id.clone(),
    }
}

fn refusal(
    error: Error,
    action: &str,
    reason: String,
    rpc: &str,
    actor: Actor,
    rejection: Option<&AuthRejection>,
) -> Refusal {
    let uid = crate::audit_coalesce::peer_uid(actor.uid);
    let coalesce_key = crate::audit_coalesce::key(&[
        "refusal",
        &uid,
        action,
        rpc,
        rejection.map_or("", |r| r.reason.as_str()),
    ]);
    let mut details = serde_json::json!({ "rpc": rpc });
    if let (Some(r), serde_json::Value::Object(map)) = (rejection, &mut details) {
        map.insert(
            "token_rejection".into(),
            serde_json::json!(r.reason.as_str()),
        );
        if let Some(sub) = &r.unverified_sub {
            map.insert("unverified_sub".into(), serde_json::json!(sub));
        }
        if let Some(kid) = &r.kid {
            map.insert("kid".into(), serde_json::json!(kid));
        }
    }
    Refusal {
        error,
        audit: NewEntry {
            action: action.to_owned(),
            target: None,
            severity: None,
            outcome: "refused".into(),
            reason,
            details,
            actor,
        },
        coalesce_key,
    }
}
