//! The `[auth]` configuration section and the role model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest clock-skew allowance accepted for `exp`/`nbf` checks, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// How callers of the daemon are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Peer credentials of the local socket identify the caller (no tokens).
    #[default]
    Local,
    /// Mutating calls need an OpenID Connect access token verified by the daemon.
    Oidc,
}

/// What a verified operator may do. Ordered: `Viewer < Operator < Admin`;
/// a higher role includes everything a lower one may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access: status, lists, audit.
    Viewer,
    /// Enforcement changes: block, allow, dismiss.
    Operator,
    /// Everything, including configuration and policy changes.
    Admin,
}

impl Role {
    /// Stable lowercase name (`viewer`, `operator`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// True when a holder of `self` may do what `required` allows.
    pub fn satisfies(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[auth]` configuration section (environment: `DEFENSECLAW_AUTH__<KEY>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `local` (peer credentials, the default) or `oidc` (verified bearer tokens).
    pub mode: AuthMode,
    /// OpenID Connect issuer. Either the full issuer URL exactly as it appears in the
    /// tokens' `iss` (Auth0: `https://tenant.us.auth0.com/`, trailing slash included), or an
    /// Auth0 domain alone (`tenant.us.auth0.com`), expanded to `https://<domain>/`.
    /// `http://` is accepted only for loopback hosts (tests).
    pub issuer: Option<String>,
    /// API identifier of the daemon: access tokens must carry it in `aud`.
    pub audience: Option<String>,
    /// Client id of the CLI's Native (public) application, handed to `defenseclawctl auth login`.
    pub cli_client_id: Option<String>,
    /// Client id of the daemon's confidential application, used for CIBA step-up.
    /// Its secret never lives in this file.
    pub daemon_client_id: Option<String>,
    /// Which token scopes or permissions grant each role.
    pub roles: RoleScopes,
    /// Clock-skew allowance for `exp`/`nbf`, in seconds (default 60, at most 60).
    pub leeway_secs: u64,
    /// How long fetched signing keys (JWKS) are used before a background refresh, in seconds.
    pub jwks_ttl_secs: u64,
    /// Minimum time between two JWKS fetches triggered by an unknown `kid`, in seconds.
    pub jwks_min_refetch_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let roles = RoleScopes::default();
        Self {
            mode: AuthMode::Local,
            issuer: None,
            audience: None,
            cli_client_id: None,
            daemon_client_id: None,
            roles,
            leeway_secs: MAX_LEEWAY_SECS,
            jwks_ttl_secs: 600,
            jwks_min_refetch_secs: 30,
        }
    }
}

/// A configuration problem in `[auth]`, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[auth] {0}")]
pub struct AuthConfigError(pub String);

impl AuthSettings {
    /// Checks the section. In `oidc` mode `issuer` and `audience` are required.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if let Some(issuer) = &self.issuer {
            normalize_issuer(issuer)?;
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError(format!(
                "leeway_secs = {} is above the maximum of {MAX_LEEWAY_SECS}",
                self.leeway_secs
            )));
        }
        if self.jwks_ttl_secs == 0 {
            return Err(AuthConfigError("jwks_ttl_secs must be at least 1".into()));
        }
        for (name, value) in [
            ("audience", &self.audience),
            ("cli_client_id", &self.cli_client_id),
            ("daemon_client_id", &self.daemon_client_id),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(AuthConfigError(format!("{name} is set but empty")));
            }
        }
        if self.roles.all().any(|(k, _)| k.trim().is_empty()) {
            return Err(AuthConfigError("roles has an empty scope name".into()));
        }
        if self.mode == AuthMode::Oidc {
            if self.issuer.is_none() {
                return Err(AuthConfigError(
                    "mode = \"oidc\" needs issuer (e.g. \"tenant.us.auth0.com\")".into(),
                ));
            }
            if self.audience.is_none() {
                return Err(AuthConfigError(
                    "mode = \"oidc\" needs audience (the API identifier)".into(),
                ));
            }
        }
        Ok(())
    }

    /// The issuer exactly as tokens must carry it in `iss` (domain-only values expanded).
    pub fn issuer_url(&self) -> Result<String, AuthConfigError> {
        match &self.issuer {
            Some(i) => normalize_issuer(i),
            None => Err(AuthConfigError("issuer is not set".into())),
        }
    }
}

/// `[auth.roles]`: the scopes or permissions (Auth0 RBAC) that grant each role.
/// Keyed by role because scope names contain `:`, which config paths cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleScopes {
    /// Read-only access.
    #[serde(deserialize_with = "crate::config::lists::word_list")]
    pub viewer: Vec<String>,
    /// Block, allow, unblock, scan reports, dismissals.
    #[serde(deserialize_with = "crate::config::lists::word_list")]
    pub operator: Vec<String>,
    /// Everything, including administrative actions.
    #[serde(deserialize_with = "crate::config::lists::word_list")]
    pub admin: Vec<String>,
}

impl Default for RoleScopes {
    fn default() -> Self {
        Self {
            viewer: vec!["defenseclaw:read".into()],
            operator: vec!["defenseclaw:operate".into()],
            admin: vec!["defenseclaw:admin".into()],
        }
    }
}

impl RoleScopes {
    /// Every (scope, role) pair.
    pub fn all(&self) -> impl Iterator<Item = (&str, Role)> {
        self.viewer
            .iter()
            .map(|s| (s.as_str(), Role::Viewer))
            .chain(self.operator.iter().map(|s| (s.as_str(), Role::Operator)))
            .chain(self.admin.iter().map(|s| (s.as_str(), Role::Admin)))
    }

    /// Scope → highest role it grants.
    pub fn mapping(&self) -> BTreeMap<String, Role> {
        let mut map = BTreeMap::new();
        for (scope, role) in self.all() {
            let slot = map.entry(scope.to_owned()).or_insert(role);
            if role > *slot {
                *slot = role;
            }
        }
        map
    }
}

/// Turns a configured issuer into the exact `iss` value tokens must carry: the
/// shared rule ([`defenseclaw_common::issuer::normalize_issuer`]) worded as an
/// `[auth]` configuration problem.
pub fn normalize_issuer(raw: &str) -> Result<String, AuthConfigError> {
    defenseclaw_common::issuer::normalize_issuer(raw).map_err(|e| AuthConfigError(e.0))
}
