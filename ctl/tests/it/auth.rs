//! `auth` against the real local identity provider (tests/idp, oidc-provider configured
//! like Auth0), through the library API the CLI uses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use defenseclaw_testkit::idp::{FailureMode, IdentityProvider, IdpOptions};
use defenseclawctl::auth::{
    Auth, AuthError, Captured, Console, LoginOptions, SessionStatus, TokenSource, exit_codes,
};
use serde_json::Value;

const OPERATOR: &str = "auth0|operator1";
const WAIT: Duration = Duration::from_secs(30);

async fn start(opts: IdpOptions) -> IdentityProvider {
    match IdentityProvider::start(opts).await {
        Ok(idp) => idp,
        Err(e) => panic!("starting the test identity provider failed: {e:#}"),
    }
}

fn login_opts(idp: &IdentityProvider) -> LoginOptions {
    LoginOptions {
        issuer: idp.issuer().to_owned(),
        audience: idp.audience().to_owned(),
        client_id: idp.cli_client_id().to_owned(),
        scopes: vec!["read:status".into(), "skills:write".into()],
        no_browser: true,
        json: true,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    auth: Auth,
    out: Captured,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("home")
        .join(".defenseclaw")
        .join("session.json");
    let (console, out) = Console::capture();
    let auth = Auth::new(&path, console).unwrap();
    Fixture {
        _dir: dir,
        path,
        auth,
        out,
    }
}

/// Logs in and approves the device code as `sub` from the "browser" side.
async fn login_approved(idp: &IdentityProvider, f: &Fixture, sub: &str) -> SessionStatus {
    let opts = login_opts(idp);
    let (res, approved) = tokio::join!(f.auth.login_until(&opts, std::future::pending()), async {
        let code = idp.wait_for_device_code(WAIT).await?;
        idp.approve_device(&code.user_code, sub).await
    });
    approved.unwrap();
    match res {
        Ok(s) => s,
        Err(e) => panic!("login failed: {e} (idp stderr: {})", idp.stderr_tail()),
    }
}

fn json_lines(out: &Captured) -> Vec<Value> {
    out.stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn jwt_part(token: &str, i: usize) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(i).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn device_polls(log: &[defenseclaw_testkit::idp::RequestLogEntry]) -> Vec<(i64, i64)> {
    log.iter()
        .filter(|r| {
            r.path == "/oauth/token"
                && r.grant_type.as_deref() == Some("urn:ietf:params:oauth:grant-type:device_code")
        })
        .map(|r| (r.at_ms, r.status.as_i64().unwrap_or(-1)))
        .collect()
}

/// Waits (bounded by [`WAIT`]) until the provider has answered a device-code poll with `status`.
async fn first_poll_answered(idp: &IdentityProvider, status: i64) {
    defenseclaw_testkit::wait_for("a device-code poll answered", WAIT, || async move {
        let polls = device_polls(&idp.requests().await.ok()?);
        polls.iter().any(|p| p.1 == status).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn login_approved_writes_a_protected_session_and_prints_json_lines() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    let status = login_approved(&idp, &f, OPERATOR).await;
    assert!(status.logged_in);
    assert_eq!(status.sub.as_deref(), Some(OPERATOR));
    assert_eq!(status.email.as_deref(), Some("operator1@example.com"));
    assert_eq!(status.name.as_deref(), Some("Operator One"));
    assert_eq!(status.issuer.as_deref(), Some(idp.issuer()));
    assert!(
        status.scopes.contains(&"read:status".to_owned()),
        "{status:?}"
    );

    // Exactly two JSON lines: the code before polling, the status at the end.
    let lines = json_lines(&f.out);
    assert_eq!(lines.len(), 2, "{}", f.out.stdout());
    assert_eq!(
        keys(&lines[0]),
        [
            "expires_in",
            "user_code",
            "verification_uri",
            "verification_uri_complete"
        ]
    );
    assert!(
        lines[0]["verification_uri_complete"]
            .as_str()
            .unwrap()
            .contains(lines[0]["user_code"].as_str().unwrap())
    );
    assert_eq!(
        keys(&lines[1]),
        [
            "email",
            "expires_at",
            "issuer",
            "logged_in",
            "name",
            "scopes",
            "sub"
        ]
    );
    assert_eq!(lines[1]["sub"], OPERATOR);
    assert_eq!(lines[1]["logged_in"], true);

    // Session file: 0600 in a 0700 directory, with the documented fields.
    assert_eq!(mode(&f.path), 0o600);
    assert_eq!(mode(f.path.parent().unwrap()), 0o700);
    let file: Value = serde_json::from_slice(&std::fs::read(&f.path).unwrap()).unwrap();
    for k in [
        "access_token",
        "refresh_token",
        "expires_at",
        "issuer",
        "sub",
        "email",
        "name",
    ] {
        assert!(
            file.get(k).is_some_and(|v| !v.is_null()),
            "missing {k}: {file}"
        );
    }
    time::OffsetDateTime::parse(
        file["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    // The access token is an RS256 JWT for the API.
    let at = file["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(at, 0)["alg"], "RS256");
    assert_eq!(jwt_part(at, 1)["aud"], idp.audience());
    assert_eq!(jwt_part(at, 1)["sub"], OPERATOR);

    // The bearer token is the session's, and Debug never shows it; no token in output.
    let bearer = f.auth.bearer_token().await.unwrap().unwrap();
    assert_eq!(bearer.source(), TokenSource::Session);
    assert_eq!(bearer.expose_secret(), at);
    assert!(!format!("{bearer:?}").contains(at));
    assert!(!f.out.stdout().contains(at) && !f.out.stderr().contains(at));
    let rt = file["refresh_token"].as_str().unwrap();
    assert!(!f.out.stdout().contains(rt));

    // Polling stopped at the first success.
    let polls = device_polls(&idp.requests().await.unwrap());
    assert_eq!(polls.last().map(|p| p.1), Some(200), "{polls:?}");
    assert_eq!(polls.iter().filter(|p| p.1 == 200).count(), 1);
    assert!(
        polls.iter().all(|p| p.1 != 429),
        "client polled too fast: {polls:?}"
    );

    // status -o json prints the same shape.
    let (console, out) = Console::capture();
    let again = Auth::new(&f.path, console).unwrap().status(true).unwrap();
    assert_eq!(again, status);
    let line: Value = serde_json::from_str(out.stdout().trim()).unwrap();
    assert_eq!(line, lines[1]);
}

#[tokio::test]
async fn login_denied_ends_with_the_denied_exit_code() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    let opts = login_opts(&idp);
    let (res, denied) = tokio::join!(f.auth.login_until(&opts, std::future::pending()), async {
        let code = idp.wait_for_device_code(WAIT).await?;
        idp.deny_device(&code.user_code).await
    });
    denied.unwrap();
    let err = res.unwrap_err();
    assert!(matches!(err, AuthError::Denied(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit_codes::DENIED);
    assert!(!f.path.exists());
    let polls = device_polls(&idp.requests().await.unwrap());
    assert_eq!(polls.last().map(|p| p.1), Some(403), "{polls:?}");
}

#[tokio::test]
async fn login_expired_ends_with_the_expired_exit_code() {
    let idp = start(IdpOptions {
        device_ttl: 3,
        ..IdpOptions::default()
    })
    .await;
    let f = fixture();
    let err = f
        .auth
        .login_until(&login_opts(&idp), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Expired), "{err:?}");
    assert_eq!(err.exit_code(), exit_codes::EXPIRED);
    assert!(err.to_string().contains("expired"));
    assert!(!f.path.exists());
}

#[tokio::test]
async fn slow_down_adds_five_seconds_to_all_later_polls() {
    let idp = start(IdpOptions::default()).await;
    idp.set_failures(&FailureMode {
        slow_down: Some(1),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let f = fixture();
    let opts = login_opts(&idp);
    let (res, approved) = tokio::join!(f.auth.login_until(&opts, std::future::pending()), async {
        let code = idp.wait_for_device_code(WAIT).await?;
        // Let the first poll receive slow_down, then approve.
        first_poll_answered(&idp, 429).await;
        idp.approve_device(&code.user_code, OPERATOR).await
    });
    approved.unwrap();
    res.unwrap();
    let polls = device_polls(&idp.requests().await.unwrap());
    // The provider enforces the raised interval (1 s + 5 s): another 429 would mean the
    // client ignored slow_down.
    assert_eq!(polls.iter().filter(|p| p.1 == 429).count(), 1, "{polls:?}");
    assert_eq!(polls.last().map(|p| p.1), Some(200), "{polls:?}");
}

#[tokio::test]
async fn server_errors_back_off_and_login_still_succeeds() {
    let idp = start(IdpOptions::default()).await;
    idp.set_failures(&FailureMode {
        error_status: Some(503),
        error_count: Some(2),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let f = fixture();
    let status = login_approved(&idp, &f, OPERATOR).await;
    assert!(status.logged_in);
    let statuses: Vec<i64> = idp
        .requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.path == "/oauth/token")
        .map(|r| r.status.as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(&statuses[..2], &[503, 503], "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200));
}

#[tokio::test]
async fn provider_failing_until_expiry_is_reported_as_unavailable() {
    let idp = start(IdpOptions {
        device_ttl: 4,
        ..IdpOptions::default()
    })
    .await;
    idp.set_failures(&FailureMode {
        drop_connections: Some(false),
        error_status: Some(502),
        error_count: Some(-1),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let f = fixture();
    let err = f
        .auth
        .login_until(&login_opts(&idp), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit_codes::UNAVAILABLE);
    assert!(!f.path.exists());
}

#[tokio::test]
async fn ctrl_c_while_polling_cancels_cleanly() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    // Ctrl-C once the CLI is polling: the provider has answered a poll `authorization_pending` (403, as Auth0).
    let cancel = async {
        let _ = idp.wait_for_device_code(WAIT).await;
        first_poll_answered(&idp, 403).await;
    };
    let err = f
        .auth
        .login_until(&login_opts(&idp), cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Cancelled), "{err:?}");
    assert_eq!(err.exit_code(), exit_codes::CANCELLED);
    assert!(!f.path.exists());
}

#[tokio::test]
async fn issuer_must_match_discovery_exactly() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    let mut opts = login_opts(&idp);
    opts.issuer = idp.issuer().trim_end_matches('/').to_owned();
    let err = f
        .auth
        .login_until(&opts, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Provider(_)), "{err:?}");
    assert!(err.to_string().contains("exactly"), "{err}");
}

#[tokio::test]
async fn session_readable_by_others_is_refused() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    login_approved(&idp, &f, OPERATOR).await;
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = f.auth.current_status().unwrap_err();
    assert_eq!(err.exit_code(), exit_codes::SESSION_FILE);
    let msg = err.to_string();
    assert!(
        msg.contains("0644") && msg.contains("group or others"),
        "{msg}"
    );
    let err = f.auth.bearer_token().await.unwrap_err();
    assert!(matches!(err, AuthError::SessionFile { .. }), "{err:?}");
    let at =
        serde_json::from_slice::<Value>(&std::fs::read(&f.path).unwrap()).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(!msg.contains(&at));
}

#[tokio::test]
async fn corrupted_session_gives_a_clear_error() {
    let f = fixture();
    std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
    std::fs::write(&f.path, b"{\"access_token\": \"abc\", trunc").unwrap();
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = f.auth.current_status().unwrap_err();
    assert_eq!(err.exit_code(), exit_codes::SESSION_FILE);
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert!(!err.to_string().contains("abc"), "{err}");
    // Logging out still removes it.
    let out = f.auth.logout(true).await.unwrap();
    assert!(out.had_session && !out.revoked);
    assert!(!f.path.exists());
}

#[tokio::test]
async fn access_token_is_refreshed_before_expiry() {
    // 30 s tokens are inside the 60 s refresh margin: every bearer_token() refreshes.
    let idp = start(IdpOptions {
        access_token_ttl: 30,
        ..IdpOptions::default()
    })
    .await;
    let f = fixture();
    login_approved(&idp, &f, OPERATOR).await;
    let before: Value = serde_json::from_slice(&std::fs::read(&f.path).unwrap()).unwrap();
    let bearer = f.auth.bearer_token().await.unwrap().unwrap();
    let after: Value = serde_json::from_slice(&std::fs::read(&f.path).unwrap()).unwrap();
    assert_ne!(
        bearer.expose_secret(),
        before["access_token"].as_str().unwrap()
    );
    assert_eq!(
        bearer.expose_secret(),
        after["access_token"].as_str().unwrap()
    );
    assert_eq!(after["sub"], OPERATOR);
    assert_eq!(jwt_part(bearer.expose_secret(), 1)["aud"], idp.audience());
    assert_eq!(mode(&f.path), 0o600);
    let refreshes = idp
        .requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    assert_eq!(refreshes, 1);
}

#[tokio::test]
async fn failed_refresh_says_to_log_in_again() {
    let idp = start(IdpOptions {
        access_token_ttl: 30,
        ..IdpOptions::default()
    })
    .await;
    let f = fixture();
    login_approved(&idp, &f, OPERATOR).await;
    // Revoke the refresh token behind the CLI's back.
    let file: Value = serde_json::from_slice(&std::fs::read(&f.path).unwrap()).unwrap();
    let resp = reqwest::Client::new()
        .post(idp.url("oauth/revoke"))
        .form(&[
            ("client_id", idp.cli_client_id()),
            ("token", file["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let err = f.auth.bearer_token().await.unwrap_err();
    assert!(matches!(err, AuthError::LoginAgain(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit_codes::UNAUTHENTICATED);
    assert!(err.to_string().contains("log"), "{err}");
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_and_deletes_the_file() {
    let idp = start(IdpOptions::default()).await;
    let f = fixture();
    login_approved(&idp, &f, OPERATOR).await;
    let file: Value = serde_json::from_slice(&std::fs::read(&f.path).unwrap()).unwrap();
    let rt = file["refresh_token"].as_str().unwrap().to_owned();
    let out = f.auth.logout(false).await.unwrap();
    assert!(out.had_session && out.revoked, "{out:?}");
    assert!(!f.path.exists());
    // The refresh token no longer works.
    let resp = reqwest::Client::new()
        .post(idp.url("oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", idp.cli_client_id()),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(f.auth.bearer_token().await.unwrap().is_none());
    assert!(!f.auth.current_status().unwrap().logged_in);
}

#[tokio::test]
async fn logout_offline_still_deletes_and_says_revocation_failed() {
    let mut idp = start(IdpOptions::default()).await;
    let f = fixture();
    login_approved(&idp, &f, OPERATOR).await;
    idp.stop().await.unwrap();
    let out = f.auth.logout(false).await.unwrap();
    assert!(out.had_session && !out.revoked, "{out:?}");
    assert!(out.revocation_error.is_some());
    assert!(!f.path.exists());
    assert!(
        f.out.stderr().contains("could not be revoked"),
        "{}",
        f.out.stderr()
    );
}

#[tokio::test]
async fn defenseclaw_token_overrides_the_session() {
    let f = fixture();
    assert!(f.auth.bearer_token().await.unwrap().is_none());
    let auth = f.auth.clone().with_env_token(Some("ci-token-value".into()));
    let bearer = auth.bearer_token().await.unwrap().unwrap();
    assert_eq!(bearer.source(), TokenSource::Env);
    assert_eq!(bearer.expose_secret(), "ci-token-value");
    assert!(!format!("{bearer:?}").contains("ci-token-value"));

    // Also with a session present, the variable wins.
    let idp = start(IdpOptions::default()).await;
    login_approved(&idp, &f, OPERATOR).await;
    let bearer = auth.bearer_token().await.unwrap().unwrap();
    assert_eq!(bearer.expose_secret(), "ci-token-value");
    let (console, out) = Console::capture();
    let auth = Auth::new(&f.path, console)
        .unwrap()
        .with_env_token(Some("ci-token-value".into()));
    auth.status(false).unwrap();
    assert!(!out.stdout().contains("ci-token-value"));
    assert!(!out.stderr().contains("ci-token-value"));
}

#[tokio::test]
async fn human_login_shows_code_url_and_qr_on_stderr() {
    let idp = start(IdpOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.json");
    let (console, out) = Console::capture_tty();
    let auth = Auth::new(&path, console).unwrap();
    let opts = LoginOptions {
        json: false,
        ..login_opts(&idp)
    };
    let (res, code) = tokio::join!(auth.login_until(&opts, std::future::pending()), async {
        let code = idp.wait_for_device_code(WAIT).await.unwrap();
        idp.approve_device(&code.user_code, OPERATOR).await.unwrap();
        code
    });
    res.unwrap();
    let err = out.stderr();
    assert!(err.contains(&code.user_code), "{err}");
    assert!(err.contains(&format!("{}activate", idp.issuer())), "{err}");
    assert!(err.contains("QR code") && err.contains('█'), "{err}");
    let stdout = out.stdout();
    assert!(
        stdout.starts_with("Logged in as Operator One <operator1@example.com>"),
        "{stdout}"
    );
    assert!(!stdout.trim_start().starts_with('{'));
}

#[tokio::test]
async fn id_tokens_are_validated_before_their_claims_are_trusted() {
    use base64::Engine as _;
    use defenseclawctl::auth::verify_id_token;
    use serde_json::json;

    let idp = start(IdpOptions::default()).await;
    let iss = idp.issuer().to_owned();
    let cid = idp.cli_client_id().to_owned();
    let sign = |claims: Value| {
        let idp = &idp;
        async move { idp.sign_token(json!({}), claims).await.unwrap() }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let good = sign(json!({ "aud": cid, "sub": OPERATOR, "email": "e@x", "name": "N" })).await;
    let claims = verify_id_token(&iss, &cid, &good).await.unwrap();
    assert_eq!(claims.sub, OPERATOR);
    assert_eq!(claims.email.as_deref(), Some("e@x"));

    let cases = [
        (
            "wrong aud",
            sign(json!({ "aud": "other-client", "sub": OPERATOR })).await,
        ),
        ("API aud", sign(json!({ "sub": OPERATOR })).await),
        (
            "iss without slash",
            sign(json!({ "aud": cid, "sub": OPERATOR, "iss": iss.trim_end_matches('/') })).await,
        ),
        (
            "expired",
            sign(json!({ "aud": cid, "sub": OPERATOR, "exp": now - 600, "iat": now - 1200 })).await,
        ),
        (
            "no exp",
            sign(json!({ "aud": cid, "sub": OPERATOR, "exp": null })).await,
        ),
        ("no sub", sign(json!({ "aud": cid })).await),
        (
            "unknown kid",
            idp.sign_token(
                json!({ "kid": "other" }),
                json!({ "aud": cid, "sub": OPERATOR }),
            )
            .await
            .unwrap(),
        ),
    ];
    for (what, token) in cases {
        let err = verify_id_token(&iss, &cid, &token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidIdToken(_)),
            "{what}: {err:?}"
        );
        assert_eq!(err.exit_code(), exit_codes::PROVIDER, "{what}");
    }

    // alg=none, and a tampered payload with the original signature.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.encode(
        json!({ "aud": cid, "sub": "auth0|evil", "iss": iss, "exp": now + 300 }).to_string(),
    );
    let none = format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
    let err = verify_id_token(&iss, &cid, &none).await.unwrap_err();
    assert!(
        matches!(err, AuthError::InvalidIdToken(_)),
        "alg none: {err:?}"
    );
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = &payload;
    let tampered = parts.join(".");
    let err = verify_id_token(&iss, &cid, &tampered).await.unwrap_err();
    assert!(matches!(err, AuthError::InvalidIdToken(_)), "{err:?}");
    let err = verify_id_token(&iss, &cid, "garbage").await.unwrap_err();
    assert!(
        matches!(err, AuthError::InvalidIdToken(_)),
        "garbage: {err:?}"
    );
}
