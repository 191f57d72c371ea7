//! OAuth 2.0 Device Authorization Grant (RFC 8628) with Auth0's behaviour.
//!
//! Polling decides by the JSON `error`, never by the HTTP status (Auth0 answers 403 for
//! pending/denied/expired and 429 for `slow_down`); each wait is counted from the previous
//! response; `slow_down` adds 5 s for all later polls; network errors, 5xx and bare 429s
//! back off but never past the code's expiry; the first success ends polling.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::error::AuthError;
use super::provider::{self, Reply, TokenResponse};
use super::secret::Secret;

/// Grant type for polling.
pub(crate) const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.5: add 5 s on every `slow_down`.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Default interval when the provider sends none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;
/// Upper bound for the back-off after network errors or 5xx.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The device authorization response.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    #[serde(alias = "verification_url")]
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// Asks for a device code.
pub(crate) async fn request_code(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    scope: &str,
    audience: &str,
) -> Result<DeviceAuthorization, AuthError> {
    let mut form = vec![("client_id", client_id), ("scope", scope)];
    if !audience.is_empty() {
        form.push(("audience", audience));
    }
    let resp = http
        .post(endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| provider::unavailable("device authorization request", &e))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| provider::unavailable("device authorization request", &e))?;
    if status.is_success() {
        let auth: DeviceAuthorization = serde_json::from_slice(&bytes).map_err(|e| {
            AuthError::Provider(format!("invalid device authorization response: {e}"))
        })?;
        if auth.user_code.is_empty() || auth.device_code.is_empty() {
            return Err(AuthError::Provider(
                "device authorization response without user_code or device_code".into(),
            ));
        }
        provider::check_url(&auth.verification_uri, "verification_uri")?;
        return Ok(auth);
    }
    if status.is_server_error() {
        return Err(AuthError::Unavailable(format!(
            "device authorization request answered {status}"
        )));
    }
    #[derive(Deserialize)]
    struct Err {
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_description: Option<String>,
    }
    let detail = serde_json::from_slice::<Err>(&bytes)
        .ok()
        .and_then(|e| {
            e.error
                .map(|code| format!("{code}: {}", e.error_description.unwrap_or_default()))
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(AuthError::Provider(format!(
        "device authorization request refused ({detail}); check that client `{client_id}` is a \
         Native application with the Device Code grant and that the audience exists"
    )))
}

/// What to do after one poll.
#[derive(Debug)]
pub(crate) enum Step {
    /// Tokens: stop polling.
    Done(Box<TokenResponse>),
    /// `authorization_pending`: wait `interval` again.
    Pending,
    /// `slow_down`: the new interval for this and all later polls.
    SlowDown(Duration),
    /// Transient failure: back off and retry within the deadline.
    Retry(String),
    /// A failure that ends the login: stop polling.
    Fail(AuthError),
}

/// Classifies one poll answer (pure; unit-tested).
pub(crate) fn classify(reply: Result<Reply, String>, interval: Duration) -> Step {
    match reply {
        Err(transport) => Step::Retry(transport),
        Ok(Reply::Tokens(t)) => Step::Done(Box::new(t)),
        Ok(Reply::OAuth {
            status,
            error,
            description,
            interval: body_interval,
            retry_after,
        }) => {
            let desc = description.unwrap_or_default();
            match error.as_str() {
                "authorization_pending" => Step::Pending,
                "slow_down" => {
                    let mut next = interval + SLOW_DOWN_STEP;
                    for hint in [body_interval, retry_after].into_iter().flatten() {
                        next = next.max(Duration::from_secs(hint));
                    }
                    Step::SlowDown(next)
                }
                "access_denied" => Step::Fail(AuthError::Denied(if desc.is_empty() {
                    "the request was denied".into()
                } else {
                    desc
                })),
                "expired_token" => Step::Fail(AuthError::Expired),
                "invalid_grant" => Step::Fail(AuthError::InvalidGrant(desc)),
                "temporarily_unavailable" | "server_error" | "too_many_requests" => {
                    Step::Retry(format!("{error} (HTTP {status})"))
                }
                _ if status >= 500 => Step::Retry(format!("{error} (HTTP {status})")),
                _ => Step::Fail(AuthError::Provider(format!(
                    "token request refused ({error}: {desc})"
                ))),
            }
        }
        Ok(Reply::Other { status }) if status >= 500 || status == 429 => {
            Step::Retry(format!("HTTP {status}"))
        }
        Ok(Reply::Other { status }) => Step::Fail(AuthError::Provider(format!(
            "unexpected answer from the token endpoint (HTTP {status}, no OAuth error body)"
        ))),
    }
}

/// Polls the token endpoint until tokens, a terminal error, the code's expiry or `cancel`.
pub(crate) async fn poll<C>(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    auth: &DeviceAuthorization,
    issued_at: Instant,
    cancel: C,
) -> Result<TokenResponse, AuthError>
where
    C: Future<Output = ()>,
{
    tokio::pin!(cancel);
    let deadline = issued_at + Duration::from_secs(auth.expires_in);
    let mut interval = Duration::from_secs(auth.interval.unwrap_or(DEFAULT_INTERVAL).max(1));
    let mut backoff: Option<Duration> = None;
    let mut last_failure: Option<String> = None;
    // The previous response arrived at `issued_at`.
    let mut last_response = issued_at;
    loop {
        let wait = backoff.unwrap_or(interval);
        let next_poll = last_response + wait;
        if next_poll >= deadline {
            tokio::select! {
                () = &mut cancel => return Err(AuthError::Cancelled),
                () = tokio::time::sleep_until(deadline) => {}
            }
            return Err(match last_failure {
                Some(why) => AuthError::Unavailable(format!(
                    "the login code expired while the identity provider was failing (last: {why})"
                )),
                None => AuthError::Expired,
            });
        }
        tokio::select! {
            () = &mut cancel => return Err(AuthError::Cancelled),
            () = tokio::time::sleep_until(next_poll) => {}
        }
        let form = [
            ("grant_type", DEVICE_GRANT),
            ("device_code", auth.device_code.expose()),
            ("client_id", client_id),
        ];
        let reply = tokio::select! {
            () = &mut cancel => return Err(AuthError::Cancelled),
            r = provider::post_form(http, token_endpoint, &form) => r,
        };
        last_response = Instant::now();
        let reply = reply.map_err(|e| provider::unavailable("token request", &e).to_string());
        match classify(reply, interval) {
            Step::Done(tokens) => return Ok(*tokens),
            Step::Pending => {
                backoff = None;
                last_failure = None;
            }
            Step::SlowDown(next) => {
                interval = next;
                backoff = None;
                last_failure = None;
            }
            Step::Retry(why) => {
                let doubled = backoff.unwrap_or(interval).saturating_mul(2);
                backoff = Some(doubled.min(MAX_BACKOFF).max(interval));
                last_failure = Some(why);
            }
            Step::Fail(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(status: u16, error: &str, interval: Option<u64>, retry: Option<u64>) -> Reply {
        Reply::OAuth {
            status,
            error: error.into(),
            description: Some("d".into()),
            interval,
            retry_after: retry,
        }
    }

    #[test]
    fn decides_by_error_not_status() {
        let i = Duration::from_secs(5);
        assert!(matches!(
            classify(Ok(oauth(403, "authorization_pending", None, None)), i),
            Step::Pending
        ));
        assert!(matches!(
            classify(Ok(oauth(400, "authorization_pending", None, None)), i),
            Step::Pending
        ));
        assert!(matches!(
            classify(Ok(oauth(403, "access_denied", None, None)), i),
            Step::Fail(AuthError::Denied(_))
        ));
        assert!(matches!(
            classify(Ok(oauth(403, "expired_token", None, None)), i),
            Step::Fail(AuthError::Expired)
        ));
        assert!(matches!(
            classify(Ok(oauth(403, "invalid_grant", None, None)), i),
            Step::Fail(AuthError::InvalidGrant(_))
        ));
        assert!(matches!(
            classify(Ok(oauth(401, "invalid_client", None, None)), i),
            Step::Fail(AuthError::Provider(_))
        ));
        assert!(matches!(
            classify(Ok(Reply::Other { status: 502 }), i),
            Step::Retry(_)
        ));
        assert!(matches!(
            classify(Ok(Reply::Other { status: 429 }), i),
            Step::Retry(_)
        ));
        assert!(matches!(classify(Err("refused".into()), i), Step::Retry(_)));
        assert!(matches!(
            classify(Ok(Reply::Other { status: 404 }), i),
            Step::Fail(AuthError::Provider(_))
        ));
    }

    #[test]
    fn slow_down_adds_five_seconds_or_more() {
        let i = Duration::from_secs(2);
        match classify(Ok(oauth(429, "slow_down", None, None)), i) {
            Step::SlowDown(d) => assert_eq!(d, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        match classify(Ok(oauth(429, "slow_down", Some(10), Some(12))), i) {
            Step::SlowDown(d) => assert_eq!(d, Duration::from_secs(12)),
            other => panic!("{other:?}"),
        }
    }
}
