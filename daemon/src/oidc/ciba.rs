//! Client-Initiated Backchannel Authentication (CIBA, poll mode) for step-up approvals.
//! The daemon is the confidential client; with Auth0 the approver gets a Guardian push.
//!
//! Every answer of the token endpoint is decided by its JSON `error`, never by its HTTP
//! status (Auth0 uses 400/403/429 freely). Auth0 answers `access_denied` both when the
//! approver taps Deny and when the request expires, so a timeout is decided by the local
//! deadline computed from `expires_in`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::provider::{OidcError, Provider, read_limited, transport};
use super::secret::{AuthReqId, ClientSecret};
use super::settings::MAX_LEEWAY_SECS;
use super::verify::{AuthRejection, verify_jwt};

/// CIBA grant type for polling the token endpoint.
pub const CIBA_GRANT_TYPE: &str = "urn:openid:params:grant-type:ciba";
/// Longest `binding_message` accepted.
pub const MAX_BINDING_MESSAGE_CHARS: usize = 64;
/// Largest token-endpoint answer read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest server `error_description` kept.
const MAX_DESCRIPTION_CHARS: usize = 300;
/// An `access_denied` this close to the local deadline is taken as the request expiring.
const TIMEOUT_GRACE: Duration = Duration::from_secs(3);
/// Longest wait between polls after network errors or 5xx answers.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Interval assumed when the provider does not send one (RFC default).
const DEFAULT_INTERVAL_SECS: u64 = 5;

/// Why a binding message is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingMessageError {
    /// Empty message.
    #[error("binding message is empty")]
    Empty,
    /// Longer than 64 characters.
    #[error("binding message has {0} characters; at most 64 are allowed")]
    TooLong(usize),
    /// A character outside `A-Z a-z 0-9 space + - _ . , : #`.
    #[error("binding message contains {0:?}; only A-Z a-z 0-9 space + - _ . , : # are allowed")]
    BadChar(char),
}

fn allowed_binding_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '+' | '-' | '_' | '.' | ',' | ':' | '#')
}

/// Checks a binding message: 1..=64 characters from `A-Z a-z 0-9 space + - _ . , : #`.
pub fn validate_binding_message(message: &str) -> Result<(), BindingMessageError> {
    if message.is_empty() {
        return Err(BindingMessageError::Empty);
    }
    if let Some(c) = message.chars().find(|c| !allowed_binding_char(*c)) {
        return Err(BindingMessageError::BadChar(c));
    }
    let len = message.chars().count();
    if len > MAX_BINDING_MESSAGE_CHARS {
        return Err(BindingMessageError::TooLong(len));
    }
    Ok(())
}

fn sanitize_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.trim().chars() {
        let c = if allowed_binding_char(c) && c != ' ' {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Builds the binding message shown on the approver's phone and in the CLI, e.g.
/// `DC-4F2A block skill evil-skill`. Characters outside the allowed set become `-`;
/// the result is cut to 64 characters (the name is shortened first). Always valid
/// unless every part is empty.
pub fn binding_message(code: &str, action: &str, kind: &str, name: &str) -> String {
    let head: Vec<String> = [code, action, kind]
        .iter()
        .map(|p| sanitize_part(p))
        .filter(|p| !p.is_empty())
        .collect();
    let mut message = head.join(" ");
    let name = sanitize_part(name);
    if !name.is_empty() {
        if !message.is_empty() {
            message.push(' ');
        }
        message.push_str(&name);
    }
    message.chars().take(MAX_BINDING_MESSAGE_CHARS).collect()
}

/// A request code for binding messages: `DC-` and 16 hex digits, 64 random bits
/// (e.g. `DC-4F2A91C30B7E55D1`), so ids do not collide however many requests a
/// daemon has seen; the binding message stays within 64 characters (the target
/// name is cut first).
pub fn new_request_code() -> String {
    format!("DC-{:016X}", rand::random::<u64>())
}

/// A CIBA failure. Never contains the client secret, an `auth_req_id` or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CibaError {
    /// Discovery or keys could not be loaded.
    #[error(transparent)]
    Provider(#[from] OidcError),
    /// The provider's discovery document has no CIBA (or token) endpoint.
    #[error("the identity provider does not offer CIBA ({0} missing from discovery)")]
    NotSupported(&'static str),
    /// The binding message is not acceptable.
    #[error(transparent)]
    InvalidBindingMessage(#[from] BindingMessageError),
    /// A bad argument to `start`.
    #[error("invalid CIBA request: {0}")]
    InvalidArgument(String),
    /// `invalid_request` from the provider: with Auth0 this means the approver is not
    /// enrolled in Guardian push (or the request was otherwise refused as invalid).
    #[error(
        "the approver cannot receive a push approval (not enrolled in Guardian push?); provider said invalid_request{}",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    UserNotEnrolled {
        /// The provider's `error_description`.
        description: Option<String>,
    },
    /// Network failure or timeout (retryable).
    #[error("cannot reach the identity provider: {0}")]
    Transport(String),
    /// HTTP 5xx or 429 without an OAuth error, or `server_error`/`temporarily_unavailable` (retryable).
    #[error("identity provider unavailable (HTTP {status})")]
    Unavailable {
        /// HTTP status.
        status: u16,
    },
    /// A terminal OAuth error (`invalid_client`, `unauthorized_client`, `invalid_grant`, ...).
    #[error("identity provider refused the request: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        /// The OAuth `error` code.
        error: String,
        /// The provider's `error_description`.
        description: Option<String>,
    },
    /// An answer that is neither success nor an OAuth error.
    #[error("invalid answer from the identity provider: {0}")]
    InvalidResponse(String),
    /// The ID token returned on approval failed validation; the approval is not trusted.
    #[error("the ID token of the approval was rejected: {0}")]
    InvalidIdToken(AuthRejection),
}

impl CibaError {
    /// True when polling may go on after a wait (network errors, 5xx, 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            CibaError::Transport(_) | CibaError::Unavailable { .. } => true,
            CibaError::Provider(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The provider accepted a backchannel authentication request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaStart {
    /// Handle to poll with (redacted in `Debug`).
    pub auth_req_id: AuthReqId,
    /// Seconds until the request expires, from `received_at` (the provider's
    /// `expires_in`, capped at the `requested_expiry` sent).
    pub expires_in: u64,
    /// Minimum seconds between polls.
    pub interval: u64,
    /// When the answer arrived (the local deadline counts from here).
    pub received_at: SystemTime,
}

impl CibaStart {
    /// The local deadline: `received_at + expires_in`.
    pub fn deadline(&self) -> SystemTime {
        self.received_at + Duration::from_secs(self.expires_in)
    }

    /// The polling interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval)
    }
}

/// The approver, from the validated ID token of an approved request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Approval {
    /// `sub` of the approver.
    pub sub: String,
    /// `email`, if the ID token has one.
    pub email: Option<String>,
    /// `name`, if the ID token has one.
    pub name: Option<String>,
    /// Issuer of the ID token (the configured issuer).
    pub issuer: String,
    /// Key id that signed the ID token.
    pub kid: String,
    /// A refresh token for the approver, when `offline_access` was asked for
    /// and granted (the subject of unattended Token Vault exchanges).
    #[serde(skip)]
    pub refresh_token: Option<super::secret::RefreshToken>,
}

/// The result of one poll of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// `authorization_pending`: wait `interval` and poll again.
    Pending,
    /// `slow_down`: wait longer. `retry_after` is the larger of the `Retry-After` header
    /// and the body's `interval`, when either was sent.
    SlowDown {
        /// How long the provider asked to wait.
        retry_after: Option<Duration>,
    },
    /// Approved; the ID token was validated.
    Approved(Approval),
    /// `access_denied`: denied by the approver *or* expired (Auth0 does not tell them apart).
    Denied,
    /// `expired_token`.
    Expired,
}

/// How a step-up ended, as decided by [`CibaClient::poll_until`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CibaOutcome {
    /// The approver approved; identity from the validated ID token.
    Approved(Approval),
    /// The approver denied.
    Denied,
    /// The local deadline passed (or the provider said the request expired).
    TimedOut,
    /// The caller cancelled the wait.
    Cancelled,
    /// The provider failed or refused the request.
    Error(CibaError),
}

impl CibaOutcome {
    /// Stable name: `approved`, `denied`, `timed_out`, `cancelled`, `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CibaOutcome::Approved(_) => "approved",
            CibaOutcome::Denied => "denied",
            CibaOutcome::TimedOut => "timed_out",
            CibaOutcome::Cancelled => "cancelled",
            CibaOutcome::Error(_) => "error",
        }
    }
}

#[derive(Deserialize)]
struct StartResponse {
    auth_req_id: Option<String>,
    expires_in: Option<u64>,
    interval: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OAuthErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    code: Option<String>,
    description: Option<String>,
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
}

/// The CIBA client (the daemon's confidential application).
#[derive(Debug)]
pub struct CibaClient {
    provider: Arc<Provider>,
    client_id: String,
    client_secret: ClientSecret,
    leeway: u64,
}

struct RawAnswer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// A provider's error description, safe to show: no control characters, bounded.
pub(super) fn clean_description(d: Option<String>) -> Option<String> {
    d.map(|d| {
        d.chars()
            .filter(|c| !c.is_control())
            .take(MAX_DESCRIPTION_CHARS)
            .collect::<String>()
    })
    .filter(|d| !d.is_empty())
}

fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Maps an OAuth error answer (or a bodiless failure) to a [`CibaError`].
fn oauth_error(status: u16, body: OAuthErrorBody) -> CibaError {
    let error = body.error.or(body.code);
    let description = clean_description(body.error_description.or(body.description));
    match error.as_deref() {
        Some("invalid_request") => CibaError::UserNotEnrolled { description },
        Some("server_error" | "temporarily_unavailable" | "too_many_requests") => {
            CibaError::Unavailable { status }
        }
        Some(_) if status == 429 => CibaError::Unavailable { status },
        Some(code) => CibaError::OAuth {
            error: code.chars().take(64).collect(),
            description,
        },
        None if status >= 500 || status == 429 => CibaError::Unavailable { status },
        None => CibaError::InvalidResponse(format!("HTTP {status} without an OAuth error")),
    }
}

impl CibaClient {
    /// A CIBA client for `provider` with the daemon's client credentials.
    pub fn new(
        provider: Arc<Provider>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> Self {
        Self {
            provider,
            client_id: client_id.into(),
            client_secret,
            leeway: MAX_LEEWAY_SECS,
        }
    }

    /// The daemon's client id (the expected `aud` of approval ID tokens).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    async fn post(
        &self,
        endpoint: &str,
        what: &'static str,
        form: &[(&str, &str)],
    ) -> Result<RawAnswer, CibaError> {
        let resp = self
            .provider
            .http()
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| CibaError::Transport(transport(what, &e).to_string()))?;
        let status = resp.status().as_u16();
        let retry_after = parse_retry_after(resp.headers());
        let body = read_limited(resp, MAX_RESPONSE_BYTES, what)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    CibaError::Transport(e.to_string())
                } else {
                    CibaError::InvalidResponse(e.to_string())
                }
            })?;
        Ok(RawAnswer {
            status,
            retry_after,
            body,
        })
    }

    /// Starts a backchannel authentication request for the user `login_hint_sub`
    /// (`POST` to the discovery's `backchannel_authentication_endpoint`). `scope` must
    /// contain `openid`; `requested_expiry` ≤ 300 s keeps Auth0 on push.
    pub async fn start(
        &self,
        login_hint_sub: &str,
        binding_message: &str,
        scope: &str,
        requested_expiry: Option<u32>,
    ) -> Result<CibaStart, CibaError> {
        validate_binding_message(binding_message)?;
        if login_hint_sub.trim().is_empty() {
            return Err(CibaError::InvalidArgument(
                "the approver's sub is empty".into(),
            ));
        }
        if !scope.split_ascii_whitespace().any(|s| s == "openid") {
            return Err(CibaError::InvalidArgument(
                "scope must contain openid".into(),
            ));
        }
        if requested_expiry == Some(0) {
            return Err(CibaError::InvalidArgument(
                "requested_expiry must be at least 1 second".into(),
            ));
        }
        let discovery = self.provider.discovery().await?;
        let Some(endpoint) = discovery.backchannel_authentication_endpoint.as_deref() else {
            return Err(CibaError::NotSupported(
                "backchannel_authentication_endpoint",
            ));
        };
        let login_hint = serde_json::json!({
            "format": "iss_sub",
            "iss": self.provider.issuer(),
            "sub": login_hint_sub,
        })
        .to_string();
        let expiry = requested_expiry.map(|e| e.to_string());
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("login_hint", login_hint.as_str()),
            ("scope", scope),
            ("binding_message", binding_message),
        ];
        if let Some(expiry) = expiry.as_deref() {
            form.push(("requested_expiry", expiry));
        }
        let answer = self
            .post(endpoint, "backchannel authentication", &form)
            .await?;
        let received_at = SystemTime::now();
        let error: OAuthErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
        if error.error.is_some() || error.code.is_some() || !(200..300).contains(&answer.status) {
            return Err(oauth_error(answer.status, error));
        }
        let start: StartResponse = serde_json::from_slice(&answer.body)
            .map_err(|e| CibaError::InvalidResponse(format!("backchannel authentication: {e}")))?;
        let (Some(auth_req_id), Some(expires_in)) = (start.auth_req_id, start.expires_in) else {
            return Err(CibaError::InvalidResponse(
                "backchannel authentication answer lacks auth_req_id or expires_in".into(),
            ));
        };
        if auth_req_id.is_empty() || expires_in == 0 {
            return Err(CibaError::InvalidResponse(
                "backchannel authentication answer has an empty auth_req_id or expires_in".into(),
            ));
        }
        // Never wait longer than asked for: the hold on the target is bounded by config.
        let expires_in = requested_expiry.map_or(expires_in, |r| expires_in.min(u64::from(r)));
        tracing::info!(expires_in, binding_message, "CIBA request started");
        Ok(CibaStart {
            auth_req_id: AuthReqId::new(auth_req_id),
            expires_in,
            interval: start.interval.unwrap_or(DEFAULT_INTERVAL_SECS).max(1),
            received_at,
        })
    }

    /// Polls the token endpoint once for `auth_req_id`. An approval is returned only
    /// after its ID token validated (RS256 with the provider's keys, `iss`, `aud` = this
    /// client, `exp`, `sub`).
    pub async fn poll_once(&self, auth_req_id: &AuthReqId) -> Result<PollOutcome, CibaError> {
        let discovery = self.provider.discovery().await?;
        let Some(endpoint) = discovery.token_endpoint.as_deref() else {
            return Err(CibaError::NotSupported("token_endpoint"));
        };
        let form = [
            ("grant_type", CIBA_GRANT_TYPE),
            ("auth_req_id", auth_req_id.expose()),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        let answer = self.post(endpoint, "CIBA token", &form).await?;
        let body: OAuthErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
        let code = body.error.clone().or_else(|| body.code.clone());
        match code.as_deref() {
            Some("authorization_pending") => return Ok(PollOutcome::Pending),
            Some("slow_down") => {
                let from_body = body.interval.map(Duration::from_secs);
                let retry_after = match (answer.retry_after, from_body) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                return Ok(PollOutcome::SlowDown { retry_after });
            }
            Some("access_denied") => return Ok(PollOutcome::Denied),
            Some("expired_token") => return Ok(PollOutcome::Expired),
            Some(_) => return Err(oauth_error(answer.status, body)),
            None => {}
        }
        if !(200..300).contains(&answer.status) {
            return Err(oauth_error(answer.status, body));
        }
        let tokens: TokenResponse = serde_json::from_slice(&answer.body)
            .map_err(|e| CibaError::InvalidResponse(format!("CIBA token answer: {e}")))?;
        let Some(id_token) = tokens.id_token else {
            return Err(CibaError::InvalidResponse(
                "approved CIBA answer has no id_token".into(),
            ));
        };
        let mut approval = self.validate_id_token(&id_token).await?;
        approval.refresh_token = tokens
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(super::secret::RefreshToken::new);
        tracing::info!(approver = %approval.sub, "CIBA request approved");
        Ok(PollOutcome::Approved(approval))
    }

    async fn validate_id_token(&self, id_token: &str) -> Result<Approval, CibaError> {
        let (claims, kid, _key) =
            verify_jwt(&self.provider, id_token, &self.client_id, self.leeway)
                .await
                .map_err(CibaError::InvalidIdToken)?;
        let multi_aud = claims.aud.as_ref().is_some_and(|a| a.len() > 1);
        let azp_ok = match claims.azp.as_deref() {
            Some(azp) => azp == self.client_id,
            None => !multi_aud,
        };
        if !azp_ok {
            return Err(CibaError::InvalidIdToken(AuthRejection {
                reason: super::verify::RejectReason::BadAudience,
                detail: "azp is not this client".into(),
                unverified_sub: claims.sub.clone(),
                kid: Some(kid),
            }));
        }
        Ok(Approval {
            sub: claims.sub.unwrap_or_default(),
            email: claims.email,
            name: claims.name,
            issuer: claims.iss.unwrap_or_default(),
            kid,
            refresh_token: None,
        })
    }

    /// Polls until the request is decided, `deadline` passes, or `cancel` fires.
    ///
    /// Waits `interval` before each poll (counted from the previous answer); `slow_down`
    /// raises the interval to `max(Retry-After, interval)` (or `interval + 5 s` without
    /// either) for all later polls; network errors and 5xx back off (doubling, up to 30 s)
    /// but never past the deadline; `access_denied` within 3 s of the deadline, or
    /// `expired_token`, or a pending answer at the deadline, is [`CibaOutcome::TimedOut`].
    /// Stops at the first success: an `auth_req_id` is never redeemed twice.
    pub async fn poll_until(
        &self,
        auth_req_id: &AuthReqId,
        deadline: SystemTime,
        interval: Duration,
        cancel: &CancellationToken,
    ) -> CibaOutcome {
        let mut interval = interval.max(Duration::from_millis(10));
        let mut wait = interval;
        let mut backoff: Option<Duration> = None;
        let mut last_error: Option<CibaError> = None;
        loop {
            let Ok(remaining) = deadline.duration_since(SystemTime::now()) else {
                return timed_out_or(last_error);
            };
            tokio::select! {
                () = cancel.cancelled() => return CibaOutcome::Cancelled,
                () = tokio::time::sleep(wait.min(remaining)) => {}
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return CibaOutcome::Cancelled,
                r = self.poll_once(auth_req_id) => r,
            };
            let past_deadline = SystemTime::now() >= deadline;
            match result {
                Ok(PollOutcome::Approved(approval)) => return CibaOutcome::Approved(approval),
                Ok(PollOutcome::Pending) => {
                    last_error = None;
                    backoff = None;
                    if past_deadline {
                        return CibaOutcome::TimedOut;
                    }
                    wait = interval;
                }
                Ok(PollOutcome::SlowDown { retry_after }) => {
                    last_error = None;
                    backoff = None;
                    let asked = retry_after.unwrap_or(interval + Duration::from_secs(5));
                    interval = interval.max(asked);
                    tracing::debug!(interval_ms = interval.as_millis() as u64, "CIBA slow_down");
                    if past_deadline {
                        return CibaOutcome::TimedOut;
                    }
                    wait = interval;
                }
                Ok(PollOutcome::Denied) => {
                    let near_deadline = SystemTime::now() + TIMEOUT_GRACE >= deadline;
                    return if near_deadline {
                        CibaOutcome::TimedOut
                    } else {
                        CibaOutcome::Denied
                    };
                }
                Ok(PollOutcome::Expired) => return CibaOutcome::TimedOut,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "CIBA poll failed; backing off");
                    let next = backoff.map_or(interval, |b| (b * 2).min(MAX_BACKOFF));
                    let next = next.max(interval);
                    backoff = Some(next);
                    wait = next;
                    last_error = Some(e);
                    if past_deadline {
                        return timed_out_or(last_error);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CIBA request failed");
                    return CibaOutcome::Error(e);
                }
            }
        }
    }
}

/// At the deadline: an error if the last poll failed (the provider was unreachable),
/// otherwise a plain timeout.
fn timed_out_or(last_error: Option<CibaError>) -> CibaOutcome {
    match last_error {
        Some(e) => CibaOutcome::Error(e),
        None => CibaOutcome::TimedOut,
    }
}

impl fmt::Display for CibaOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CibaOutcome::Error(e) => write!(f, "error: {e}"),
            other => f.write_str(other.as_str()),
        }
    }
}
