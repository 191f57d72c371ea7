//! The My Account API client: the `connect` and `complete` calls, and provider
//! errors turned into advice with every secret scrubbed out.

use serde::Deserialize;
use serde_json::Value;

use crate::auth::{AudienceToken, AuthError, CONNECTED_ACCOUNTS_SCOPES, Secret};
use crate::exit::{self, Failure};

#[derive(Deserialize)]
pub(super) struct ConnectReply {
    pub(super) auth_session: Secret,
    pub(super) connect_uri: String,
    pub(super) connect_params: ConnectParams,
    #[serde(default)]
    pub(super) expires_in: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct ConnectParams {
    pub(super) ticket: String,
}

/// RFC 7807 problem JSON, as the My Account API answers errors.
#[derive(Debug, Default, Deserialize)]
struct Problem {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    validation_errors: Vec<Value>,
    // Some endpoints answer the OAuth envelope instead.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl Problem {
    fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for p in [
            &self.title,
            &self.detail,
            &self.error,
            &self.error_description,
        ]
        .into_iter()
        .flatten()
        {
            if !p.is_empty() && !parts.contains(p) {
                parts.push(p.clone());
            }
        }
        for v in &self.validation_errors {
            let detail = v
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            let field = v.get("field").and_then(Value::as_str);
            parts.push(match field {
                Some(f) => format!("{f}: {detail}"),
                None => detail,
            });
        }
        if parts.is_empty()
            && let Some(k) = &self.kind
        {
            parts.push(k.clone());
        }
        parts.join("; ")
    }
}

/// The My Account API for one token: every call goes under `base`.
pub(super) struct MyAccount<'a> {
    pub(super) http: &'a reqwest::Client,
    /// `<issuer>me/v1/connected-accounts/`, the prefix of every call.
    pub(super) base: String,
    pub(super) token: &'a AudienceToken,
}

impl MyAccount<'_> {
    /// POSTs JSON and decodes the 2xx answer; errors become clear messages with every
    /// value in `scrub` (and the token) removed.
    pub(super) async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        connection: &str,
        scrub: &[&str],
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let request = self.http.post(&url).json(body);
        self.send(request, path, connection, scrub).await
    }

    /// GETs `path` (with its query) and decodes the 2xx answer.
    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        connection: &str,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), path, connection, &[]).await
    }

    /// DELETEs `path`; a 2xx answer (204) is success, its body ignored.
    pub(super) async fn delete(&self, path: &str, connection: &str) -> Result<(), Failure> {
        let url = format!("{}{path}", self.base);
        self.send::<serde::de::IgnoredAny>(self.http.delete(&url), path, connection, &[])
            .await
            .map(|_| ())
    }

    /// Sends with the token; errors become clear messages without secrets.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
        connection: &str,
        scrub: &[&str],
    ) -> Result<T, Failure> {
        let resp = request
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!("My Account API {path}: {}", transport(&e)))
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            AuthError::Unavailable(format!("My Account API {path}: {}", transport(&e)))
        })?;
        let mut secrets: Vec<&str> = scrub.to_vec();
        secrets.push(self.token.expose_secret());
        if (200..300).contains(&status) {
            // A 204 has no body: it decodes as `null`.
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice::<T>(bytes).map_err(|e| {
                AuthError::Provider(redact(
                    &format!("the My Account API {path} answer is invalid: {e}"),
                    &secrets,
                ))
                .into()
            });
        }
        let problem: Problem = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = redact(
            &problem_message(path, status, &problem.summary(), connection),
            &secrets,
        );
        Err(match status {
            400 | 422 => Failure::new(exit::USAGE, message),
            401 => Failure::new(exit::UNAUTHENTICATED, message),
            403 => Failure::new(exit::PERMISSION_DENIED, message),
            404 => Failure::new(exit::NOT_FOUND, message),
            409 => Failure::new(exit::FAILED_PRECONDITION, message),
            429 | 500.. => AuthError::Unavailable(message).into(),
            _ => AuthError::Provider(message).into(),
        })
    }
}

/// A transport error without its URL (which is harmless, but noisy).
fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    format!("{kind} ({cause})")
}

fn problem_message(path: &str, status: u16, summary: &str, connection: &str) -> String {
    let said = if summary.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {summary}")
    };
    match status {
        409 => format!(
            "an account for connection `{connection}` is already linked to your user ({said}); \
             remove the existing link first if you want to link another one"
        ),
        401 => format!(
            "the My Account API refused the token ({said}). Log in again with \
             `defenseclawctl auth login`; if that doesn't help, check that the CLI application \
             has a client grant for the My Account API"
        ),
        403 => format!(
            "the My Account API denied the request ({said}). The token needs the scopes {}; \
             check the CLI application's client grant for the My Account API and that \
             connection `{connection}` has Connected Accounts enabled",
            CONNECTED_ACCOUNTS_SCOPES.join(" ")
        ),
        404 => format!(
            "the My Account API does not know this ({said}): is `{connection}` the connection's \
             exact name, with Connected Accounts enabled?"
        ),
        400 | 422 => format!("the My Account API refused the {path} request ({said})"),
        _ => format!("the My Account API {path} request failed ({said})"),
    }
}

fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_owned();
    for s in secrets {
        if s.len() >= 8 {
            out = out.replace(s, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn problems_become_advice_without_secrets() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"https://auth0.com/api-errors/A0E-409-0001","title":"Conflict",
                "status":409,"detail":"already connected with verifier SECRETSECRET1"}"#,
        )
        .unwrap();
        let msg = redact(
            &problem_message("complete", 409, &p.summary(), "github"),
            &["SECRETSECRET1"],
        );
        assert!(msg.contains("already linked"), "{msg}");
        assert!(msg.contains("Conflict"), "{msg}");
        assert!(!msg.contains("SECRETSECRET1"), "{msg}");
        let p: Problem = serde_json::from_str(
            r#"{"title":"Bad Request","status":400,"detail":"Invalid request",
                "validation_errors":[{"detail":"too long","field":"connection"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.summary(),
            "Bad Request; Invalid request; connection: too long"
        );
        let msg = problem_message("connect", 403, "Forbidden", "github");
        assert!(msg.contains("create:me:connected_accounts"), "{msg}");
        let msg = problem_message("connect", 401, "", "github");
        assert!(msg.contains("auth login"), "{msg}");
    }
}
