//! Access tokens for another API of the same tenant (Auth0's My Account API), held in
//! memory only: the session keeps its daemon token.
//!
//! First the session's refresh token with `audience` (Auth0 Multi-Resource Refresh Token);
//! when the provider refuses that (MRRT not configured, `unmet_authentication_requirements`)
//! or there is no session refresh token, a device-flow login for that audience, shown like
//! `auth login` shows it.

use std::future::Future;

use super::error::AuthError;
use super::login::Auth;
use super::provider::normalize_issuer;
use super::provider::{self, Reply, TokenResponse};
use super::secret::Secret;
use super::session::{self, Session};

/// Scopes to create and list connected accounts (My Account API).
pub const CONNECTED_ACCOUNTS_SCOPES: [&str; 2] =
    ["create:me:connected_accounts", "read:me:connected_accounts"];

/// The My Account API identifier (`audience`) for an issuer: `https://{domain}/me/`.
pub fn my_account_audience(issuer: &str) -> String {
    format!("{}/me/", issuer.trim_end_matches('/'))
}

/// What [`Auth::token_for_audience`] needs.
#[derive(Debug, Clone, Default)]
pub struct AudienceRequest {
    /// Issuer URL (trailing slash) or bare Auth0 domain.
    pub issuer: String,
    /// The CLI's (Native, public) client id.
    pub client_id: String,
    /// The API identifier, e.g. [`my_account_audience`].
    pub audience: String,
    /// Scopes for that API.
    pub scopes: Vec<String>,
    /// Don't try to open a browser for the device-flow fallback.
    pub no_browser: bool,
    /// Print the device code as a JSON line (also when stdout is not a terminal).
    pub json: bool,
}

/// How an [`AudienceToken`] was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudienceTokenSource {
    /// The session's refresh token (MRRT); no user interaction.
    RefreshToken,
    /// A device-flow login for that audience.
    DeviceFlow,
}

/// An access token for another audience. Never stored; `Debug` hides the token.
#[derive(Clone)]
pub struct AudienceToken {
    token: Secret,
    source: AudienceTokenSource,
    scope: Option<String>,
}

impl AudienceToken {
    /// The raw token, for the `authorization` header. Never print it.
    pub fn expose_secret(&self) -> &str {
        self.token.expose()
    }

    /// How it was obtained.
    pub fn source(&self) -> AudienceTokenSource {
        self.source
    }

    /// The granted scopes, when the provider said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

impl std::fmt::Debug for AudienceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceToken")
            .field("source", &self.source)
            .field("scope", &self.scope)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why the refresh-token path gave no token.
enum RefreshMiss {
    /// No session for this issuer and client, or no refresh token in it.
    NoRefreshToken,
    /// The provider refused (OAuth error); the device flow may still work.
    Refused(String),
}

impl Auth {
    /// The stored session, without network calls (`Ok(None)`: not logged in).
    pub fn load_session(&self) -> Result<Option<Session>, AuthError> {
        session::load(&self.session_path)
    }

    /// An access token for `req.audience`: the session's refresh token first, then a
    /// device-flow login for that audience (Ctrl-C or `cancel` stops it). The session file
    /// keeps its own access token; only a rotated refresh token is written back.
    /// Provider outages are errors, not reasons to fall back.
    pub async fn token_for_audience<C>(
        &self,
        req: &AudienceRequest,
        cancel: C,
    ) -> Result<AudienceToken, AuthError>
    where
        C: Future<Output = ()>,
    {
        if req.client_id.trim().is_empty() {
            return Err(AuthError::Config("the CLI client id is empty".into()));
        }
        if req.audience.trim().is_empty() {
            return Err(AuthError::Config("the audience is empty".into()));
        }
        let issuer = normalize_issuer(&req.issuer)?;
        let scope = req.scopes.join(" ");
        let why = match self.refresh_for_audience(&issuer, req, &scope).await? {
            Ok(token) => return Ok(token),
            Err(RefreshMiss::NoRefreshToken) => {
                "your session has no refresh token for this issuer".to_owned()
            }
            Err(RefreshMiss::Refused(why)) => why,
        };
        self.console.err_write(&format!(
            "Cannot get a token for {} from your session ({why}).\n\
             Log in once more to allow it:\n",
            req.audience
        ));
        self.device_for_audience(&issuer, req, &scope, cancel).await
    }

    /// An access token for `req.audience` from the session's refresh token (MRRT) only:
    /// `Ok(None)` when there is none or the provider refuses; never a device-flow login.
    pub async fn token_from_session(
        &self,
        req: &AudienceRequest,
    ) -> Result<Option<AudienceToken>, AuthError> {
        let issuer = normalize_issuer(&req.issuer)?;
        let scope = req.scopes.join(" ");
        Ok(self.refresh_for_audience(&issuer, req, &scope).await?.ok())
    }

    /// `Ok(Err(miss))`: fall back to the device flow; `Err`: stop.
    async fn refresh_for_audience(
        &self,
        issuer: &str,
        req: &AudienceRequest,
        scope: &str,
    ) -> Result<Result<AudienceToken, RefreshMiss>, AuthError> {
        let usable = |s: &Session| {
            s.refresh_token.is_some() && s.issuer == issuer && s.client_id == req.client_id
        };
        if !self.load_session()?.is_some_and(|s| usable(&s)) {
            return Ok(Err(RefreshMiss::NoRefreshToken));
        }
        // Under the lock: a rotating provider must not see the same refresh token twice.
        let _lock = session::RefreshLock::acquire(&self.session_path).await?;
        let Some(s) = self.load_session()?.filter(|s| usable(s)) else {
            return Ok(Err(RefreshMiss::NoRefreshToken));
        };
        let Some(rt) = s.refresh_token.clone() else {
            return Ok(Err(RefreshMiss::NoRefreshToken));
        };
        let disc = provider::discover(&self.http, issuer).await?;
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", s.client_id.as_str()),
            ("refresh_token", rt.expose()),
            ("audience", req.audience.as_str()),
            ("scope", scope),
        ];
        let reply = provider::post_form(&self.http, &disc.token_endpoint, &form)
            .await
            .map_err(|e| provider::unavailable("refresh for another audience", &e))?;
        let tokens = match reply {
            Reply::Tokens(t) => t,
            Reply::OAuth {
                status,
                error,
                description,
                ..
            } if status < 500 && error != "temporarily_unavailable" => {
                let desc = description.unwrap_or_default();
                return Ok(Err(RefreshMiss::Refused(if desc.is_empty() {
                    error
                } else {
                    format!("{error}: {desc}")
                })));
            }
            Reply::OAuth { status, error, .. } => {
                return Err(AuthError::Unavailable(format!(
                    "refresh failed: {error} (HTTP {status})"
                )));
            }
            Reply::Other { status } if status >= 500 || status == 429 => {
                return Err(AuthError::Unavailable(format!(
                    "refresh failed: HTTP {status}"
                )));
            }
            Reply::Other { status } => {
                return Ok(Err(RefreshMiss::Refused(format!("HTTP {status}"))));
            }
        };
        // A rotated refresh token replaces the spent one, whatever the answer is for.
        if let Some(new_rt) = &tokens.refresh_token
            && new_rt != &rt
        {
            let mut next = s.clone();
            next.refresh_token = Some(new_rt.clone());
            session::save(&self.session_path, &next)?;
        }
        provider::check_token_type(&tokens)?;
        if let Err(why) = answers_for(&tokens, &req.audience, &req.scopes) {
            return Ok(Err(RefreshMiss::Refused(why)));
        }
        Ok(Ok(AudienceToken {
            token: tokens.access_token,
            source: AudienceTokenSource::RefreshToken,
            scope: tokens.scope,
        }))
    }

    async fn device_for_audience<C>(
        &self,
        issuer: &str,
        req: &AudienceRequest,
        scope: &str,
        cancel: C,
    ) -> Result<AudienceToken, AuthError>
    where
        C: Future<Output = ()>,
    {
        let disc = provider::discover(&self.http, issuer).await?;
        // `openid` for an ID token that says who approved.
        let scope = format!("openid {scope}");
        let tokens = self
            .device_flow(
                &disc,
                &req.client_id,
                scope.trim(),
                &req.audience,
                (req.json, req.no_browser),
                cancel,
            )
            .await?;
        // Whoever approved must be the session's user: the account gets linked to them.
        if let Some(id_token) = &tokens.id_token {
            let claims =
                provider::validate_id_token(&self.http, &disc, id_token, &req.client_id).await?;
            if let Some(s) = self.load_session()?.filter(|s| s.issuer == disc.issuer)
                && s.sub != claims.sub
            {
                return Err(AuthError::WrongUser(format!(
                    "the login was approved as `{}`, but you are logged in as `{}`; approve it \
                     as `{}` (or run `defenseclawctl auth login` as `{}` first)",
                    claims.sub, s.sub, s.sub, claims.sub
                )));
            }
        }
        Ok(AudienceToken {
            token: tokens.access_token,
            source: AudienceTokenSource::DeviceFlow,
            scope: tokens.scope,
        })
    }
}

/// Whether a refresh answer is for `audience`. Auth0 ignores an audience outside the
/// client's refresh-token policies and answers for the original API, with 200: the granted
/// `scope` then holds none of the requested scopes (or, without `scope`, a JWT's `aud` names
/// another API).
fn answers_for(tokens: &TokenResponse, audience: &str, requested: &[String]) -> Result<(), String> {
    let other = || {
        format!(
            "the provider answered with a token for another API: no Multi-Resource Refresh \
             Token policy for {audience}?"
        )
    };
    if let Some(granted) = tokens.scope.as_deref() {
        let granted: Vec<&str> = granted.split_whitespace().collect();
        if !requested.is_empty() && !requested.iter().any(|r| granted.contains(&r.as_str())) {
            return Err(other());
        }
        return Ok(());
    }
    match jwt_audiences(tokens.access_token.expose()) {
        Some(auds) if !auds.iter().any(|a| a == audience) => Err(other()),
        _ => Ok(()),
    }
}

/// The `aud` of an access token that is a JWT (read, not verified: only to choose a path).
fn jwt_audiences(token: &str) -> Option<Vec<String>> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("aud")? {
        serde_json::Value::String(a) => Some(vec![a.clone()]),
        serde_json::Value::Array(v) => Some(
            v.iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn my_account_audience_keeps_one_slash() {
        assert_eq!(
            my_account_audience("https://t.auth0.com/"),
            "https://t.auth0.com/me/"
        );
        assert_eq!(
            my_account_audience("http://127.0.0.1:4000"),
            "http://127.0.0.1:4000/me/"
        );
    }

    fn tokens(access_token: &str, scope: Option<&str>) -> TokenResponse {
        TokenResponse {
            access_token: Secret::new(access_token),
            token_type: Some("Bearer".into()),
            expires_in: Some(60),
            refresh_token: None,
            id_token: None,
            scope: scope.map(str::to_owned),
        }
    }

    fn jwt(claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"RS256"}"#),
            b64(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_token_for_the_original_api_is_not_taken_for_the_requested_one() {
        let me = "https://t.auth0.com/me/";
        let want: Vec<String> = CONNECTED_ACCOUNTS_SCOPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let ok = tokens(
            "opaque",
            Some("create:me:connected_accounts read:me:connected_accounts"),
        );
        assert!(answers_for(&ok, me, &want).is_ok());
        let other = tokens("opaque", Some("openid profile read:status"));
        assert!(answers_for(&other, me, &want).is_err());
        let aud_me = tokens(&jwt(&serde_json::json!({ "aud": [me, "x"] })), None);
        assert!(answers_for(&aud_me, me, &want).is_ok());
        let aud_api = tokens(&jwt(&serde_json::json!({ "aud": "https://api" })), None);
        assert!(answers_for(&aud_api, me, &want).is_err());
        assert!(answers_for(&tokens("opaque", None), me, &want).is_ok());
    }

    #[test]
    fn debug_hides_the_token() {
        let t = AudienceToken {
            token: Secret::new("eyJ.secret.sig"),
            source: AudienceTokenSource::DeviceFlow,
            scope: Some("create:me:connected_accounts".into()),
        };
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("DeviceFlow"), "{dbg}");
    }
}
