//! The people whose accounts are linked: someone logged in WITHOUT the
//! operator role lists and revokes the grants that use their own credential
//! (`connections list|revoke --mine`), audited as themselves, and can neither
//! see nor revoke anyone else's — not even learn that it exists. And the
//! page for it (`connections ui`) in a real headless Chromium: it lists the
//! grant, Revoke revokes it, and requests without the one-time token or with a
//! wrong CSRF token are refused.

use std::time::Duration;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::idp::{CibaSelector, IdentityProvider, IdpOptions};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::browser::Browser;
use crate::cli::{Bounded, Run};

/// Upper bound for readiness waits (never a timing assertion).
const WAIT: Duration = Duration::from_secs(60);
const ALICE: &str = "auth0|operator2";
const OPERATOR: &str = "auth0|operator1";

async fn token(idp: &IdentityProvider, sub: &str, scope: &str) -> String {
    idp.sign_token(
        json!({}),
        json!({"sub": sub, "aud": idp.audience(), "scope": scope,
               "email": format!("{}@example.com", sub.trim_start_matches("auth0|")),
               "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 3600}),
    )
    .await
    .unwrap()
}

fn command(d: &TestDaemon, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"));
    c.arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .env_remove("DEFENSECLAW_TOKEN")
        .env("HOME", d.dir.path())
        .kill_on_drop(true);
    if let Some(t) = token {
        c.env("DEFENSECLAW_TOKEN", t);
    }
    c
}

async fn ctl(d: &TestDaemon, token: Option<&str>, args: &[&str]) -> Run {
    Run::from(command(d, token, args).output().bounded().await.unwrap())
}

/// A daemon where `server`'s github grant was approved (over CIBA, unattended)
/// by `approver`, whose sealed credential it keeps.
struct World {
    idp: IdentityProvider,
    d: TestDaemon,
    _keys: tempfile::TempDir,
}

impl World {
    /// The last 20 audit entries, read by an operator.
    async fn recent_audit(&self) -> Value {
        let op = token(&self.idp, OPERATOR, "openid skills:write").await;
        ctl(
            &self.d,
            Some(&op),
            &["-o", "json", "audit", "list", "--limit", "20"],
        )
        .await
        .ok()
        .json()
    }

    async fn start() -> World {
        use std::os::unix::fs::PermissionsExt;
        let idp = IdentityProvider::start(IdpOptions::default())
            .await
            .expect("starting the local identity provider (needs node and npm)");
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("token-vault.key");
        std::fs::write(&key, hex::encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = TestDaemon::start_oidc(
            &idp,
            &[
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator1"),
                ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
                ("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", key.to_str().unwrap()),
            ],
        )
        .await
        .unwrap();
        World {
            idp,
            d,
            _keys: keys,
        }
    }

    /// `approver` (holding the operator role for this) allows `server` with
    /// github and approves it on their phone.
    async fn grant(&self, approver: &str, server: &str) {
        let op = token(&self.idp, approver, "openid skills:write").await;
        let out = ctl(
            &self.d,
            Some(&op),
            &[
                "--no-wait",
                "mcp",
                "allow",
                server,
                "--connection",
                "github",
                "--scopes",
                "repo",
            ],
        )
        .await
        .ok();
        assert!(
            out.stdout.contains("DC-") || out.stderr.contains("DC-"),
            "{}",
            out.stdout
        );
        let pending = defenseclaw_testkit::wait_for("the CIBA request", WAIT, || async {
            self.idp
                .pending_ciba()
                .await
                .ok()
                .and_then(|p| p.into_iter().find(|c| c.sub == approver))
        })
        .await
        .unwrap();
        self.idp
            .approve_ciba(&CibaSelector::AuthReqId(pending.auth_req_id))
            .await
            .unwrap();
        defenseclaw_testkit::wait_for("the unattended grant", WAIT, || async {
            let out = ctl(&self.d, Some(&op), &["-o", "json", "connections", "list"]).await;
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            v["grants"]
                .as_array()?
                .iter()
                .any(|g| g["server"] == server && g["unattended"] == json!(true))
                .then_some(())
        })
        .await
        .unwrap();
    }
}

fn servers(v: &Value) -> Vec<String> {
    v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{}/{}",
                g["server"].as_str().unwrap(),
                g["connection"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_user_sees_and_revokes_only_their_own_grants() {
    let w = World::start().await;
    w.grant(ALICE, "alice-mcp").await;
    w.grant(OPERATOR, "ops-mcp").await;
    let d = &w.d;
    // Alice logs in as herself: no operator role.
    let alice = token(&w.idp, ALICE, "openid profile").await;

    let mine = ctl(
        d,
        Some(&alice),
        &["-o", "json", "connections", "list", "--mine"],
    )
    .await
    .ok()
    .json();
    assert_eq!(servers(&mine), vec!["alice-mcp/github".to_owned()]);
    let theirs = ctl(
        d,
        Some(&token(&w.idp, OPERATOR, "openid").await),
        &["-o", "json", "connections", "list", "--mine"],
    )
    .await
    .ok()
    .json();
    assert_eq!(servers(&theirs), vec!["ops-mcp/github".to_owned()]);

    // The operator path stays closed to her.
    let denied = ctl(
        d,
        Some(&alice),
        &["connections", "revoke", "ops-mcp", "github"],
    )
    .await;
    assert_eq!(denied.code, 77, "{}", denied.stderr);
    assert!(
        denied.stderr.contains("lacks the operator role"),
        "{}",
        denied.stderr
    );

    // Someone else's grant reads exactly like one that does not exist.
    let other = ctl(
        d,
        Some(&alice),
        &["connections", "revoke", "--mine", "ops-mcp", "github"],
    )
    .await;
    let none = ctl(
        d,
        Some(&alice),
        &["connections", "revoke", "--mine", "nope-mcp", "github"],
    )
    .await;
    assert_eq!(other.code, 3, "{}", other.stderr);
    assert_eq!(none.code, 3, "{}", none.stderr);
    assert_eq!(
        other.stderr.replace("ops-mcp", "X"),
        none.stderr.replace("nope-mcp", "X")
    );
    // ... but the attempt is in the audit log for the operators, as her.
    let audit = w.recent_audit().await;
    let probed = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["action"] == "permission-denied"
                && e["target"]["name"] == "ops-mcp"
                && e["details"]["rpc"] == "RevokeMyConnection"
        })
        .unwrap_or_else(|| panic!("no audited refusal: {audit:#}"));
    assert_eq!(probed["actor"]["id"], ALICE, "{probed:#}");
    assert_eq!(probed["outcome"], "refused", "{probed:#}");
    // Without a login at all: refused, naming the login.
    let anon = ctl(d, None, &["connections", "list", "--mine"]).await;
    assert_eq!(anon.code, 5, "{}", anon.stderr);
    assert!(anon.stderr.contains("log in"), "{}", anon.stderr);

    // Her own: revoked at once, audited as her, and the refresh token of hers
    // the daemon held is revoked at the provider too.
    let hers = d
        .stored_refresh_token("alice-mcp", "github", &[7u8; 32])
        .unwrap();
    assert!(w.idp.honours_refresh_token(&hers).await.unwrap());
    let done = ctl(
        d,
        Some(&alice),
        &[
            "-o",
            "json",
            "connections",
            "revoke",
            "--mine",
            "alice-mcp",
            "github",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(done["status"], "revoked");
    assert_eq!(done["at_provider"]["outcome"], "revoked", "{done:#}");
    assert!(
        !w.idp.honours_refresh_token(&hers).await.unwrap(),
        "still live at the provider"
    );
    let audit = w.recent_audit().await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"] == done["audit_seq"])
        .unwrap_or_else(|| panic!("{audit:#}"));
    assert_eq!(entry["action"], "connection-revoke");
    assert_eq!(entry["actor"]["id"], ALICE);
    assert_eq!(entry["actor"]["auth_method"], "oidc");
    let op = token(&w.idp, OPERATOR, "openid skills:write").await;
    let all = ctl(d, Some(&op), &["-o", "json", "connections", "list"])
        .await
        .ok()
        .json();
    let status = |server: &str| {
        all["grants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["server"] == server)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("alice-mcp"), "revoked");
    assert_eq!(status("ops-mcp"), "active");

    // The inventory says who approved it over step-up, and whose credential it holds.
    let doc = ctl(d, Some(&op), &["connections", "export"])
        .await
        .ok()
        .json();
    let g = doc["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["server"] == "alice-mcp")
        .unwrap();
    assert_eq!(g["approval"]["method"], "step-up");
    assert_eq!(g["approval"]["human_confirmed"], true);
    assert!(
        g["approval"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("DC-"),
        "{g:#}"
    );
    assert_eq!(g["approval"]["approved_by"], ALICE);
    assert_eq!(g["subjects"], json!([ALICE]));
    assert_eq!(
        g["history"].as_array().unwrap().last().unwrap()["actor"]["id"],
        ALICE
    );

    // Broken by the provider and repaired: both in the operator's grant's history.
    w.idp
        .link_account(OPERATOR, "github", "repo")
        .await
        .unwrap();
    let exec = ["mcp", "exec", "ops-mcp", "--", "true"];
    ctl(d, Some(&op), &exec).await.ok();
    w.idp.break_account(OPERATOR, "github").await.unwrap();
    let failed = ctl(d, Some(&op), &exec).await;
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    w.idp
        .link_account(OPERATOR, "github", "repo")
        .await
        .unwrap();
    ctl(d, Some(&op), &exec).await.ok();
    let out = ctl(d, Some(&op), &["connections", "export"]).await.ok();
    let doc = out.json();
    let g = doc["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["server"] == "ops-mcp")
        .unwrap();
    let seen: Vec<(&str, &str)> = g["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("connection-grant", "active"),
            ("token-exchange", "broken"),
            ("token-exchange", "active"),
        ],
        "{g:#}"
    );
    assert_eq!(g["use_count"], 2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ibom.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let verified = ctl(
        d,
        Some(&op),
        &["connections", "export", "--verify", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_lists_the_grant_and_its_revoke_button_revokes_it_in_a_real_browser() {
    let mut browser = Browser::start().await;
    let w = World::start().await;
    w.grant(ALICE, "alice-mcp").await;
    w.grant(OPERATOR, "ops-mcp").await;
    let d = &w.d;
    let alice = token(&w.idp, ALICE, "openid profile").await;

    let mut ui = command(d, Some(&alice), &["connections", "ui", "--no-browser"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(ui.stdout.take().unwrap()).lines();
    let url = lines.next_line().bounded().await.unwrap().unwrap();
    let base = url.split("/?").next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{url}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Without the token, or with a wrong one: refused.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{base}/?token={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The browser opens the link: it lists her grant, not the operator's.
    browser.open(&url, &format!("{base}/")).await;
    let text = browser.text().await;
    assert!(text.contains("alice-mcp"), "{text}");
    assert!(text.contains("repo"), "{text}");
    assert!(!text.contains("ops-mcp"), "{text}");
    let csp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(csp.status(), 403, "a request without the session cookie");
    assert!(
        csp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    // The link was for one use.
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 403);

    // With the browser's own session cookie but a wrong CSRF token: refused,
    // and the grant stays active.
    let cookies = browser.cookies(&format!("{base}/")).await;
    let cookie = cookies
        .iter()
        .find(|c| c["name"] == "dc_ui")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(cookie["httpOnly"], true);
    let session = format!("dc_ui={}", cookie["value"].as_str().unwrap());
    let host = base.trim_start_matches("http://").to_owned();
    for (csrf, origin) in [
        ("wrong", None),
        ("", None),
        ("wrong", Some("http://evil.example")),
    ] {
        let mut req = http
            .post(format!("{base}/revoke"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&server=alice-mcp&connection=github"));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "csrf {csrf:?} origin {origin:?}");
    }
    // The right form, posted from another host name (DNS rebinding): refused.
    let r = http
        .post(format!("{base}/revoke"))
        .header(
            "host",
            format!("rebind.example:{}", host.rsplit(':').next().unwrap()),
        )
        .header("cookie", &session)
        .body("csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A body over the bound: refused before it is read.
    let r = http
        .post(format!("{base}/revoke"))
        .header("cookie", &session)
        .body("x".repeat(64 * 1024))
        .send()
        .await;
    assert!(r.map(|r| r.status() == 400).unwrap_or(true));
    let op = token(&w.idp, OPERATOR, "openid skills:write").await;
    let status = |all: &Value, server: &str| {
        all["grants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["server"] == server)
            .unwrap()["status"]
            .clone()
    };
    let all = ctl(d, Some(&op), &["-o", "json", "connections", "list"])
        .await
        .ok()
        .json();
    assert_eq!(status(&all, "alice-mcp"), "active");

    // The Revoke button: the daemon confirms at once.
    let clicked = browser
        .eval(
            "(() => { const b = document.querySelector('form[data-grant=\"alice-mcp/github\"] button'); \
             if (!b) return false; b.click(); return true; })()",
        )
        .await;
    assert_eq!(
        clicked,
        json!(true),
        "no Revoke button for alice-mcp/github"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = browser.text().await;
        if text.contains("Revoked alice-mcp") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no revoked notice (DevTools on port {}): {text}",
            browser.port()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = ctl(d, Some(&op), &["-o", "json", "connections", "list"])
        .await
        .ok()
        .json();
    assert_eq!(status(&all, "alice-mcp"), "revoked");
    assert_eq!(status(&all, "ops-mcp"), "active");

    // Ctrl-C ends it, cleanly.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(ui.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = ui.wait().bounded().await.unwrap();
    assert!(status.success(), "{status:?}");
}
