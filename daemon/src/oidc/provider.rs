//! The identity provider as seen by the daemon: discovery document and a JWKS cache.
//!
//! Known signing keys are served from memory without touching the network. The key set
//! is refreshed in the background once it is older than its TTL; an unknown `kid`
//! triggers an immediate refetch, rate-limited; a failed refetch keeps the cached keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use defenseclaw_common::loopback::is_loopback_host;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use super::settings::{AuthConfigError, normalize_issuer};

/// Largest discovery or JWKS document accepted, in bytes.
const MAX_DOC_BYTES: usize = 256 * 1024;
/// Most keys taken from one JWKS.
const MAX_KEYS: usize = 64;
/// While no key was ever loaded, a failed fetch is retried at most this often.
const EMPTY_RETRY: Duration = Duration::from_secs(5);

/// A failure talking to the identity provider. Never contains a token or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] AuthConfigError),
    /// Connection, TLS or timeout failure.
    #[error("cannot reach the identity provider ({what}): {message}")]
    Transport {
        /// Which request failed.
        what: &'static str,
        /// The transport error.
        message: String,
    },
    /// An unexpected HTTP status.
    #[error("identity provider answered HTTP {status} to {what}")]
    Status {
        /// Which request failed.
        what: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// A response that does not have the expected shape.
    #[error("invalid {what} from the identity provider: {message}")]
    InvalidResponse {
        /// Which response.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl OidcError {
    /// True for failures worth retrying later (network, timeouts, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            OidcError::Transport { .. } => true,
            OidcError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The parts of the OpenID provider metadata (`/.well-known/openid-configuration`) the
/// daemon and CLI use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The provider's issuer; must equal the configured issuer exactly.
    pub issuer: String,
    /// Where the signing keys are.
    pub jwks_uri: String,
    /// OAuth token endpoint (`/oauth/token` on Auth0).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// OIDC userinfo endpoint.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RFC 8628 device authorization endpoint (`/oauth/device/code` on Auth0).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// CIBA backchannel authentication endpoint (`/bc-authorize` on Auth0).
    #[serde(default)]
    pub backchannel_authentication_endpoint: Option<String>,
    /// Token revocation endpoint (`/oauth/revoke` on Auth0).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// CIBA delivery modes (`poll` expected).
    #[serde(default)]
    pub backchannel_token_delivery_modes_supported: Vec<String>,
}

/// JWKS cache state for the daemon's `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwksHealth {
    /// When the key set was last fetched successfully.
    pub last_refresh_ok_at: Option<SystemTime>,
    /// When the last fetch was attempted.
    pub last_attempt_at: Option<SystemTime>,
    /// Why the most recent fetch failed, if it did (cleared by a success).
    pub last_error: Option<String>,
    /// True when keys are served although the last refresh failed or they are past their TTL.
    pub serving_stale: bool,
    /// Number of signing keys cached.
    pub keys: usize,
}

#[derive(Default)]
struct KeyStore {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_attempt_at: Option<SystemTime>,
    last_forced: Option<Instant>,
    last_ok_at: Option<SystemTime>,
    last_error: Option<String>,
    /// Callers that committed to a fetch and have not finished it.
    in_flight: usize,
}

/// Marks one committed fetch; finishing (or being cancelled) wakes the waiters.
struct InFlight<'a>(&'a Provider);

impl<'a> InFlight<'a> {
    fn enter(provider: &'a Provider, fetch: &mut FetchState) -> Self {
        fetch.in_flight += 1;
        Self(provider)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        {
            let mut fetch = self.0.fetch_state();
            fetch.in_flight = fetch.in_flight.saturating_sub(1);
        }
        self.0.fetch_done.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why no key could be found for a `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyLookupError {
    /// The key set was loaded but has no such key (and a refetch is not allowed now or did not help).
    UnknownKid,
    /// The key set could not be fetched.
    Unavailable(String),
}

/// An OpenID provider: its issuer, discovery document and signing keys.
pub struct Provider {
    issuer: String,
    http: reqwest::Client,
    ttl: Duration,
    min_refetch: Duration,
    discovery: tokio::sync::OnceCell<Arc<Discovery>>,
    store: RwLock<Arc<KeyStore>>,
    fetch: Mutex<FetchState>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetch_generation: AtomicU64,
    background_running: AtomicBool,
    /// Bumped each time a fetch (or a caller committed to one) finishes; waiters subscribe.
    fetch_done: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .field("min_refetch", &self.min_refetch)
            .finish_non_exhaustive()
    }
}

/// An HTTP client suited to talking to an identity provider: no redirects, bounded
/// timeouts, and no proxy for loopback issuers.
pub fn http_client(issuer: &str) -> Result<reqwest::Client, OidcError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("defenseclawd/", env!("CARGO_PKG_VERSION")));
    if let Ok(url) = url::Url::parse(issuer)
        && url.host().as_ref().is_some_and(is_loopback_host)
    {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| OidcError::Transport {
        what: "http client",
        message: e.to_string(),
    })
}

impl Provider {
    /// A provider for `issuer` (normalized like the `[auth] issuer` setting). Nothing is
    /// fetched until first needed (or [`Provider::refresh_jwks`] is called).
    pub fn new(
        issuer: &str,
        http: reqwest::Client,
        jwks_ttl: Duration,
        jwks_min_refetch: Duration,
    ) -> Result<Arc<Self>, OidcError> {
        let issuer = normalize_issuer(issuer)?;
        Ok(Arc::new(Self {
            issuer,
            http,
            ttl: jwks_ttl.max(Duration::from_secs(1)),
            min_refetch: jwks_min_refetch,
            discovery: tokio::sync::OnceCell::new(),
            store: RwLock::new(Arc::new(KeyStore::default())),
            fetch: Mutex::new(FetchState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetch_generation: AtomicU64::new(0),
            background_running: AtomicBool::new(false),
            fetch_done: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// A provider built from validated `[auth]` settings with [`http_client`].
    pub fn from_settings(settings: &super::settings::AuthSettings) -> Result<Arc<Self>, OidcError> {
        let issuer = settings.issuer_url()?;
        let http = http_client(&issuer)?;
        Self::new(
            &issuer,
            http,
            Duration::from_secs(settings.jwks_ttl_secs),
            Duration::from_secs(settings.jwks_min_refetch_secs),
        )
    }

    /// The issuer exactly as tokens must carry it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The HTTP client used for every provider call.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The discovery document, fetched once and then kept.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        self.discovery
            .get_or_try_init(|| async { self.fetch_discovery().await.map(Arc::new) })
            .await
            .cloned()
    }

    async fn fetch_discovery(&self) -> Result<Discovery, OidcError> {
        let base = if self.issuer.ends_with('/') {
            self.issuer.clone()
        } else {
            format!("{}/", self.issuer)
        };
        let url = format!("{base}.well-known/openid-configuration");
        let body = get_json_bytes(&self.http, &url, "discovery document").await?;
        let doc: Discovery =
            serde_json::from_slice(&body).map_err(|e| OidcError::InvalidResponse {
                what: "discovery document",
                message: e.to_string(),
            })?;
        if doc.issuer != self.issuer {
            let hint = if doc.issuer.trim_end_matches('/') == self.issuer.trim_end_matches('/') {
                " (they differ only by the trailing slash, which must match exactly)"
            } else {
                ""
            };
            return Err(OidcError::InvalidResponse {
                what: "discovery document",
                message: format!(
                    "its issuer {:?} differs from the configured issuer {:?}{hint}",
                    doc.issuer, self.issuer
                ),
            });
        }
        for (name, endpoint) in [
            ("jwks_uri", Some(&doc.jwks_uri)),
            ("token_endpoint", doc.token_endpoint.as_ref()),
            ("userinfo_endpoint", doc.userinfo_endpoint.as_ref()),
            (
                "device_authorization_endpoint",
                doc.device_authorization_endpoint.as_ref(),
            ),
            (
                "backchannel_authentication_endpoint",
                doc.backchannel_authentication_endpoint.as_ref(),
            ),
            ("revocation_endpoint", doc.revocation_endpoint.as_ref()),
        ] {
            if let Some(endpoint) = endpoint {
                check_endpoint(name, endpoint)?;
            }
        }
        Ok(doc)
    }

    /// Fetches the key set now (single-flight) regardless of TTL and rate limit.
    /// On failure the cached keys stay in service.
    pub async fn refresh_jwks(&self) -> Result<usize, OidcError> {
        let generation = self.fetch_generation.load(Ordering::Acquire);
        let _in_flight = InFlight::enter(self, &mut self.fetch_state());
        self.fetch_keys(generation, false).await
    }

    /// Cache state for `status`.
    pub fn health(&self) -> JwksHealth {
        let store = self.snapshot();
        let fetch = self.fetch_state();
        let expired = store.fetched_at.is_none_or(|at| at.elapsed() >= self.ttl);
        JwksHealth {
            last_refresh_ok_at: fetch.last_ok_at,
            last_attempt_at: fetch.last_attempt_at,
            last_error: fetch.last_error.clone(),
            serving_stale: !store.keys.is_empty() && (fetch.last_error.is_some() || expired),
            keys: store.keys.len(),
        }
    }

    fn snapshot(&self) -> Arc<KeyStore> {
        match self.store.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn fetch_state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        match self.fetch.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The cached key for `kid`, without any network wait; starts a background refresh
    /// when the key set is past its TTL.
    pub(crate) fn cached_key(self: &Arc<Self>, kid: &str) -> Option<Arc<DecodingKey>> {
        let store = self.snapshot();
        let key = store.keys.get(kid)?;
        if store.fetched_at.is_some_and(|at| at.elapsed() >= self.ttl) {
            self.spawn_background_refresh();
        }
        Some(Arc::clone(key))
    }

    /// The decoding key for `kid`. Never waits on the network when `kid` is cached.
    ///
    /// An unknown `kid` triggers an immediate fetch, at most once per `min_refetch`;
    /// callers arriving while that fetch runs wait for it instead of being refused.
    pub(crate) async fn key_for(
        self: &Arc<Self>,
        kid: &str,
    ) -> Result<Arc<DecodingKey>, KeyLookupError> {
        enum Decision<'a> {
            Fetch(InFlight<'a>),
            Wait(tokio::sync::watch::Receiver<u64>),
            Refuse(Option<String>),
        }
        loop {
            if let Some(key) = self.cached_key(kid) {
                return Ok(key);
            }
            let generation = self.fetch_generation.load(Ordering::Acquire);
            let empty = self.snapshot().fetched_at.is_none();
            let decision = {
                let mut fetch = self.fetch_state();
                let now = Instant::now();
                let allowed = if empty {
                    // Never loaded: fetch, but do not hammer a provider that just failed.
                    fetch.last_error.is_none()
                        || fetch.last_attempt.is_none_or(|t| {
                            now.duration_since(t) >= EMPTY_RETRY.min(self.min_refetch)
                        })
                } else {
                    fetch
                        .last_forced
                        .is_none_or(|t| now.duration_since(t) >= self.min_refetch)
                };
                if allowed {
                    if !empty {
                        fetch.last_forced = Some(now);
                    }
                    Decision::Fetch(InFlight::enter(self, &mut fetch))
                } else if fetch.in_flight > 0 {
                    Decision::Wait(self.fetch_done.subscribe())
                } else {
                    Decision::Refuse(fetch.last_error.clone())
                }
            };
            match decision {
                Decision::Fetch(in_flight) => {
                    let result = self.fetch_keys(generation, true).await;
                    drop(in_flight);
                    if let Err(e) = result {
                        return Err(KeyLookupError::Unavailable(e.to_string()));
                    }
                    return self
                        .snapshot()
                        .keys
                        .get(kid)
                        .cloned()
                        .ok_or(KeyLookupError::UnknownKid);
                }
                Decision::Wait(mut done) => {
                    if done.changed().await.is_err() {
                        return Err(KeyLookupError::UnknownKid);
                    }
                }
                Decision::Refuse(last_error) => {
                    return Err(if self.snapshot().keys.is_empty() {
                        KeyLookupError::Unavailable(
                            last_error.unwrap_or_else(|| "signing keys not loaded".into()),
                        )
                    } else {
                        KeyLookupError::UnknownKid
                    });
                }
            }
        }
    }

    fn spawn_background_refresh(self: &Arc<Self>) {
        {
            let fetch = self.fetch_state();
            if fetch
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.min_refetch.min(self.ttl))
            {
                return;
            }
        }
        if self.background_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.background_running.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            if let Err(e) = this.refresh_jwks().await {
                tracing::warn!(error = %e, "JWKS background refresh failed; serving cached keys");
            }
            this.background_running.store(false, Ordering::Release);
        });
    }

    /// Fetches the JWKS unless another fetch completed since `seen_generation`
    /// (and `coalesce` is set), so concurrent callers share one request.
    async fn fetch_keys(&self, seen_generation: u64, coalesce: bool) -> Result<usize, OidcError> {
        let _guard = self.fetch_lock.lock().await;
        if coalesce && self.fetch_generation.load(Ordering::Acquire) != seen_generation {
            let fetch = self.fetch_state();
            return match &fetch.last_error {
                None => Ok(self.snapshot().keys.len()),
                Some(message) => Err(OidcError::Transport {
                    what: "JWKS",
                    message: message.clone(),
                }),
            };
        }
        {
            let mut fetch = self.fetch_state();
            fetch.last_attempt = Some(Instant::now());
            fetch.last_attempt_at = Some(SystemTime::now());
        }
        let result = self.load_keys().await;
        self.fetch_generation.fetch_add(1, Ordering::AcqRel);
        let mut fetch = self.fetch_state();
        match result {
            Ok(keys) => {
                let count = keys.len();
                let store = Arc::new(KeyStore {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                match self.store.write() {
                    Ok(mut guard) => *guard = store,
                    Err(poisoned) => *poisoned.into_inner() = store,
                }
                fetch.last_ok_at = Some(SystemTime::now());
                fetch.last_error = None;
                tracing::debug!(keys = count, "JWKS refreshed");
                Ok(count)
            }
            Err(e) => {
                fetch.last_error = Some(e.to_string());
                tracing::warn!(error = %e, "JWKS refresh failed");
                Err(e)
            }
        }
    }

    async fn load_keys(&self) -> Result<HashMap<String, Arc<DecodingKey>>, OidcError> {
        let discovery = self.discovery().await?;
        let body = get_json_bytes(&self.http, &discovery.jwks_uri, "JWKS").await?;
        parse_jwks(&body)
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS, keeping RSA signing keys usable with RS256 that have a `kid`.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, OidcError> {
    let invalid = |message: String| OidcError::InvalidResponse {
        what: "JWKS",
        message,
    };
    let raw: RawJwks = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for key in raw.keys.iter().take(MAX_KEYS) {
        let field = |name: &str| key.get(name).and_then(|v| v.as_str());
        if field("kty") != Some("RSA") {
            continue;
        }
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        if field("alg").is_some_and(|a| a != "RS256") {
            continue;
        }
        let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else {
            continue;
        };
        match DecodingKey::from_rsa_components(n, e) {
            Ok(k) => {
                keys.insert(kid.to_owned(), Arc::new(k));
            }
            Err(err) => tracing::warn!(kid, error = %err, "ignoring unusable JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err(invalid("no usable RS256 signing key".into()));
    }
    Ok(keys)
}

fn check_endpoint(name: &str, endpoint: &str) -> Result<(), OidcError> {
    let bad = |message: String| OidcError::InvalidResponse {
        what: "discovery document",
        message,
    };
    let url = url::Url::parse(endpoint).map_err(|e| bad(format!("{name} is not a URL: {e}")))?;
    let ok = match url.scheme() {
        "https" => true,
        "http" => url.host().as_ref().is_some_and(is_loopback_host),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{name} {endpoint:?} must be https (http only on loopback)"
        )))
    }
}

/// GETs `url` and returns the body of a 2xx answer, bounded in size.
async fn get_json_bytes(
    http: &reqwest::Client,
    url: &str,
    what: &'static str,
) -> Result<Vec<u8>, OidcError> {
    let resp = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| transport(what, &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(OidcError::Status {
            what,
            status: status.as_u16(),
        });
    }
    read_limited(resp, MAX_DOC_BYTES, what).await
}

pub(crate) fn transport(what: &'static str, e: &reqwest::Error) -> OidcError {
    OidcError::Transport {
        what,
        message: error_chain(e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Reads a response body, refusing more than `max` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, OidcError> {
    let too_large = || OidcError::InvalidResponse {
        what,
        message: format!("body larger than {max} bytes"),
    };
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(what, &e))? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
