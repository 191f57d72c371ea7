//! `connections connect`: Auth0 Connected Accounts from the CLI.
//!
//! 1. A My Account API token (`<issuer>me/`), in memory only: the session's refresh token
//!    (MRRT), else a device-flow login for that audience ([`Auth::token_for_audience`]).
//! 2. `POST <issuer>me/v1/connected-accounts/connect` with `state` and a PKCE challenge; the
//!    redirect goes to a loopback listener on `127.0.0.1` with an OS-chosen port.
//! 3. The browser opens `connect_uri?ticket=…`; the provider sends it back to
//!    `/callback?connect_code=…&state=…` (or with them in the fragment: a tiny page re-sends
//!    the fragment as a query). A wrong `state` is refused and waiting goes on.
//! 4. `POST …/connected-accounts/complete` with the code and the PKCE verifier.
//! 5. `RecordConnectedAccount` tells the daemon (connection and account id only). An
//!    unreachable daemon or one without that RPC is a warning: the account is linked anyway.
//!
//! Tokens, the verifier, the code and `auth_session` are [`Secret`]s: never printed, and
//! scrubbed from anything the provider echoes back into an error.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use defenseclaw_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{
    AudienceRequest, AudienceToken, Auth, AuthError, CONNECTED_ACCOUNTS_SCOPES, Console, Secret,
    my_account_audience,
};
use crate::cli::{ConnectArgs, Output};
use crate::client;
use crate::exit::{self, Failure};

/// The ticket's lifetime when the provider gives none (Auth0: 300 s).
const DEFAULT_TICKET_TTL: u64 = 300;
/// Never wait longer than this, whatever the provider says.
const MAX_TICKET_TTL: u64 = 3600;
/// How long one browser connection may take to send its request head.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head the listener reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The redirect path on the loopback listener.
const CALLBACK_PATH: &str = "/callback";

/// What to link, and how to show it.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The Auth0 connection name (e.g. `github`).
    pub connection: String,
    /// Provider scopes to request (empty: the connection's defaults).
    pub scopes: Vec<String>,
    /// Don't try to open a browser.
    pub no_browser: bool,
    /// JSON lines on stdout (also when stdout is not a terminal).
    pub json: bool,
}

/// A linked account, as the My Account API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedAccount {
    /// The connected account id (`cac_…`).
    pub id: String,
    /// The connection name.
    pub connection: String,
    /// `offline` when the provider gave a refresh token.
    #[serde(default)]
    pub access_type: Option<String>,
    /// Scopes the provider granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: Option<String>,
    /// RFC 3339, when the link expires.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// What the daemon said about the new link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonRecord {
    /// Recorded and audited.
    Recorded {
        /// The audit entry.
        audit_seq: u64,
    },
    /// Not recorded (daemon unreachable, or it lacks the RPC): why.
    Skipped(String),
}

/// The outcome of [`link_account`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The account at the provider.
    pub account: ConnectedAccount,
    /// Whether the daemon recorded it.
    pub daemon: DaemonRecord,
}

/// `connections connect CONNECTION [--scopes …] [--no-browser]`.
pub async fn connect(socket: &Path, args: ConnectArgs, output: Output) -> Result<(), Failure> {
    if output == Output::Sarif {
        return Err(Failure::new(
            exit::USAGE,
            "-o sarif is only for scan commands",
        ));
    }
    let auth = Auth::from_env()?;
    let opts = ConnectOptions {
        connection: args.connection,
        scopes: args
            .scopes
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        no_browser: args.no_browser,
        json: output == Output::Json,
    };
    let bearer = client::Bearer::new(
        crate::bearer_token()
            .await?
            .as_ref()
            .map(|t| t.expose_secret()),
    )?;
    link_account(socket, bearer, &auth, &opts, crate::auth::ctrl_c())
        .await
        .map(|_| ())
}

/// Links the operator's account for `opts.connection` and reports it to the daemon at
/// `socket` (with `bearer`); prints through `auth`'s console. `cancel` (Ctrl-C) stops
/// waiting for the login or the browser.
pub async fn link_account<C>(
    socket: &Path,
    bearer: client::Bearer,
    auth: &Auth,
    opts: &ConnectOptions,
    cancel: C,
) -> Result<Linked, Failure>
where
    C: Future<Output = ()>,
{
    check_connection_name(&opts.connection)?;
    tokio::pin!(cancel);
    let console = auth.console();
    let json = opts.json || !console.stdout_is_tty();

    // 1. Where to log in, and a My Account token.
    let (issuer, client_id) = match auth.load_session()? {
        Some(s) if !s.client_id.is_empty() => (s.issuer, s.client_id),
        _ => issuer_from_daemon(socket).await?,
    };
    let audience = my_account_audience(&issuer);
    let token = auth
        .token_for_audience(
            &AudienceRequest {
                issuer: issuer.clone(),
                client_id,
                audience: audience.clone(),
                scopes: CONNECTED_ACCOUNTS_SCOPES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                no_browser: opts.no_browser,
                json,
            },
            &mut cancel,
        )
        .await?;
    let api = MyAccount {
        http: auth.http(),
        base: format!("{audience}v1/connected-accounts/"),
        token: &token,
    };

    // 2. The loopback listener and the connect call.
    let mut listener = Listener::bind().await?;
    let redirect_uri = listener.redirect_uri();
    let state = random_secret()?;
    let verifier = random_secret()?;
    let mut body = json!({
        "connection": opts.connection,
        "redirect_uri": redirect_uri,
        "state": state.expose(),
        "code_challenge": code_challenge(&verifier),
        "code_challenge_method": "S256",
    });
    if !opts.scopes.is_empty() {
        body["scopes"] = json!(opts.scopes);
    }
    let scrub = [state.expose(), verifier.expose()];
    let started: ConnectReply = api.post("connect", &body, &opts.connection, &scrub).await?;
    if started.connect_params.ticket.is_empty() {
        return Err(AuthError::Provider("the connect answer has an empty ticket".into()).into());
    }
    let connect_url = connect_url(&started.connect_uri, &started.connect_params.ticket)?;
    let ttl = started
        .expires_in
        .unwrap_or(DEFAULT_TICKET_TTL)
        .clamp(1, MAX_TICKET_TTL);
    let deadline = Instant::now() + Duration::from_secs(ttl);

    // 3. The browser.
    show_connect_url(
        console,
        &connect_url,
        &redirect_uri,
        &opts.connection,
        ttl,
        json,
        opts.no_browser,
        listener.port,
    );
    let (code, browser) = listener
        .wait(&state, &opts.connection, deadline, &mut cancel, console)
        .await?;

    // 4. Complete.
    let scrub = [
        state.expose(),
        verifier.expose(),
        code.expose(),
        started.auth_session.expose(),
    ];
    let completed: Result<ConnectedAccount, Failure> = api
        .post(
            "complete",
            &json!({
                "auth_session": started.auth_session.expose(),
                "connect_code": code.expose(),
                "redirect_uri": redirect_uri,
                "code_verifier": verifier.expose(),
            }),
            &opts.connection,
            &scrub,
        )
        .await
        .and_then(|a: ConnectedAccount| {
            if a.id.is_empty() || a.connection != opts.connection {
                Err(AuthError::Provider(format!(
                    "the complete answer names connection `{}` and account `{}` \
                     (expected `{}` and an id)",
                    a.connection, a.id, opts.connection
                ))
                .into())
            } else {
                Ok(a)
            }
        });
    match &completed {
        Ok(_) => {
            browser
                .answer(
                    200,
                    &page(
                        "Account linked",
                        &format!(
                            "Your {} account is linked. You can close this tab and return to \
                             the terminal.",
                            html_escape(&opts.connection)
                        ),
                    ),
                )
                .await;
        }
        Err(_) => {
            browser
                .answer(
                    502,
                    &page(
                        "Linking failed",
                        "The account could not be linked. The terminal says why; you can \
                         close this tab.",
                    ),
                )
                .await;
        }
    }
    let account = completed?;

    // 5. Tell the daemon.
    let daemon = record(socket, bearer, &account).await?;
    print_result(console, &account, &daemon, json);
    Ok(Linked { account, daemon })
}

/// Refuses a connection name the daemon would refuse, before any browser opens:
/// the shared alphabet ([`defenseclaw_common::names::connection_name`]).
fn check_connection_name(name: &str) -> Result<(), Failure> {
    defenseclaw_common::names::connection_name("the connection name", name)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))
}

/// Issuer and CLI client id from the daemon's `[auth]` settings (`auth login` does the same).
async fn issuer_from_daemon(socket: &Path) -> Result<(String, String), Failure> {
    let mut c = client::connect(socket).await.map_err(|f| {
        Failure::new(
            f.code,
            format!(
                "not logged in, and the daemon cannot say which identity provider to use: {}\n\
                 Log in first with `defenseclawctl auth login --issuer … --client-id …`.",
                f.message
            ),
        )
    })?;
    let cfg = c
        .get_auth_config(pb::GetAuthConfigRequest {})
        .await?
        .into_inner();
    if cfg.issuer.is_empty() || cfg.cli_client_id.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            "not logged in, and the daemon has no [auth] issuer and cli_client_id configured; \
             log in first with `defenseclawctl auth login --issuer … --client-id …`",
        ));
    }
    Ok((cfg.issuer, cfg.cli_client_id))
}

/// 32 random bytes from the OS, base64url without padding (`state`, PKCE verifier).
fn random_secret() -> Result<Secret, Failure> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("the system random number generator failed: {e}"),
        )
    })?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
fn code_challenge(verifier: &Secret) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.expose().as_bytes()))
}

/// `connect_uri?ticket=…` (keeping any query `connect_uri` already has).
fn connect_url(connect_uri: &str, ticket: &str) -> Result<String, Failure> {
    let mut url = crate::auth::check_url(connect_uri, "connect_uri")
        .map_err(|e| AuthError::Provider(e.to_string()))?;
    url.query_pairs_mut().append_pair("ticket", ticket);
    Ok(url.into())
}

/// Equal-time comparison, so a wrong `state` can't be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[allow(clippy::too_many_arguments)]
fn show_connect_url(
    console: &Console,
    connect_url: &str,
    redirect_uri: &str,
    connection: &str,
    ttl: u64,
    json: bool,
    no_browser: bool,
    port: u16,
) {
    if json {
        console.out_line(
            &json!({
                "connect_url": connect_url,
                "redirect_uri": redirect_uri,
                "connection": connection,
                "expires_in": ttl,
            })
            .to_string(),
        );
    }
    let mut text = format!(
        "To link your {connection} account, open this URL in a browser on this machine:\n  \
         {connect_url}\n"
    );
    let display = crate::auth::has_display();
    if !no_browser && display && crate::auth::open_browser(connect_url) {
        text.push_str("Opened your browser.\n");
    } else if !display {
        text.push_str(&format!(
            "The browser comes back to {redirect_uri}; over SSH, forward that port first \
             (ssh -L {port}:127.0.0.1:{port} …).\n"
        ));
    }
    text.push_str(&format!(
        "Waiting for the browser (up to {}:{:02}; Ctrl-C to cancel)…\n",
        ttl / 60,
        ttl % 60
    ));
    console.err_write(&text);
}

fn print_result(console: &Console, account: &ConnectedAccount, daemon: &DaemonRecord, json: bool) {
    if let DaemonRecord::Skipped(why) = daemon {
        console.err_write(&format!(
            "Warning: the account is linked at the identity provider, but defenseclawd did not \
             record it ({why}).\n"
        ));
    }
    if json {
        let mut v = json!({
            "connection": account.connection,
            "account_id": account.id,
            "access_type": account.access_type,
            "scopes": account.scopes,
            "created_at": account.created_at,
            "expires_at": account.expires_at,
            "recorded": matches!(daemon, DaemonRecord::Recorded { .. }),
        });
        if let DaemonRecord::Recorded { audit_seq } = daemon {
            v["audit_seq"] = json!(audit_seq);
        }
        console.out_line(&v.to_string());
        return;
    }
    let scopes = if account.scopes.is_empty() {
        "the connection's defaults".to_owned()
    } else {
        account.scopes.join(" ")
    };
    let mut text = format!(
        "Linked your {} account (id {}; scopes: {scopes}).",
        account.connection, account.id
    );
    if let DaemonRecord::Recorded { audit_seq } = daemon {
        text.push_str(&format!(
            "\nRecorded by defenseclawd (audit entry #{audit_seq})."
        ));
    }
    console.out_line(&text);
}

/// Reports the link to the daemon. Unreachable or UNIMPLEMENTED: a warning, not a failure.
async fn record(
    socket: &Path,
    bearer: client::Bearer,
    account: &ConnectedAccount,
) -> Result<DaemonRecord, Failure> {
    let linked = |f: Failure| {
        Failure::new(
            f.code,
            format!(
                "your {} account is linked at the identity provider (id {}), but defenseclawd \
                 refused to record it: {}",
                account.connection, account.id, f.message
            ),
        )
    };
    let mut c = match client::connect_with(socket, bearer).await {
        Ok(c) => c,
        Err(f) if f.code == exit::UNREACHABLE => {
            return Ok(DaemonRecord::Skipped(format!(
                "cannot reach defenseclawd at {}",
                socket.display()
            )));
        }
        Err(f) => return Err(linked(f)),
    };
    let reply = c
        .record_connected_account(pb::RecordConnectedAccountRequest {
            connection: account.connection.clone(),
            account_id: account.id.clone(),
        })
        .await;
    match reply {
        Ok(r) => Ok(DaemonRecord::Recorded {
            audit_seq: r.into_inner().audit_seq,
        }),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(DaemonRecord::Skipped(
            "this defenseclawd does not support recording connected accounts".into(),
        )),
        Err(s) if s.code() == tonic::Code::Unavailable => Ok(DaemonRecord::Skipped(format!(
            "defenseclawd is unavailable: {}",
            s.message()
        ))),
        Err(s) => Err(linked(Failure::from_status(&s))),
    }
}

// ---------------------------------------------------------------------------------------
// The My Account API.

#[derive(Deserialize)]
struct ConnectReply {
    auth_session: Secret,
    connect_uri: String,
    connect_params: ConnectParams,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ConnectParams {
    ticket: String,
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

struct MyAccount<'a> {
    http: &'a reqwest::Client,
    /// `<issuer>me/v1/connected-accounts/`
    base: String,
    token: &'a AudienceToken,
}

impl MyAccount<'_> {
    /// POSTs JSON and decodes the 2xx answer; errors become clear messages with every
    /// value in `scrub` (and the token) removed.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        connection: &str,
        scrub: &[&str],
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(self.token.expose_secret())
            .json(body)
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
            return serde_json::from_slice::<T>(&bytes).map_err(|e| {
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

// ---------------------------------------------------------------------------------------
// The loopback redirect listener.

/// A browser request to `/callback` carrying a code or an error, with its connection
/// kept open for the answer.
struct Hit {
    params: Vec<(String, String)>,
    stream: TcpStream,
}

impl Hit {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The browser connection waiting for the final page.
struct Browser(TcpStream);

impl Browser {
    async fn answer(mut self, status: u16, html: &str) {
        write_response(&mut self.0, status, html).await;
    }
}

struct Listener {
    port: u16,
    hits: mpsc::Receiver<Hit>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Listener {
    async fn bind() -> Result<Self, Failure> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot listen on 127.0.0.1 for the browser's redirect: {e}"),
            )
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Failure::new(exit::FAILURE, format!("loopback listener: {e}")))?
            .port();
        let (tx, hits) = mpsc::channel(8);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        Ok(Self { port, hits, accept })
    }

    fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{CALLBACK_PATH}", self.port)
    }

    /// Waits for `/callback` with the right `state`; answers wrong ones with 400 and
    /// goes on waiting. Returns the code and the browser's open connection.
    async fn wait<C>(
        &mut self,
        state: &Secret,
        connection: &str,
        deadline: Instant,
        cancel: &mut std::pin::Pin<&mut C>,
        console: &Console,
    ) -> Result<(Secret, Browser), Failure>
    where
        C: Future<Output = ()>,
    {
        loop {
            let hit = tokio::select! {
                () = cancel.as_mut() => {
                    return Err(Failure::new(exit::CANCELLED, "cancelled; nothing was linked"));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Failure::new(
                        exit::FAILURE,
                        format!(
                            "the browser did not come back before the link request expired; \
                             nothing was linked. Run `defenseclawctl connections connect \
                             {connection}` again"
                        ),
                    ));
                }
                hit = self.hits.recv() => hit,
            };
            let Some(hit) = hit else {
                return Err(Failure::new(
                    exit::FAILURE,
                    "the loopback listener stopped unexpectedly",
                ));
            };
            let state_ok = hit
                .param("state")
                .is_some_and(|s| constant_time_eq(s.as_bytes(), state.expose().as_bytes()));
            if !state_ok {
                console.err_write(
                    "Warning: refused a redirect with a wrong or missing `state` (not from this \
                     request); still waiting.\n",
                );
                Browser(hit.stream)
                    .answer(
                        400,
                        &page(
                            "Request refused",
                            "This link does not belong to the pending request in the \
                             terminal. Nothing was linked.",
                        ),
                    )
                    .await;
                continue;
            }
            if let Some(error) = hit.param("error") {
                let desc = hit.param("error_description").unwrap_or_default();
                let message = format!(
                    "the provider did not link the account ({error}{}{desc})",
                    if desc.is_empty() { "" } else { ": " }
                );
                let denied = error == "access_denied";
                Browser(hit.stream)
                    .answer(
                        400,
                        &page(
                            "Not linked",
                            "The account was not linked. The terminal says why; you can close \
                             this tab.",
                        ),
                    )
                    .await;
                return Err(if denied {
                    Failure::new(exit::PERMISSION_DENIED, message)
                } else {
                    AuthError::Provider(message).into()
                });
            }
            match hit.param("connect_code").filter(|c| !c.is_empty()) {
                Some(code) => {
                    let code = Secret::new(code);
                    return Ok((code, Browser(hit.stream)));
                }
                None => {
                    Browser(hit.stream)
                        .answer(400, &page("Request refused", "No connect code arrived."))
                        .await;
                    return Err(AuthError::Provider(
                        "the redirect carried an empty connect_code".into(),
                    )
                    .into());
                }
            }
        }
    }
}

/// One browser connection: anything but `GET /callback` with a code or an error is
/// answered here (404, 405, or the page that re-sends the fragment as a query).
async fn serve(mut stream: TcpStream, hits: mpsc::Sender<Hit>) {
    let head = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let Some((method, target)) = request_line(&head) else {
        write_response(&mut stream, 400, &page("Bad request", "Bad request.")).await;
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != CALLBACK_PATH {
        write_response(&mut stream, 404, &page("Not found", "Not found.")).await;
        return;
    }
    if method != "GET" {
        write_response(&mut stream, 405, &page("Not allowed", "Use GET.")).await;
        return;
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let carries = params
        .iter()
        .any(|(k, _)| k == "connect_code" || k == "error");
    if !carries {
        write_response(&mut stream, 200, FRAGMENT_PAGE).await;
        return;
    }
    // If the waiter is gone, the stream drops and the browser sees a closed connection.
    let _ = hits.send(Hit { params, stream }).await;
}

/// Reads up to the end of the request head (`\r\n\r\n`); `None` if it is too long or the
/// connection closes first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
}

/// `(method, target)` of an HTTP/1.x request line.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

async fn write_response(stream: &mut TcpStream, status: u16, html: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Gateway",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\r\n{html}",
        html.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>DefenseClaw: {title}</title>\
         </head><body><h1>{title}</h1><p>{message}</p></body></html>"
    )
}

/// Served for `/callback` without a code in the query: when the provider put `connect_code`
/// and `state` in the fragment, the script sends them again as a query.
const FRAGMENT_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>DefenseClaw</title></head><body><p id=\"m\">Finishing the link…</p>\
<noscript><p>JavaScript is off: copy this page's address into a new tab, replacing \
<code>#</code> with <code>?</code>.</p></noscript>\
<script>(function(){var f=window.location.hash.replace(/^#/,'');\
if(f){window.location.replace('/callback?'+f);}\
else{document.getElementById('m').textContent='No connect code arrived; return to the terminal.';}\
})();</script></body></html>";

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn pkce_challenge_matches_rfc7636_example() {
        // RFC 7636 Appendix B.
        let verifier = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            code_challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_secrets_are_32_bytes_base64url_and_differ() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "<redacted>");
    }

    #[test]
    fn connect_url_appends_the_ticket() {
        assert_eq!(
            connect_url("https://t.auth0.com/connect", "tk 1").unwrap(),
            "https://t.auth0.com/connect?ticket=tk+1"
        );
        assert_eq!(
            connect_url("http://127.0.0.1:9/connected-accounts/connect?x=1", "t").unwrap(),
            "http://127.0.0.1:9/connected-accounts/connect?x=1&ticket=t"
        );
        assert!(connect_url("http://evil.example/connect", "t").is_err());
        assert!(connect_url("javascript:alert(1)", "t").is_err());
    }

    #[test]
    fn connection_names() {
        assert!(check_connection_name("github").is_ok());
        assert!(check_connection_name("google-oauth2").is_ok());
        assert_eq!(check_connection_name("").unwrap_err().code, exit::USAGE);
        assert_eq!(check_connection_name("a b").unwrap_err().code, exit::USAGE);
        assert_eq!(
            check_connection_name(&"x".repeat(129)).unwrap_err().code,
            exit::USAGE
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

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

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line("GET /callback?a=b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/callback?a=b"))
        );
        assert_eq!(request_line("GET http://x/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line("garbage\r\n\r\n"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    async fn get(http: &reqwest::Client, port: u16, rest: &str) -> (u16, String) {
        let r = http
            .get(format!("http://127.0.0.1:{port}{rest}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn listener_refuses_wrong_state_then_takes_the_right_one() {
        let mut listener = Listener::bind().await.unwrap();
        let port = listener.port;
        assert_eq!(
            listener.redirect_uri(),
            format!("http://127.0.0.1:{port}/callback")
        );
        let http = client();
        let secret = random_secret().unwrap();
        let state = secret.expose().to_owned();
        let (console, out) = Console::capture();
        let deadline = Instant::now() + Duration::from_secs(60);
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let waiter = async {
            let (code, browser) = listener
                .wait(&secret, "github", deadline, &mut cancel, &console)
                .await
                .unwrap();
            browser.answer(200, &page("Done", "ok")).await;
            code
        };
        let browser = async {
            // Unrelated requests are answered without disturbing the wait.
            let (status, _) = get(&http, port, "/favicon.ico").await;
            assert_eq!(status, 404);
            // A wrong state is refused.
            let (status, body) = get(&http, port, "/callback?connect_code=evil&state=nope").await;
            assert_eq!(status, 400);
            assert!(body.contains("Nothing was linked"), "{body}");
            // A missing state too.
            let (status, _) = get(&http, port, "/callback?connect_code=evil").await;
            assert_eq!(status, 400);
            // The right one: the answer comes once the waiter replies.
            let url = format!("/callback?connect_code=good%2Bcode&state={state}");
            get(&http, port, &url).await
        };
        let (code, (status, body)) = tokio::join!(waiter, browser);
        assert_eq!(code.expose(), "good+code");
        assert_eq!(status, 200);
        assert!(body.contains("Done"), "{body}");
        assert!(out.stderr().contains("wrong or missing `state`"));
        assert!(!out.stderr().contains(&state));
    }

    #[tokio::test]
    async fn listener_serves_the_fragment_page_and_reports_errors() {
        let mut listener = Listener::bind().await.unwrap();
        let port = listener.port;
        let http = client();
        let (status, body) = get(&http, port, "/callback").await;
        assert_eq!(status, 200);
        assert!(body.contains("location.hash"), "{body}");
        assert!(body.contains("'/callback?'+f"), "{body}");
        let status = http
            .post(format!("http://127.0.0.1:{port}/callback?connect_code=x"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 405);

        let secret = random_secret().unwrap();
        let url = format!(
            "/callback?error=access_denied&error_description=user+said+no&state={}",
            secret.expose()
        );
        let (console, _out) = Console::capture();
        let deadline = Instant::now() + Duration::from_secs(60);
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let (res, (status, _)) = tokio::join!(
            listener.wait(&secret, "github", deadline, &mut cancel, &console),
            get(&http, port, &url)
        );
        let err = res.err().unwrap();
        assert_eq!(status, 400);
        assert_eq!(err.code, exit::PERMISSION_DENIED);
        assert!(err.message.contains("user said no"), "{}", err.message);
    }

    #[tokio::test]
    async fn listener_wait_ends_at_the_deadline_and_on_cancel() {
        let mut listener = Listener::bind().await.unwrap();
        let secret = random_secret().unwrap();
        let (console, _out) = Console::capture();
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let err = listener
            .wait(&secret, "github", Instant::now(), &mut cancel, &console)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, exit::FAILURE);
        assert!(err.message.contains("expired"), "{}", err.message);

        let cancel = std::future::ready(());
        tokio::pin!(cancel);
        let far = Instant::now() + Duration::from_secs(3600);
        let err = listener
            .wait(&secret, "github", far, &mut cancel, &console)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, exit::CANCELLED);
    }
}
