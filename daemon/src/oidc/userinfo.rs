//! `/userinfo` lookups, cached per `sub`, to name the operator when the access token
//! carries no `name`/`email`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::provider::{OidcError, Provider, read_limited, transport};
use super::verify::VerifiedToken;

const MAX_USERINFO_BYTES: usize = 64 * 1024;
const MAX_ENTRIES: usize = 10_000;

/// Identity claims from `/userinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Subject; always equals the `sub` that was asked for.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the provider verified the email address.
    #[serde(default)]
    pub email_verified: Option<bool>,
}

struct Entry {
    at: Instant,
    value: Result<UserInfo, OidcError>,
}

/// A per-`sub` cache in front of the provider's `/userinfo` endpoint. Failures are
/// remembered for a shorter time so a provider that refuses the call (e.g. an API-only
/// access token) is not asked on every request.
pub struct UserInfoCache {
    provider: Arc<Provider>,
    ttl: Duration,
    negative_ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for UserInfoCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserInfoCache")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .finish_non_exhaustive()
    }
}

impl UserInfoCache {
    /// A cache keeping answers for `ttl` and failures for `negative_ttl`.
    pub fn new(provider: Arc<Provider>, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            provider,
            ttl,
            negative_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The cached answer for `sub`, if fresh, without any network call.
    pub fn cached(&self, sub: &str) -> Option<UserInfo> {
        let entries = self.lock();
        let entry = entries.get(sub)?;
        match &entry.value {
            Ok(info) if entry.at.elapsed() < self.ttl => Some(info.clone()),
            _ => None,
        }
    }

    /// The user info for `sub`, asking `/userinfo` with `bearer` (an access token of that
    /// same user, already verified) when nothing fresh is cached. The answer's `sub` must
    /// equal `sub`.
    pub async fn get(&self, sub: &str, bearer: &str) -> Result<UserInfo, OidcError> {
        {
            let entries = self.lock();
            if let Some(entry) = entries.get(sub) {
                let fresh = match &entry.value {
                    Ok(_) => entry.at.elapsed() < self.ttl,
                    Err(_) => entry.at.elapsed() < self.negative_ttl,
                };
                if fresh {
                    return entry.value.clone();
                }
            }
        }
        let value = self.fetch(sub, bearer).await;
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
            entries.retain(|_, e| e.at.elapsed() < ttl.max(negative_ttl));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            sub.to_owned(),
            Entry {
                at: Instant::now(),
                value: value.clone(),
            },
        );
        value
    }

    /// Fills `token.name`/`token.email` from `/userinfo` when the token lacks both.
    /// Best effort: a failed lookup leaves the token as it is and is returned as the error.
    pub async fn enrich(&self, token: &mut VerifiedToken, bearer: &str) -> Result<(), OidcError> {
        if token.name.is_some() || token.email.is_some() {
            return Ok(());
        }
        let info = self.get(&token.sub, bearer).await?;
        token.name = info.name;
        token.email = info.email;
        Ok(())
    }

    async fn fetch(&self, sub: &str, bearer: &str) -> Result<UserInfo, OidcError> {
        const WHAT: &str = "userinfo";
        let discovery = self.provider.discovery().await?;
        let Some(endpoint) = discovery.userinfo_endpoint.as_deref() else {
            return Err(OidcError::InvalidResponse {
                what: "discovery document",
                message: "no userinfo_endpoint".into(),
            });
        };
        let resp = self
            .provider
            .http()
            .get(endpoint)
            .bearer_auth(bearer)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport(WHAT, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(OidcError::Status {
                what: WHAT,
                status: status.as_u16(),
            });
        }
        let body = read_limited(resp, MAX_USERINFO_BYTES, WHAT).await?;
        let info: UserInfo =
            serde_json::from_slice(&body).map_err(|e| OidcError::InvalidResponse {
                what: WHAT,
                message: e.to_string(),
            })?;
        if info.sub != sub {
            return Err(OidcError::InvalidResponse {
                what: WHAT,
                message: "sub differs from the token's sub".into(),
            });
        }
        Ok(info)
    }
}
