//! Talking to the OpenID provider: discovery, form posts to the token endpoints with
//! status-agnostic OAuth error parsing, JWKS and ID token validation.

use std::time::Duration;

use defenseclaw_common::loopback::is_loopback_url;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::error::AuthError;
use super::secret::Secret;

/// Leeway for `exp`/`iat` on ID tokens.
const ID_TOKEN_LEEWAY_SECS: u64 = 60;

/// The HTTP client used for every provider call: no redirects, bounded timeouts.
pub(crate) fn http_client() -> Result<reqwest::Client, AuthError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        // Polls are seconds apart: don't reuse a connection the server may be closing.
        .pool_idle_timeout(Duration::from_secs(2))
        .user_agent(concat!("defenseclawctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AuthError::Io(format!("building the HTTP client: {e}")))
}

/// Normalises an issuer setting with the daemon's rule
/// ([`defenseclaw_common::issuer::normalize_issuer`]): a bare Auth0 domain becomes
/// `https://<domain>/`; `http://` only for loopback hosts (tests); no credentials,
/// query or fragment.
pub fn normalize_issuer(raw: &str) -> Result<String, AuthError> {
    defenseclaw_common::issuer::normalize_issuer(raw).map_err(|e| AuthError::Config(e.0))
}

/// Rejects anything but `https://`, or `http://` on a loopback host.
pub(crate) fn check_url(value: &str, what: &str) -> Result<url::Url, AuthError> {
    let url = url::Url::parse(value)
        .map_err(|e| AuthError::Config(format!("{what} `{value}` is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_url(&url) => Ok(url),
        "http" => Err(AuthError::Config(format!(
            "{what} `{value}` uses plain http; only https is allowed (http only for loopback hosts)"
        ))),
        other => Err(AuthError::Config(format!(
            "{what} `{value}` has unsupported scheme `{other}`"
        ))),
    }
}

/// The parts of the discovery document the CLI uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Discovery {
    pub issuer: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    pub jwks_uri: String,
}

/// Maps a transport error to [`AuthError::Unavailable`].
pub(crate) fn unavailable(what: &str, e: &reqwest::Error) -> AuthError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AuthError::Unavailable(format!("{what}: {kind} ({e})"))
}

/// Fetches `<issuer>/.well-known/openid-configuration` and checks its `issuer` matches.
pub(crate) async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, AuthError> {
    let issuer = normalize_issuer(issuer)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unavailable("discovery", &e))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(AuthError::Unavailable(format!(
            "discovery: {url} answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(AuthError::Provider(format!(
            "discovery: {url} answered {status}"
        )));
    }
    let disc: Discovery = resp
        .json()
        .await
        .map_err(|e| AuthError::Provider(format!("discovery document at {url} is invalid: {e}")))?;
    if disc.issuer != issuer {
        return Err(AuthError::Provider(format!(
            "discovery issuer `{}` does not match the configured issuer `{issuer}` exactly \
             (Auth0 issuers end with `/`)",
            disc.issuer
        )));
    }
    check_url(&disc.token_endpoint, "token_endpoint")?;
    check_url(&disc.jwks_uri, "jwks_uri")?;
    if let Some(u) = &disc.device_authorization_endpoint {
        check_url(u, "device_authorization_endpoint")?;
    }
    if let Some(u) = &disc.revocation_endpoint {
        check_url(u, "revocation_endpoint")?;
    }
    Ok(disc)
}

/// A successful token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: Secret,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    #[serde(default)]
    pub id_token: Option<Secret>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Only Bearer tokens are used.
pub(crate) fn check_token_type(tokens: &TokenResponse) -> Result<(), AuthError> {
    match tokens.token_type.as_deref() {
        Some(tt) if !tt.eq_ignore_ascii_case("bearer") => Err(AuthError::Provider(format!(
            "unsupported token_type `{tt}` (Bearer expected)"
        ))),
        _ => Ok(()),
    }
}

/// An answer from a token-like endpoint, decided by the JSON body, never by the status.
#[derive(Debug)]
pub(crate) enum Reply {
    /// 2xx with an `access_token`.
    Tokens(TokenResponse),
    /// An OAuth error body (`error`, or Auth0's legacy `code`), whatever the status.
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
        interval: Option<u64>,
        retry_after: Option<u64>,
    },
    /// Anything else (5xx HTML, 429 without a body, 2xx without tokens).
    Other { status: u16 },
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    interval: Option<u64>,
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
}

/// POSTs a form and classifies the answer. `Err` is a transport failure.
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<Reply, reqwest::Error> {
    let resp = http.post(url).form(form).send().await?;
    let status = resp.status();
    let retry = retry_after(resp.headers());
    let bytes = resp.bytes().await?;
    if status.is_success()
        && let Ok(tokens) = serde_json::from_slice::<TokenResponse>(&bytes)
    {
        return Ok(Reply::Tokens(tokens));
    }
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes)
        && let Some(error) = body.error.or(body.code)
    {
        return Ok(Reply::OAuth {
            status: status.as_u16(),
            error,
            description: body.error_description.or(body.description),
            interval: body.interval,
            retry_after: retry,
        });
    }
    Ok(Reply::Other {
        status: status.as_u16(),
    })
}

/// Identity claims from a validated ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdClaims {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct RawIdClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

async fn fetch_jwks(http: &reqwest::Client, jwks_uri: &str) -> Result<JwkSet, AuthError> {
    let resp = http
        .get(jwks_uri)
        .send()
        .await
        .map_err(|e| unavailable("fetching the JWKS", &e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(AuthError::Unavailable(format!(
            "JWKS at {jwks_uri} answered {status}"
        )));
    }
    resp.json::<JwkSet>()
        .await
        .map_err(|e| AuthError::Provider(format!("JWKS at {jwks_uri} is invalid: {e}")))
}

/// Validates an ID token: RS256 only, signature by a key from the provider's JWKS,
/// `iss` exactly the discovered issuer, `aud` containing `client_id`, `exp` (60 s leeway).
pub(crate) async fn validate_id_token(
    http: &reqwest::Client,
    disc: &Discovery,
    id_token: &Secret,
    client_id: &str,
) -> Result<IdClaims, AuthError> {
    let header = decode_header(id_token.expose())
        .map_err(|e| AuthError::InvalidIdToken(format!("malformed header: {e}")))?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::InvalidIdToken(format!(
            "algorithm {:?} is not allowed (RS256 only)",
            header.alg
        )));
    }
    let jwks = fetch_jwks(http, &disc.jwks_uri).await?;
    let jwk = match &header.kid {
        Some(kid) => jwks
            .find(kid)
            .ok_or_else(|| AuthError::InvalidIdToken(format!("unknown signing key `{kid}`")))?,
        None if jwks.keys.len() == 1 => &jwks.keys[0],
        None => {
            return Err(AuthError::InvalidIdToken(
                "no `kid` and several keys in the JWKS".into(),
            ));
        }
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| AuthError::InvalidIdToken(format!("unusable signing key: {e}")))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.algorithms = vec![Algorithm::RS256];
    validation.set_issuer(&[disc.issuer.as_str()]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = ID_TOKEN_LEEWAY_SECS;
    let data = decode::<RawIdClaims>(id_token.expose(), &key, &validation)
        .map_err(|e| AuthError::InvalidIdToken(e.to_string()))?;
    let claims = data.claims;
    if claims.sub.is_empty() {
        return Err(AuthError::InvalidIdToken("empty `sub`".into()));
    }
    Ok(IdClaims {
        sub: claims.sub,
        email: claims.email,
        name: claims.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_normalisation() {
        assert_eq!(
            normalize_issuer("tenant.eu.auth0.com").ok().as_deref(),
            Some("https://tenant.eu.auth0.com/")
        );
        assert_eq!(
            normalize_issuer("http://127.0.0.1:4000/").ok().as_deref(),
            Some("http://127.0.0.1:4000/")
        );
        assert!(normalize_issuer("http://idp.example.com/").is_err());
        assert!(normalize_issuer("ftp://x/").is_err());
        assert!(normalize_issuer("").is_err());
    }
}
