//! [`Auth`]: one session file and console, and the commands on them (`auth login`,
//! `status`, `logout`, refresh, the bearer token for RPCs).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::error::AuthError;
use super::provider::normalize_issuer;
use super::secret::{BearerToken, Secret, TokenSource};
use super::session::{Session, default_session_path};
use super::ui::Console;
use super::{device, provider, session, ui};

/// Environment variable with a bearer token that replaces the session (CI, services).
pub const TOKEN_ENV: &str = "DEFENSECLAW_TOKEN";
/// OpenID scopes always requested at login.
pub const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// Refresh when the access token expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Settings for [`login`].
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    /// Issuer URL (`https://tenant.auth0.com/`) or a bare Auth0 domain.
    pub issuer: String,
    /// The daemon's API identifier (`audience`).
    pub audience: String,
    /// The CLI's (Native, public) client id.
    pub client_id: String,
    /// API scopes to request in addition to [`OIDC_SCOPES`].
    pub scopes: Vec<String>,
    /// Don't try to open a browser.
    pub no_browser: bool,
    /// Print JSON lines (also when stdout is not a terminal).
    pub json: bool,
}

/// `auth status -o json`, and the last line of `auth login -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionStatus {
    /// Whether a usable session exists.
    pub logged_in: bool,
    /// Subject of the validated ID token.
    pub sub: Option<String>,
    /// Email of the validated ID token.
    pub email: Option<String>,
    /// Name of the validated ID token.
    pub name: Option<String>,
    /// The issuer the session logged in at (tokens are refreshed there).
    pub issuer: Option<String>,
    /// Access token expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// Granted API scopes.
    pub scopes: Vec<String>,
}

impl SessionStatus {
    fn logged_out() -> Self {
        Self {
            logged_in: false,
            sub: None,
            email: None,
            name: None,
            issuer: None,
            expires_at: None,
            scopes: Vec::new(),
        }
    }

    fn from_session(s: &Session) -> Self {
        Self {
            logged_in: true,
            sub: Some(s.sub.clone()),
            email: s.email.clone(),
            name: s.name.clone(),
            issuer: Some(s.issuer.clone()),
            expires_at: Some(s.expires_at.clone()),
            scopes: s.scopes.clone(),
        }
    }

    fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"logged_in\":false}".into())
    }

    fn who(&self) -> String {
        let sub = self.sub.clone().unwrap_or_default();
        match (&self.name, &self.email) {
            (Some(n), Some(e)) => format!("{n} <{e}> ({sub})"),
            (None, Some(e)) => format!("{e} ({sub})"),
            (Some(n), None) => format!("{n} ({sub})"),
            (None, None) => sub,
        }
    }
}

/// What [`logout`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogoutOutcome {
    /// A session file existed (and was deleted).
    pub had_session: bool,
    /// The refresh token was revoked at the provider.
    pub revoked: bool,
    /// Why revocation could not be sent, if it was attempted and failed.
    pub revocation_error: Option<String>,
}

/// The `auth` commands bound to one session file and console.
#[derive(Debug, Clone)]
pub struct Auth {
    pub(super) session_path: PathBuf,
    pub(super) env_token: Option<Secret>,
    pub(super) console: Console,
    pub(super) http: reqwest::Client,
}

impl Auth {
    /// From the environment: `$DEFENSECLAW_SESSION` or `~/.defenseclaw/session.json`,
    /// `$DEFENSECLAW_TOKEN`, and the real terminal.
    pub fn from_env() -> Result<Self, AuthError> {
        let env_token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Secret::new(t.trim()));
        Ok(Self {
            session_path: default_session_path()?,
            env_token,
            console: Console::terminal(),
            http: provider::http_client()?,
        })
    }

    /// An explicit session path and console; no `DEFENSECLAW_TOKEN` (see [`Self::with_env_token`]).
    pub fn new(session_path: impl Into<PathBuf>, console: Console) -> Result<Self, AuthError> {
        Ok(Self {
            session_path: session_path.into(),
            env_token: None,
            console,
            http: provider::http_client()?,
        })
    }

    /// Sets (or clears) the token that overrides the session, as `DEFENSECLAW_TOKEN` does.
    pub fn with_env_token(mut self, token: Option<String>) -> Self {
        self.env_token = token
            .filter(|t| !t.trim().is_empty())
            .map(|t| Secret::new(t.trim()));
        self
    }

    /// The session file.
    pub fn session_path(&self) -> &Path {
        &self.session_path
    }

    /// The HTTP client for provider calls (no redirects, bounded timeouts).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where this `Auth` prints.
    pub(crate) fn console(&self) -> &Console {
        &self.console
    }

    /// Device-flow login; Ctrl-C cancels.
    pub async fn login(&self, opts: &LoginOptions) -> Result<SessionStatus, AuthError> {
        self.login_until(opts, ctrl_c()).await
    }

    /// One device-flow round at the provider's device endpoint: asks for a code, shows it (a
    /// JSON line with `json`, a browser unless `no_browser`), polls until the
    /// user decides, and checks the answer is a Bearer token set.
    pub(crate) async fn device_flow<C>(
        &self,
        disc: &provider::Discovery,
        client_id: &str,
        scope: &str,
        audience: &str,
        (json, no_browser): (bool, bool),
        cancel: C,
    ) -> Result<provider::TokenResponse, AuthError>
    where
        C: Future<Output = ()>,
    {
        let device_endpoint = disc
            .device_authorization_endpoint
            .as_deref()
            .ok_or_else(|| {
                AuthError::Config(format!(
                    "{} has no device_authorization_endpoint: enable the Device Code grant",
                    disc.issuer
                ))
            })?;
        let auth =
            device::request_code(&self.http, device_endpoint, client_id, scope, audience).await?;
        let issued_at = Instant::now();
        let json = json || !self.console.stdout_is_tty();
        self.show_code(&auth, json, no_browser);
        let spinner = ui::Spinner::start(
            &self.console,
            issued_at + Duration::from_secs(auth.expires_in),
        );
        let polled = device::poll(
            &self.http,
            &disc.token_endpoint,
            client_id,
            &auth,
            issued_at,
            cancel,
        )
        .await;
        spinner.stop().await;
        let tokens = polled?;
        provider::check_token_type(&tokens)?;
        Ok(tokens)
    }

    /// Device-flow login that stops with [`AuthError::Cancelled`] when `cancel` completes.
    pub async fn login_until<C>(
        &self,
        opts: &LoginOptions,
        cancel: C,
    ) -> Result<SessionStatus, AuthError>
    where
        C: Future<Output = ()>,
    {
        if opts.client_id.trim().is_empty() {
            return Err(AuthError::Config("the CLI client id is empty".into()));
        }
        let issuer = normalize_issuer(&opts.issuer)?;
        let disc = provider::discover(&self.http, &issuer).await?;
        let mut scopes: Vec<String> = OIDC_SCOPES.iter().map(|s| (*s).to_owned()).collect();
        for s in &opts.scopes {
            for part in s.split_whitespace() {
                if !scopes.iter().any(|x| x == part) {
                    scopes.push(part.to_owned());
                }
            }
        }
        let scope = scopes.join(" ");
        let tokens = self
            .device_flow(
                &disc,
                &opts.client_id,
                &scope,
                &opts.audience,
                (opts.json, opts.no_browser),
                cancel,
            )
            .await?;

        let id_token = tokens.id_token.as_ref().ok_or_else(|| {
            AuthError::Provider("no id_token in the token response (openid not granted?)".into())
        })?;
        let claims =
            provider::validate_id_token(&self.http, &disc, id_token, &opts.client_id).await?;
        let api_scopes = match tokens.scope.as_deref() {
            Some(s) => s
                .split_whitespace()
                .filter(|x| !OIDC_SCOPES.contains(x))
                .map(str::to_owned)
                .collect(),
            None => scopes
                .iter()
                .filter(|x| !OIDC_SCOPES.contains(&x.as_str()))
                .cloned()
                .collect(),
        };
        let session = Session {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: session::expiry_from_now(tokens.expires_in.unwrap_or(3600))?,
            issuer: disc.issuer.clone(),
            sub: claims.sub,
            email: claims.email,
            name: claims.name,
            scopes: api_scopes,
            client_id: opts.client_id.clone(),
            audience: (!opts.audience.is_empty()).then(|| opts.audience.clone()),
        };
        session::save(&self.session_path, &session)?;
        let status = SessionStatus::from_session(&session);
        if opts.json || !self.console.stdout_is_tty() {
            self.console.out_line(&status.to_json_line());
        } else {
            self.console.out_line(&format!(
                "Logged in as {} at {} (access token valid until {}).",
                status.who(),
                session.issuer,
                session.expires_at
            ));
        }
        Ok(status)
    }

    fn show_code(&self, auth: &device::DeviceAuthorization, json: bool, no_browser: bool) {
        if json {
            let line = serde_json::json!({
                "user_code": auth.user_code,
                "verification_uri": auth.verification_uri,
                "verification_uri_complete": auth.verification_uri_complete,
                "expires_in": auth.expires_in,
            });
            self.console.out_line(&line.to_string());
            return;
        }
        let complete = auth
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&auth.verification_uri);
        let mut text = format!(
            "To log in, open {}\nand confirm the code:  {}\n",
            auth.verification_uri, auth.user_code
        );
        if self.console.stderr_is_tty()
            && let Some(qr) = ui::qr_code(complete)
        {
            text.push_str("\nOr scan this QR code with your phone:\n");
            text.push_str(&qr);
            text.push('\n');
        }
        self.console.err_write(&text);
        if !no_browser && ui::has_display() && ui::open_browser(complete) {
            self.console
                .err_write("Opened your browser; check that it shows the same code.\n");
        }
    }

    /// The current session, without network calls.
    pub fn current_status(&self) -> Result<SessionStatus, AuthError> {
        Ok(match session::load(&self.session_path)? {
            Some(s) => {
                let usable = s.refresh_token.is_some() || !s.expires_within(Duration::ZERO);
                if usable {
                    SessionStatus::from_session(&s)
                } else {
                    SessionStatus {
                        logged_in: false,
                        ..SessionStatus::from_session(&s)
                    }
                }
            }
            None => SessionStatus::logged_out(),
        })
    }

    /// `auth status`: prints the session (JSON line or text) and returns it.
    pub fn status(&self, json: bool) -> Result<SessionStatus, AuthError> {
        let status = self.current_status()?;
        if json {
            self.console.out_line(&status.to_json_line());
        } else if status.logged_in {
            self.console.out_line(&format!(
                "Logged in as {}\n  issuer:  {}\n  expires: {}\n  scopes:  {}",
                status.who(),
                status.issuer.clone().unwrap_or_default(),
                status.expires_at.clone().unwrap_or_default(),
                status.scopes.join(" ")
            ));
        } else if status.sub.is_some() {
            self.console.out_line(
                "The session has expired and cannot be refreshed; run `defenseclawctl auth login`.",
            );
        } else {
            self.console
                .out_line("Not logged in; run `defenseclawctl auth login`.");
        }
        if !json && self.env_token.is_some() {
            self.console.err_write(&format!(
                "Note: {TOKEN_ENV} is set; requests use it instead of the session.\n"
            ));
        }
        Ok(status)
    }

    /// `auth logout`: revokes the refresh token at the provider, then deletes the file.
    /// Offline, the file is still deleted and the outcome says revocation failed.
    pub async fn logout(&self, json: bool) -> Result<LogoutOutcome, AuthError> {
        let path = &self.session_path;
        let exists = path.exists();
        let stored = if exists {
            session::load_for_logout(path)
        } else {
            None
        };
        let mut outcome = LogoutOutcome {
            had_session: exists,
            revoked: false,
            revocation_error: None,
        };
        if let Some(s) = &stored
            && let Some(rt) = &s.refresh_token
        {
            match self.revoke(s, rt).await {
                Ok(()) => outcome.revoked = true,
                Err(e) => outcome.revocation_error = Some(e.to_string()),
            }
        }
        session::delete(path)?;
        if json {
            self.console
                .out_line(&serde_json::to_string(&outcome).unwrap_or_else(|_| "{}".into()));
        } else if !exists {
            self.console.out_line("Not logged in; nothing to do.");
        } else if let Some(why) = &outcome.revocation_error {
            self.console
                .out_line("Logged out: the session file is deleted.");
            self.console.err_write(&format!(
                "Warning: the refresh token could not be revoked at the identity provider ({why}); \
                 it stays valid until it expires.\n"
            ));
        } else if outcome.revoked {
            self.console
                .out_line("Logged out: refresh token revoked and session file deleted.");
        } else {
            self.console
                .out_line("Logged out: the session file is deleted.");
        }
        Ok(outcome)
    }

    async fn revoke(&self, s: &Session, rt: &Secret) -> Result<(), AuthError> {
        let disc = provider::discover(&self.http, &s.issuer).await?;
        let endpoint = disc
            .revocation_endpoint
            .ok_or_else(|| AuthError::Provider("the provider has no revocation_endpoint".into()))?;
        let form = [
            ("client_id", s.client_id.as_str()),
            ("token", rt.expose()),
            ("token_type_hint", "refresh_token"),
        ];
        let resp = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| provider::unavailable("revocation", &e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() {
            Err(AuthError::Unavailable(format!(
                "revocation answered {status}"
            )))
        } else {
            Err(AuthError::Provider(format!("revocation answered {status}")))
        }
    }

    /// The bearer token for RPCs: `DEFENSECLAW_TOKEN` first, else the session, refreshed
    /// when it expires within [`REFRESH_MARGIN`]. `Ok(None)`: not logged in.
    pub async fn bearer_token(&self) -> Result<Option<BearerToken>, AuthError> {
        if let Some(t) = &self.env_token {
            return Ok(Some(BearerToken::new(t.clone(), TokenSource::Env)));
        }
        let Some(s) = session::load(&self.session_path)? else {
            return Ok(None);
        };
        if !s.expires_within(REFRESH_MARGIN) {
            return Ok(Some(BearerToken::new(s.access_token, TokenSource::Session)));
        }
        let s = self.refresh_if_needed(false).await?;
        Ok(Some(BearerToken::new(s.access_token, TokenSource::Session)))
    }

    /// Refreshes the access token now (even if not near expiry) and returns the new status.
    pub async fn refresh(&self) -> Result<SessionStatus, AuthError> {
        let s = self.refresh_if_needed(true).await?;
        Ok(SessionStatus::from_session(&s))
    }

    async fn refresh_if_needed(&self, force: bool) -> Result<Session, AuthError> {
        let _lock = session::RefreshLock::acquire(&self.session_path).await?;
        // Re-read under the lock: another process may have refreshed already.
        let s = session::load(&self.session_path)?.ok_or(AuthError::NotLoggedIn)?;
        if !force && !s.expires_within(REFRESH_MARGIN) {
            return Ok(s);
        }
        let expired = s.expires_within(Duration::ZERO);
        let Some(rt) = s.refresh_token.clone() else {
            return if expired {
                Err(AuthError::LoginAgain(
                    "the session has expired and has no refresh token".into(),
                ))
            } else {
                Ok(s)
            };
        };
        // A provider outage must not break commands while the token is still valid.
        let soft = |e: AuthError, s: Session| -> Result<Session, AuthError> {
            if expired {
                Err(match e {
                    AuthError::Unavailable(why) => AuthError::Unavailable(format!(
                        "the access token expired and could not be refreshed: {why}"
                    )),
                    other => other,
                })
            } else {
                Ok(s)
            }
        };
        let disc = match provider::discover(&self.http, &s.issuer).await {
            Ok(d) => d,
            Err(e) => return soft(e, s),
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", s.client_id.as_str()),
            ("refresh_token", rt.expose()),
        ];
        let reply = match provider::post_form(&self.http, &disc.token_endpoint, &form).await {
            Ok(r) => r,
            Err(e) => return soft(provider::unavailable("refresh", &e), s),
        };
        let tokens = match reply {
            provider::Reply::Tokens(t) => t,
            provider::Reply::OAuth {
                status,
                error,
                description,
                ..
            } if status < 500 && error != "temporarily_unavailable" => {
                return Err(AuthError::LoginAgain(format!(
                    "the session could not be refreshed ({error}: {})",
                    description.unwrap_or_default()
                )));
            }
            provider::Reply::OAuth { status, error, .. } => {
                return soft(
                    AuthError::Unavailable(format!("refresh failed: {error} (HTTP {status})")),
                    s,
                );
            }
            provider::Reply::Other { status } => {
                return soft(
                    AuthError::Unavailable(format!("refresh failed: HTTP {status}")),
                    s,
                );
            }
        };
        let mut next = s.clone();
        if let Some(id_token) = &tokens.id_token {
            let claims =
                provider::validate_id_token(&self.http, &disc, id_token, &s.client_id).await?;
            if claims.sub != s.sub {
                return Err(AuthError::LoginAgain(
                    "the refreshed ID token names a different user".into(),
                ));
            }
            next.email = claims.email.or(next.email);
            next.name = claims.name.or(next.name);
        }
        next.access_token = tokens.access_token;
        if let Some(new_rt) = tokens.refresh_token {
            next.refresh_token = Some(new_rt);
        }
        next.expires_at = session::expiry_from_now(tokens.expires_in.unwrap_or(3600))?;
        if let Some(scope) = tokens.scope.as_deref() {
            let api: Vec<String> = scope
                .split_whitespace()
                .filter(|x| !OIDC_SCOPES.contains(x))
                .map(str::to_owned)
                .collect();
            if !api.is_empty() {
                next.scopes = api;
            }
        }
        session::save(&self.session_path, &next)?;
        Ok(next)
    }
}

/// Completes on Ctrl-C (never, if the handler can't be installed).
pub(crate) async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Identity claims of a validated ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityClaims {
    /// Subject (`sub`): the provider's stable id of the user.
    pub sub: String,
    /// Email, if present.
    pub email: Option<String>,
    /// Name, if present.
    pub name: Option<String>,
}

/// Validates an ID token the way `auth login` does: discovery and JWKS of `issuer`, RS256
/// only, `iss` exactly the discovered issuer, `aud` containing `client_id`, `exp` (60 s leeway).
pub async fn verify_id_token(
    issuer: &str,
    client_id: &str,
    id_token: &str,
) -> Result<IdentityClaims, AuthError> {
    let http = provider::http_client()?;
    let disc = provider::discover(&http, issuer).await?;
    let c = provider::validate_id_token(&http, &disc, &Secret::new(id_token), client_id).await?;
    Ok(IdentityClaims {
        sub: c.sub,
        email: c.email,
        name: c.name,
    })
}

/// `auth login` with settings from the environment; prints the code and the result.
pub async fn login(opts: LoginOptions) -> Result<SessionStatus, AuthError> {
    Auth::from_env()?.login(&opts).await
}

/// `auth status`; prints a JSON line (`json`) or text.
pub async fn status(json: bool) -> Result<SessionStatus, AuthError> {
    Auth::from_env()?.status(json)
}

/// `auth logout`; prints the outcome.
pub async fn logout(json: bool) -> Result<LogoutOutcome, AuthError> {
    Auth::from_env()?.logout(json).await
}

/// The bearer token for RPCs (`DEFENSECLAW_TOKEN`, else the refreshed session).
pub async fn bearer_token() -> Result<Option<BearerToken>, AuthError> {
    Auth::from_env()?.bearer_token().await
}

/// The bearer token for RPCs when one is configured: `DEFENSECLAW_TOKEN`, else the
/// session (refreshed when close to expiry). Nothing is loaded when neither exists,
/// so commands stay cheap for local-mode users.
pub async fn bearer_token_if_configured() -> Result<Option<BearerToken>, AuthError> {
    let env_token = std::env::var_os(TOKEN_ENV).is_some_and(|t| !t.is_empty());
    let session_exists = default_session_path().is_ok_and(|p| p.exists());
    if !env_token && !session_exists {
        return Ok(None);
    }
    bearer_token().await
}
