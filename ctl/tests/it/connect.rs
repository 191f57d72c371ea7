//! `connections connect` end to end: the real CLI binary against the local identity provider
//! (My Account API, Connected Accounts, MRRT, device flow) and a real daemon. The tests play
//! the browser with reqwest: GET the connect URL without following the redirect, then GET the
//! Location against the CLI's loopback listener.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions, LinkedAccount};
use defenseclawctl::auth::{Auth, Console, LoginOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use defenseclaw_testkit::daemon::TestDaemon;

use crate::cli::Bounded;

pub(crate) const OPERATOR: &str = "auth0|operator1";
const OTHER: &str = "auth0|operator2";
/// Upper bound for readiness waits (never a timing assertion).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn idp(opts: IdpOptions) -> IdentityProvider {
    match IdentityProvider::start(opts).await {
        Ok(idp) => idp,
        Err(e) => panic!("starting the test identity provider (needs node and npm): {e:#}"),
    }
}

/// A daemon that knows the provider (`mode` is `oidc` or `local`).
async fn daemon(idp: &IdentityProvider, mode: &str) -> TestDaemon {
    TestDaemon::start_with(&[
        ("DEFENSECLAW_AUTH__MODE", mode),
        ("DEFENSECLAW_AUTH__ISSUER", idp.issuer()),
        ("DEFENSECLAW_AUTH__AUDIENCE", idp.audience()),
        ("DEFENSECLAW_AUTH__CLI_CLIENT_ID", idp.cli_client_id()),
        ("DEFENSECLAW_AUTH__ROLES__VIEWER", "read:status"),
        ("DEFENSECLAW_AUTH__ROLES__OPERATOR", "skills:write"),
    ])
    .await
    .unwrap()
}

pub(crate) struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn session_path(&self) -> PathBuf {
        self.dir.path().join(".defenseclaw/session.json")
    }

    fn session(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.session_path()).unwrap()).unwrap()
    }

    /// `auth login` as `sub` with the operator's scopes.
    pub(crate) async fn login(&self, idp: &IdentityProvider, sub: &str) {
        self.login_with(idp, sub, &["read:status", "skills:write"])
            .await;
    }

    /// `auth login` as `sub` (library API, same session file as the binary uses).
    async fn login_with(&self, idp: &IdentityProvider, sub: &str, scopes: &[&str]) {
        let (console, _out) = Console::capture();
        let auth = Auth::new(self.session_path(), console).unwrap();
        let opts = LoginOptions {
            issuer: idp.issuer().to_owned(),
            audience: idp.audience().to_owned(),
            client_id: idp.cli_client_id().to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            no_browser: true,
            json: true,
        };
        let (res, approved) =
            tokio::join!(auth.login_until(&opts, std::future::pending()), async {
                let code = idp.wait_for_device_code(WAIT).await?;
                idp.approve_device(&code.user_code, sub).await
            });
        approved.unwrap();
        if let Err(e) = res {
            panic!("login failed: {e} (idp: {})", idp.stderr_tail());
        }
    }

    /// Runs `defenseclawctl ARGS…` to the end with this HOME.
    pub(crate) async fn ctl(&self, socket: &Path, args: &[&str]) -> Finished {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("DEFENSECLAW_SESSION")
            .env_remove("DEFENSECLAW_TOKEN")
            .env_remove("DEFENSECLAW_SOCKET")
            .stdin(Stdio::null())
            .output()
            .bounded()
            .await
            .unwrap();
        Finished {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `defenseclawctl -o json connections connect ARGS… --no-browser`.
    pub(crate) fn connect(&self, socket: &Path, args: &[&str]) -> Running {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
            .arg("--socket")
            .arg(socket)
            .args(["-o", "json", "connections", "connect", "--no-browser"])
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("DEFENSECLAW_SESSION")
            .env_remove("DEFENSECLAW_TOKEN")
            .env_remove("DEFENSECLAW_SOCKET")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }
}

pub(crate) struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

pub(crate) struct Finished {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    pub(crate) fn last_json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("last line not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }
}

impl Running {
    /// The next stdout line, as JSON.
    async fn next_json(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the CLI printed nothing in time")
            .unwrap();
        let Some(line) = line else {
            let status = self.child.wait().bounded().await.unwrap();
            let stderr = (&mut self.stderr).await.unwrap();
            panic!(
                "the CLI ended ({status}) before printing a line\nstdout: {}\nstderr: {stderr}",
                self.seen.join("\n")
            );
        };
        self.seen.push(line.clone());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The connect line (`connect_url`, `redirect_uri`, `connection`, `expires_in`).
    pub(crate) async fn connect_line(&mut self) -> Value {
        let line = self.next_json().await;
        assert!(line.get("connect_url").is_some(), "{line}");
        line
    }

    /// Waits for the exit; everything printed.
    pub(crate) async fn finish(mut self) -> Finished {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the CLI did not exit in time")
            .unwrap();
        let mut stdout = self.seen.join("\n");
        while let Ok(Some(line)) = self.lines.next_line().bounded().await {
            stdout.push('\n');
            stdout.push_str(&line);
        }
        Finished {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr.await.unwrap(),
        }
    }
}

pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The user consents at the provider: GET the connect URL, which redirects to the CLI.
pub(crate) async fn consent(http: &reqwest::Client, connect_url: &str) -> url::Url {
    let resp = http.get(connect_url).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        302,
        "{}",
        resp.text().await.unwrap()
    );
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    url::Url::parse(&location).unwrap()
}

pub(crate) async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = http.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Tokens (JWTs), 32-byte base64url values (state, PKCE verifier) and known secrets never
/// appear in what the CLI printed.
fn assert_no_secrets(run: &Finished, known: &[&str]) {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        for k in known {
            assert!(!text.contains(k), "{name} shows a secret ({k}): {text}");
        }
        assert!(!text.contains("eyJ"), "{name} shows a JWT: {text}");
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            assert_ne!(
                word.len(),
                43,
                "{name} shows a 32-byte secret ({word}): {text}"
            );
        }
    }
}

pub(crate) async fn linked(idp: &IdentityProvider, sub: &str) -> Vec<LinkedAccount> {
    idp.linked_accounts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.sub == sub)
        .collect()
}

/// The result line names the provider's account, and the daemon recorded it (audited).
fn assert_result(run: &Finished, account: &LinkedAccount) -> u64 {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let result = run.last_json();
    assert_eq!(
        result["connection"],
        account.connection.as_str(),
        "{result}"
    );
    assert_eq!(result["account_id"], account.id.as_str(), "{result}");
    assert!(account.id.starts_with("cac_"), "{account:?}");
    assert_eq!(result["recorded"], true, "{result}\n{}", run.stderr);
    assert!(!run.stderr.contains("did not record it"), "{}", run.stderr);
    result["audit_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no audit_seq in {result}"))
}

/// The daemon's inventory lists the link (connection and account id) for `sub`.
async fn assert_daemon_lists(
    home: &Home,
    d: &TestDaemon,
    account: &LinkedAccount,
    sub: Option<&str>,
) {
    let list = home
        .ctl(&d.socket, &["-o", "json", "connections", "list"])
        .await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let v: Value = serde_json::from_str(&list.stdout).unwrap();
    let accounts = v["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{v}");
    assert_eq!(
        accounts[0]["connection"],
        account.connection.as_str(),
        "{v}"
    );
    assert_eq!(accounts[0]["account_id"], account.id.as_str(), "{v}");
    if let Some(sub) = sub {
        assert_eq!(accounts[0]["sub"], sub, "{v}");
    }
}

fn requests_to(
    log: &[defenseclaw_testkit::idp::RequestLogEntry],
    method: &str,
    path: &str,
) -> usize {
    log.iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn mrrt_links_the_account_without_touching_the_session_or_printing_secrets() {
    let idp = idp(IdpOptions::default()).await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;
    let before = home.session();

    let mut run = home.connect(&d.socket, &["github", "--scopes", "repo read:org"]);
    let line = run.connect_line().await;
    let mut keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["connect_url", "connection", "expires_in", "redirect_uri"],
        "{line}"
    );
    assert_eq!(line["connection"], "github");
    let redirect_uri = line["redirect_uri"].as_str().unwrap();
    let port = redirect_uri
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/callback"))
        .unwrap_or_else(|| panic!("redirect_uri {redirect_uri}"));
    assert!(port.parse::<u16>().unwrap() > 0);
    let connect_url = line["connect_url"].as_str().unwrap();
    assert!(connect_url.starts_with(idp.issuer()), "{connect_url}");
    assert!(connect_url.contains("ticket="), "{connect_url}");

    let http = browser();
    let back = consent(&http, connect_url).await;
    assert!(back.as_str().starts_with(redirect_uri), "{back}");
    let code = param(&back, "connect_code").unwrap();
    let state = param(&back, "state").unwrap();
    assert_eq!(state.len(), 43, "state is 32 random bytes, base64url");
    // An unrelated request doesn't disturb the listener.
    let (status, _) = get(&http, &format!("http://127.0.0.1:{port}/favicon.ico")).await;
    assert_eq!(status, 404);
    let (status, page) = get(&http, back.as_str()).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("close this tab"), "{page}");

    let done = run.finish().await;
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0].connection, "github");
    assert_eq!(accounts[0].scopes, ["repo", "read:org"]);
    let seq = assert_result(&done, &accounts[0]);
    assert_eq!(
        done.last_json()["scopes"],
        serde_json::json!(["repo", "read:org"])
    );
    assert_daemon_lists(&home, &d, &accounts[0], Some(OPERATOR)).await;
    let audit = home.ctl(&d.socket, &["audit", "export"]).await;
    let entry: Value = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["seq"] == seq)
        .unwrap_or_else(|| panic!("no audit entry {seq}: {}", audit.stdout));
    assert_eq!(entry["action"], "account-linked", "{entry}");
    assert_eq!(entry["actor"]["id"], OPERATOR, "{entry}");

    // The token came from the refresh token (MRRT): no device code was asked for, and the
    // session still holds the daemon's token.
    let log = idp.requests().await.unwrap();
    assert!(
        log.iter().any(|r| r.path == "/oauth/token"
            && r.grant_type.as_deref() == Some("refresh_token")
            && r.status.as_i64() == Some(200)),
        "{log:?}"
    );
    assert_eq!(
        requests_to(&log, "POST", "/oauth/device/code"),
        1,
        "only the login's"
    );
    assert_eq!(
        requests_to(&log, "POST", "/me/v1/connected-accounts/complete"),
        1
    );
    let after = home.session();
    assert_eq!(after["access_token"], before["access_token"]);
    assert_eq!(after["sub"], OPERATOR);

    let session_tokens = [
        before["access_token"].as_str().unwrap(),
        before["refresh_token"].as_str().unwrap(),
        after["refresh_token"].as_str().unwrap(),
    ];
    let mut known = session_tokens.to_vec();
    known.extend([code.as_str(), state.as_str()]);
    assert_no_secrets(&done, &known);
    assert_no_secrets(&audit, &known);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_mrrt_a_device_login_for_the_my_account_api_is_used() {
    // Auth0 answers such a refresh for the original API.
    let stderr = device_fallback(IdpOptions {
        mrrt: false,
        ..IdpOptions::default()
    })
    .await;
    assert!(stderr.contains("another API"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_refresh_falls_back_to_a_device_login_too() {
    let stderr = device_fallback(IdpOptions {
        mrrt: false,
        mrrt_off_error: true,
        ..IdpOptions::default()
    })
    .await;
    assert!(stderr.contains("access_denied"), "{stderr}");
}

/// Links `slack` through the device-flow fallback; returns the CLI's stderr.
async fn device_fallback(opts: IdpOptions) -> String {
    let idp = idp(opts).await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;
    let before = home.session();

    let mut run = home.connect(&d.socket, &["slack"]);
    // First the device code, as `auth login -o json` prints it.
    let device = run.next_json().await;
    let user_code = device["user_code"]
        .as_str()
        .unwrap_or_else(|| panic!("{device}"));
    let pending = idp.wait_for_device_code(WAIT).await.unwrap();
    assert_eq!(pending.user_code, user_code);
    assert_eq!(
        pending.audience.as_deref(),
        Some(idp.my_account_audience().as_str())
    );
    let scope = pending.scope.unwrap_or_default();
    assert!(scope.contains("create:me:connected_accounts"), "{scope}");
    idp.approve_device(user_code, OPERATOR).await.unwrap();

    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, page) = get(&http, back.as_str()).await;
    assert_eq!(status, 200, "{page}");
    let done = run.finish().await;
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(accounts[0].connection, "slack");
    assert_result(&done, &accounts[0]);
    assert_daemon_lists(&home, &d, &accounts[0], Some(OPERATOR)).await;
    assert!(done.stderr.contains("Log in once more"), "{}", done.stderr);

    // The refresh was tried first and answered for the daemon's API, which was not used.
    let log = idp.requests().await.unwrap();
    assert!(
        log.iter()
            .any(|r| r.path == "/oauth/token" && r.grant_type.as_deref() == Some("refresh_token")),
        "{log:?}"
    );
    let after = home.session();
    assert_eq!(after["sub"], OPERATOR);
    assert_eq!(after["audience"], idp.audience());
    let mut known = vec![before["access_token"].as_str().unwrap()];
    known.extend(after["refresh_token"].as_str());
    known.push(after["access_token"].as_str().unwrap());
    assert_no_secrets(&done, &known);
    done.stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_the_daemon_names_the_provider_and_the_device_flow_logs_in() {
    let idp = idp(IdpOptions::default()).await;
    let d = daemon(&idp, "local").await;
    let home = Home::new();

    let mut run = home.connect(&d.socket, &["github"]);
    let device = run.next_json().await;
    let user_code = device["user_code"]
        .as_str()
        .unwrap_or_else(|| panic!("{device}"));
    idp.approve_device(user_code, OPERATOR).await.unwrap();
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, _) = get(&http, back.as_str()).await;
    assert_eq!(status, 200);
    let done = run.finish().await;
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_result(&done, &accounts[0]);
    assert_daemon_lists(&home, &d, &accounts[0], None).await;
    // The My Account token is not written anywhere.
    assert!(!home.session_path().exists());
    assert_no_secrets(&done, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_in_the_fragment_is_resent_as_a_query_by_the_page() {
    let idp = idp(IdpOptions {
        connect_code_in_fragment: true,
        ..IdpOptions::default()
    })
    .await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;

    let mut run = home.connect(&d.socket, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    assert_eq!(back.query(), None, "{back}");
    let fragment = back.fragment().unwrap().to_owned();
    assert!(fragment.contains("connect_code="), "{back}");

    // The browser loads the page (fragments are not sent) …
    let mut page_url = back.clone();
    page_url.set_fragment(None);
    let (status, page) = get(&http, page_url.as_str()).await;
    assert_eq!(status, 200);
    assert!(page.contains("location.hash"), "{page}");
    assert!(page.contains("location.replace('/callback?'+f)"), "{page}");
    // … and its script sends the fragment again as the query.
    let mut resent = page_url.clone();
    resent.set_query(Some(&fragment));
    let (status, page) = get(&http, resent.as_str()).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("close this tab"), "{page}");

    let done = run.finish().await;
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_result(&done, &accounts[0]);
    assert_daemon_lists(&home, &d, &accounts[0], Some(OPERATOR)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_state_is_refused_and_the_right_one_still_links() {
    let idp = idp(IdpOptions::default()).await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;

    let mut run = home.connect(&d.socket, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let code = param(&back, "connect_code").unwrap();

    // The real code with a forged state, then a forged code without state: both refused.
    let mut forged = back.clone();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("connect_code", &code)
        .append_pair("state", "forged-state");
    let (status, page) = get(&http, forged.as_str()).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("Nothing was linked"), "{page}");
    let mut no_state = back.clone();
    no_state
        .query_pairs_mut()
        .clear()
        .append_pair("connect_code", "x");
    let (status, _) = get(&http, no_state.as_str()).await;
    assert_eq!(status, 400);
    // Nothing was completed for them.
    let log = idp.requests().await.unwrap();
    assert_eq!(
        requests_to(&log, "POST", "/me/v1/connected-accounts/complete"),
        0
    );
    assert!(linked(&idp, OPERATOR).await.is_empty());

    let (status, _) = get(&http, back.as_str()).await;
    assert_eq!(status, 200);
    let done = run.finish().await;
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1);
    assert_result(&done, &accounts[0]);
    assert_daemon_lists(&home, &d, &accounts[0], Some(OPERATOR)).await;
    assert!(
        done.stderr.contains("wrong or missing `state`"),
        "{}",
        done.stderr
    );
    let log = idp.requests().await.unwrap();
    assert_eq!(
        requests_to(&log, "POST", "/me/v1/connected-accounts/complete"),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_explained_and_nothing_is_linked() {
    let idp = idp(IdpOptions {
        mrrt: false,
        ..IdpOptions::default()
    })
    .await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;

    // The user declines at the provider.
    let mut run = home.connect(&d.socket, &["github"]);
    let device = run.next_json().await;
    idp.approve_device(device["user_code"].as_str().unwrap(), OPERATOR)
        .await
        .unwrap();
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(
        &http,
        &format!("{}&consent=deny", line["connect_url"].as_str().unwrap()),
    )
    .await;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    let (status, _) = get(&http, back.as_str()).await;
    assert_eq!(status, 400);
    let done = run.finish().await;
    assert_eq!(done.code, 77, "{}", done.stderr);
    assert!(
        done.stderr.contains("did not link the account"),
        "{}",
        done.stderr
    );

    // A connection the tenant does not offer: the problem JSON becomes the message.
    let mut run = home.connect(&d.socket, &["dropbox"]);
    let device = run.next_json().await;
    idp.approve_device(device["user_code"].as_str().unwrap(), OPERATOR)
        .await
        .unwrap();
    let done = run.finish().await;
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert!(
        done.stderr.contains("not enabled for Connected Accounts"),
        "{}",
        done.stderr
    );
    assert!(!done.stdout.contains("connect_url"), "{}", done.stdout);

    // Someone else approves the device login: refused, the account would be theirs.
    let mut run = home.connect(&d.socket, &["github"]);
    let device = run.next_json().await;
    idp.approve_device(device["user_code"].as_str().unwrap(), OTHER)
        .await
        .unwrap();
    let done = run.finish().await;
    assert_eq!(done.code, 1, "{}", done.stderr);
    assert!(done.stderr.contains("wrong user"), "{}", done.stderr);

    assert!(idp.linked_accounts().await.unwrap().is_empty());
    assert_no_secrets(&done, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_daemon_is_a_warning_because_the_account_is_linked() {
    let idp = idp(IdpOptions::default()).await;
    let home = Home::new();
    home.login(&idp, OPERATOR).await;
    let nowhere = home.dir.path().join("no-daemon.sock");

    let mut run = home.connect(&nowhere, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, _) = get(&http, back.as_str()).await;
    assert_eq!(status, 200);
    let done = run.finish().await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(done.last_json()["recorded"], false);
    assert!(
        done.stderr.contains("cannot reach defenseclawd"),
        "{}",
        done.stderr
    );
    assert_eq!(linked(&idp, OPERATOR).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_refusal_fails_and_says_the_account_is_linked() {
    let idp = idp(IdpOptions::default()).await;
    let d = daemon(&idp, "oidc").await;
    let home = Home::new();
    // A viewer may not record links (the RPC needs the operator role).
    home.login_with(&idp, OPERATOR, &["read:status"]).await;

    let mut run = home.connect(&d.socket, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, _) = get(&http, back.as_str()).await;
    assert_eq!(status, 200);
    let done = run.finish().await;
    assert_eq!(done.code, 77, "{}", done.stderr);
    let accounts = linked(&idp, OPERATOR).await;
    assert_eq!(accounts.len(), 1);
    assert!(
        done.stderr.contains(&format!(
            "linked at the identity provider (id {})",
            accounts[0].id
        )),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("refused to record it"),
        "{}",
        done.stderr
    );
    assert!(!done.stdout.contains("account_id"), "{}", done.stdout);
    assert_no_secrets(&done, &[]);
}

/// The whole story of a new operator: log in, allow a server with a GitHub
/// connection, link the GitHub account, start the server through `mcp exec`
/// and see the provider token arrive in its environment; unlinked at the
/// provider, the next start fails and says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_operator_allows_links_and_starts_a_server() {
    use sha2::Digest;
    let idp = idp(IdpOptions::default()).await;
    let d = TestDaemon::start_oidc(
        &idp,
        &[("DEFENSECLAW_AUTH__CLI_CLIENT_ID", idp.cli_client_id())],
    )
    .await
    .unwrap();
    let home = Home::new();
    home.login(&idp, OPERATOR).await;

    let allowed = home
        .ctl(
            &d.socket,
            &["mcp", "allow", "github-mcp", "--connection", "github"],
        )
        .await;
    // Allowed, but not linked yet: without a terminal it names the command to run.
    assert_eq!(allowed.code, 4, "{}{}", allowed.stdout, allowed.stderr);
    assert!(
        allowed
            .stderr
            .contains("`defenseclawctl connections connect github`"),
        "{}",
        allowed.stderr
    );

    let mut run = home.connect(&d.socket, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, page) = get(&http, back.as_str()).await;
    assert_eq!(status, 200, "{page}");
    let done = run.finish().await;
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);

    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("server.out");
    let script = format!(
        "printf %s \"$GITHUB_TOKEN\" | sha256sum | cut -d' ' -f1 > {}",
        report.display()
    );
    let started = home
        .ctl(
            &d.socket,
            &["mcp", "exec", "github-mcp", "--", "sh", "-c", &script],
        )
        .await;
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    let issued = idp.provider_tokens().await.unwrap();
    let token = &issued.last().unwrap().access_token;
    assert_eq!(
        std::fs::read_to_string(&report).unwrap().trim(),
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    );
    assert!(!started.stdout.contains(token.as_str()) && !started.stderr.contains(token.as_str()));

    idp.unlink_account(OPERATOR, "github").await.unwrap();
    let refused = home
        .ctl(&d.socket, &["mcp", "exec", "github-mcp", "--", "true"])
        .await;
    assert_eq!(refused.code, 4, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("connections connect github"),
        "{}",
        refused.stderr
    );
}
