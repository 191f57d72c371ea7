//! The `connections connect` flow: its five steps in order, and what it prints.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use defenseclaw_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::loopback::{Listener, html_escape, page};
use super::my_account::{ConnectReply, MyAccount};
use crate::auth::{
    AudienceRequest, Auth, AuthError, CONNECTED_ACCOUNTS_SCOPES, Console, Secret,
    my_account_audience,
};
use crate::cli::{ConnectArgs, Output};
use crate::client;
use crate::exit::{self, Failure};

/// The ticket's lifetime when the provider gives none (Auth0: 300 s).
const DEFAULT_TICKET_TTL: u64 = 300;
/// Never wait longer than this, whatever the provider says.
const MAX_TICKET_TTL: u64 = 3600;

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
    /// When the link was made (RFC 3339).
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
        crate::auth::bearer_token_if_configured()
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
pub(super) fn check_connection_name(name: &str) -> Result<(), Failure> {
    defenseclaw_common::names::connection_name("the connection name", name)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))
}

/// Issuer and CLI client id from the daemon's `[auth]` settings (`auth login` does the same).
pub(super) async fn issuer_from_daemon(socket: &Path) -> Result<(String, String), Failure> {
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
}
