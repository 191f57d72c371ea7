//! Access-token verification (the daemon is the resource server).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::provider::{KeyLookupError, Provider};
use super::settings::{AuthSettings, MAX_LEEWAY_SECS, Role};

/// Largest bearer token accepted, in bytes; larger ones are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most verified tokens remembered (by hash) to skip repeated signature checks.
const CACHE_CAPACITY: usize = 4096;
/// Longest unverified claim value copied into a rejection for the audit.
const MAX_PEEK_CHARS: usize = 256;

/// Why a bearer token was refused. Stable machine names via [`RejectReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// No token was sent.
    Missing,
    /// Not a well-formed JWS compact token.
    Malformed,
    /// Algorithm other than RS256 (`none`, HS*, ...).
    BadAlg,
    /// Signature does not verify with the key named by `kid`.
    BadSignature,
    /// No signing key with this `kid`.
    UnknownKid,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    BadIssuer,
    /// `aud` does not contain the expected audience.
    BadAudience,
    /// No `sub` claim.
    MissingSub,
    /// Token larger than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Signing keys could not be fetched from the identity provider.
    JwksUnavailable,
}

impl RejectReason {
    /// The machine-readable reason (`bad_alg`, `expired`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Missing => "missing",
            RejectReason::Malformed => "malformed",
            RejectReason::BadAlg => "bad_alg",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownKid => "unknown_kid",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::BadIssuer => "bad_issuer",
            RejectReason::BadAudience => "bad_audience",
            RejectReason::MissingSub => "missing_sub",
            RejectReason::TooLarge => "too_large",
            RejectReason::JwksUnavailable => "jwks_unavailable",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: the reason, a short human detail, and what could be read from the
/// token without trusting it (for the audit of the refusal). Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthRejection {
    /// Machine reason.
    pub reason: RejectReason,
    /// Human detail, free of token material.
    pub detail: String,
    /// `sub` read from the unverified payload, if any (truncated; do not trust it).
    pub unverified_sub: Option<String>,
    /// `kid` read from the unverified header, if any (truncated; do not trust it).
    pub kid: Option<String>,
}

impl AuthRejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            unverified_sub: None,
            kid: None,
        }
    }
}

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token rejected ({}): {}", self.reason, self.detail)
    }
}

impl std::error::Error for AuthRejection {}

/// The identity carried by a verified access token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedToken {
    /// Subject (the operator's user id).
    pub sub: String,
    /// Issuer (equals the configured issuer).
    pub issuer: String,
    /// The OAuth client that obtained the token (`azp` or `client_id`).
    pub client_id: Option<String>,
    /// Space-separated `scope` claim, split.
    pub scopes: BTreeSet<String>,
    /// `permissions` claim (Auth0 RBAC).
    pub permissions: BTreeSet<String>,
    /// `name` claim, if the token carries one.
    pub name: Option<String>,
    /// `email` claim, if the token carries one.
    pub email: Option<String>,
    /// Key id that signed the token.
    pub kid: String,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
}

impl VerifiedToken {
    /// `exp` as a timestamp.
    pub fn expires_at_time(&self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::from_unix_timestamp(self.expires_at).ok()
    }
}

/// `aud` as a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, expected: &str) -> bool {
        match self {
            Audience::One(a) => a == expected,
            Audience::Many(list) => list.iter().any(|a| a == expected),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Audience::One(_) => 1,
            Audience::Many(list) => list.len(),
        }
    }
}

/// The claims the daemon reads; unknown claims are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<Audience>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub azp: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub name: Option<String>,
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PeekSub {
    sub: Option<serde_json::Value>,
}

fn truncate(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_PEEK_CHARS)
        .collect()
}

fn peek_sub(payload_b64: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(payload_b64).ok()?;
    let peek: PeekSub = serde_json::from_slice(&bytes).ok()?;
    match peek.sub? {
        serde_json::Value::String(s) => Some(truncate(&s)),
        _ => None,
    }
}

/// Verifies a compact JWS: RS256 only, signature with the provider's key for `kid`,
/// then `iss` exactly, `aud` containing `audience`, `exp` (required) and `nbf` with
/// `leeway`, and `sub`. Returns the claims, the `kid` and the key that verified the
/// signature.
pub(crate) async fn verify_jwt(
    provider: &Arc<Provider>,
    token: &str,
    audience: &str,
    leeway: u64,
) -> Result<(Claims, String, Arc<DecodingKey>), AuthRejection> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthRejection::new(RejectReason::Missing, "no bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthRejection::new(
            RejectReason::TooLarge,
            format!("token is larger than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthRejection::new(
            RejectReason::Malformed,
            "not a three-part JWS compact token",
        ));
    };
    let header: JoseHeader = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| AuthRejection::new(RejectReason::Malformed, "unreadable JOSE header"))?;
    let kid = header.kid.as_deref().map(truncate);
    let reject = |reason: RejectReason, detail: String| AuthRejection {
        reason,
        detail,
        unverified_sub: peek_sub(payload_b64),
        kid: kid.clone(),
    };
    if header.alg != "RS256" {
        return Err(reject(
            RejectReason::BadAlg,
            format!(
                "algorithm {:?} is not accepted (RS256 only)",
                truncate(&header.alg)
            ),
        ));
    }
    if header.crit.is_some() {
        return Err(reject(
            RejectReason::Malformed,
            "critical header extensions are not supported".into(),
        ));
    }
    let Some(kid_value) = header.kid.as_deref() else {
        return Err(reject(RejectReason::Malformed, "header has no kid".into()));
    };
    if signature_b64.is_empty() {
        return Err(reject(RejectReason::BadSignature, "empty signature".into()));
    }
    let key = match provider.key_for(kid_value).await {
        Ok(key) => key,
        Err(KeyLookupError::UnknownKid) => {
            return Err(reject(
                RejectReason::UnknownKid,
                "no signing key with this kid".into(),
            ));
        }
        Err(KeyLookupError::Unavailable(message)) => {
            return Err(reject(
                RejectReason::JwksUnavailable,
                format!("signing keys unavailable: {message}"),
            ));
        }
    };
    let message_len = header_b64.len() + 1 + payload_b64.len();
    let Some(message) = token.as_bytes().get(..message_len) else {
        return Err(reject(RejectReason::Malformed, "truncated token".into()));
    };
    match jsonwebtoken::crypto::verify(signature_b64, message, &key, jsonwebtoken::Algorithm::RS256)
    {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            return Err(reject(
                RejectReason::BadSignature,
                "signature does not verify".into(),
            ));
        }
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| reject(RejectReason::Malformed, "unreadable claims".into()))?;
    if claims.iss.as_deref() != Some(provider.issuer()) {
        return Err(reject(
            RejectReason::BadIssuer,
            format!(
                "iss {:?} is not the configured issuer",
                claims.iss.as_deref().map(truncate).unwrap_or_default()
            ),
        ));
    }
    if !claims.aud.as_ref().is_some_and(|a| a.contains(audience)) {
        return Err(reject(
            RejectReason::BadAudience,
            "aud does not contain the expected audience".into(),
        ));
    }
    let leeway = i64::try_from(leeway.min(MAX_LEEWAY_SECS)).unwrap_or(0);
    let now = crate::clock::unix_now();
    let Some(exp) = claims.exp.filter(|e| e.is_finite()) else {
        return Err(reject(RejectReason::Malformed, "no exp claim".into()));
    };
    if (exp as i64).saturating_add(leeway) <= now {
        return Err(reject(RejectReason::Expired, "token has expired".into()));
    }
    if let Some(nbf) = claims.nbf
        && (!nbf.is_finite() || (nbf as i64).saturating_sub(leeway) > now)
    {
        return Err(reject(
            RejectReason::NotYetValid,
            "token is not valid yet (nbf)".into(),
        ));
    }
    if claims.sub.as_deref().is_none_or(str::is_empty) {
        return Err(reject(RejectReason::MissingSub, "no sub claim".into()));
    }
    Ok((claims, kid_value.to_owned(), key))
}

/// SHA-256 of a bearer token: the verified-token cache's key, so the cache
/// never holds a token itself.
type TokenDigest = [u8; 32];

fn digest(bearer: &str) -> TokenDigest {
    Sha256::digest(bearer.as_bytes()).into()
}

struct CacheEntry {
    token: Arc<VerifiedToken>,
    /// The key that verified the signature: a hit needs the provider to still
    /// hold this very key under the token's kid (a key dropped, or replaced
    /// under the same kid, or any JWKS refresh, sends the token through full
    /// verification again).
    key: Arc<DecodingKey>,
    valid_until: i64,
    /// Recency tick of the last hit (the least recent goes first when full).
    last_used: AtomicU64,
}

/// Verifies bearer access tokens for the daemon's API.
///
/// A token that verified once is remembered until its `exp` (plus leeway) while its
/// signing key stays in the key set, so repeated calls with the same token cost a
/// SHA-256 of the token and two map lookups. The map is keyed by the token's SHA-256
/// (never the token), holds at most its capacity (least recently used evicted first)
/// and only tokens that verified: a spray of forged or distinct tokens cannot grow it
/// past the bound. It lives only in memory and is never logged.
pub struct TokenVerifier {
    provider: Arc<Provider>,
    audience: String,
    leeway: u64,
    cache: RwLock<HashMap<TokenDigest, CacheEntry>>,
    capacity: usize,
    tick: AtomicU64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.provider.issuer())
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens issued by `provider` for `audience`; `leeway_secs` is capped at 60.
    pub fn new(provider: Arc<Provider>, audience: impl Into<String>, leeway_secs: u64) -> Self {
        Self {
            provider,
            audience: audience.into(),
            leeway: leeway_secs.min(MAX_LEEWAY_SECS),
            cache: RwLock::new(HashMap::new()),
            capacity: CACHE_CAPACITY,
            tick: AtomicU64::new(0),
        }
    }

    /// The same verifier remembering at most `capacity` verified tokens (at least one).
    #[must_use]
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Whether the provider still publishes the very key that verified `entry`.
    fn holds_key(&self, entry: &CacheEntry) -> bool {
        self.provider
            .cached_key(&entry.token.kid)
            .is_some_and(|k| Arc::ptr_eq(&k, &entry.key))
    }

    /// Verified tokens remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.read().map_or(0, |c| c.len())
    }

    /// The provider whose keys are used.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Verifies a bearer token (the value after `Bearer `).
    pub async fn verify(&self, bearer: &str) -> Result<VerifiedToken, AuthRejection> {
        self.verify_shared(bearer).await.map(|t| (*t).clone())
    }

    /// [`Self::verify`] without copying the identity out of the cache: the hot
    /// path (a token verified on every call) allocates nothing on a cache hit.
    pub async fn verify_shared(&self, bearer: &str) -> Result<Arc<VerifiedToken>, AuthRejection> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthRejection::new(RejectReason::Missing, "no bearer token"));
        }
        if bearer.len() > MAX_TOKEN_BYTES {
            return Err(AuthRejection::new(
                RejectReason::TooLarge,
                format!("token is larger than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let now = crate::clock::unix_now();
        let key = digest(bearer);
        if let Ok(cache) = self.cache.read()
            && let Some(entry) = cache.get(&key)
            && entry.valid_until > now
            && self.holds_key(entry)
        {
            // Still signed by a key the provider publishes (a key dropped from the JWKS,
            // or replaced under its kid, invalidates the tokens it signed at the next
            // refresh).
            entry
                .last_used
                .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            return Ok(Arc::clone(&entry.token));
        }
        let (claims, kid, signing_key) =
            verify_jwt(&self.provider, bearer, &self.audience, self.leeway).await?;
        let exp = claims.exp.map(|e| e as i64).unwrap_or(now);
        let token = Arc::new(VerifiedToken {
            sub: claims.sub.unwrap_or_default(),
            issuer: claims.iss.unwrap_or_default(),
            client_id: claims.azp.or(claims.client_id),
            scopes: claims
                .scope
                .as_deref()
                .unwrap_or_default()
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            permissions: claims.permissions.unwrap_or_default().into_iter().collect(),
            name: claims.name,
            email: claims.email,
            kid,
            expires_at: exp,
        });
        let leeway = i64::try_from(self.leeway).unwrap_or(0);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= self.capacity && !cache.contains_key(&key) {
                // Expired tokens and tokens of retired keys go first, then the least recent.
                cache.retain(|_, e| e.valid_until > now && self.holds_key(e));
                while cache.len() >= self.capacity {
                    let Some(oldest) = cache
                        .iter()
                        .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                        .map(|(k, _)| *k)
                    else {
                        break;
                    };
                    cache.remove(&oldest);
                }
            }
            cache.insert(
                key,
                CacheEntry {
                    token: Arc::clone(&token),
                    key: signing_key,
                    valid_until: exp.saturating_add(leeway),
                    last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
                },
            );
        }
        Ok(token)
    }

    /// Verifies the value of an `authorization` header (`Bearer <token>`).
    pub async fn verify_header(
        &self,
        authorization: Option<&str>,
    ) -> Result<VerifiedToken, AuthRejection> {
        let bearer = bearer_from_header(authorization)?;
        self.verify(bearer).await
    }
}

/// Extracts the token from an `authorization: Bearer <token>` header value.
pub fn bearer_from_header(authorization: Option<&str>) -> Result<&str, AuthRejection> {
    let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
        return Err(AuthRejection::new(
            RejectReason::Missing,
            "no authorization header",
        ));
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(AuthRejection::new(
            RejectReason::Malformed,
            "authorization header is not \"Bearer <token>\"",
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthRejection::new(
            RejectReason::Malformed,
            "authorization scheme is not Bearer",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthRejection::new(
            RejectReason::Missing,
            "empty bearer token",
        ));
    }
    Ok(token)
}

/// What a verified token grants: roles come from its scopes and permissions,
/// mapped by `[auth.roles]`. Kept beside the token so settings need not know it.
impl AuthSettings {
    /// The roles granted by a verified token's scopes and permissions.
    pub fn roles_for(&self, token: &VerifiedToken) -> BTreeSet<Role> {
        roles_for(&self.roles.mapping(), token)
    }
}

/// The roles granted by `token`'s scopes and permissions under `mapping`.
pub fn roles_for(mapping: &BTreeMap<String, Role>, token: &VerifiedToken) -> BTreeSet<Role> {
    token
        .scopes
        .iter()
        .chain(token.permissions.iter())
        .filter_map(|s| mapping.get(s).copied())
        .collect()
}
