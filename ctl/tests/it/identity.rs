//! The operator story end to end against the real local identity provider: a
//! new user configures the daemon's issuer, logs in with the device flow,
//! approves, blocks a skill, and finds their `sub` and email on the audit entry.

use std::process::Stdio;
use std::time::Duration;

use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use defenseclaw_testkit::daemon::TestDaemon;

use crate::cli::Bounded;

#[tokio::test(flavor = "multi_thread")]
async fn login_approve_block_and_see_the_operator_on_the_audit_entry() {
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)");
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", idp.issuer()),
        ("DEFENSECLAW_AUTH__AUDIENCE", idp.audience()),
        ("DEFENSECLAW_AUTH__CLI_CLIENT_ID", idp.cli_client_id()),
        ("DEFENSECLAW_AUTH__ROLES__VIEWER", "read:status"),
        ("DEFENSECLAW_AUTH__ROLES__OPERATOR", "skills:write"),
    ])
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let session = home.path().join(".defenseclaw/session.json");
    let ctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"));
        cmd.arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env("HOME", home.path())
            .env_remove("DEFENSECLAW_SESSION")
            .env_remove("DEFENSECLAW_TOKEN")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    };

    // Before login a mutation is refused with the "log in again" code.
    let refused = ctl(&["skill", "block", "evil-skill"])
        .output()
        .bounded()
        .await
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Log in: the first JSON line carries the code; the provider's admin endpoint approves it.
    let mut login = ctl(&["-o", "json", "auth", "login", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stdout.take().unwrap()).lines();
    let first: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    for key in [
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
    ] {
        assert!(
            first.get(key).is_some(),
            "login's first line lacks {key}: {first}"
        );
    }
    idp.approve_device(first["user_code"].as_str().unwrap(), "auth0|operator1")
        .await
        .unwrap();
    let last: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), login.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(last["logged_in"], true, "{last}");
    assert_eq!(last["sub"], "auth0|operator1");
    assert_eq!(last["email"], "operator1@example.com");
    assert_eq!(last["issuer"], idp.issuer());

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&session).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(&session).unwrap();

    // Block with the session: the audit entry names the verified operator.
    let blocked = ctl(&[
        "-o",
        "json",
        "skill",
        "block",
        "evil-skill",
        "--reason",
        "exfiltrates ~/.aws",
    ])
    .output()
    .bounded()
    .await
    .unwrap();
    assert!(
        blocked.status.success(),
        "{}",
        String::from_utf8_lossy(&blocked.stderr)
    );
    let audit = ctl(&[
        "-o",
        "json",
        "audit",
        "list",
        "--target",
        "skill/evil-skill",
    ])
    .output()
    .bounded()
    .await
    .unwrap();
    let entries: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let entry = &entries[0];
    assert_eq!(entry["action"], "block");
    assert_eq!(entry["actor"]["id"], "auth0|operator1");
    assert_eq!(entry["actor"]["email"], "operator1@example.com");
    assert_eq!(entry["actor"]["auth_method"], "oidc");
    assert_eq!(entry["actor"]["issuer"], idp.issuer());

    // No token material in the audit log or the daemon's database.
    let access: Value = serde_json::from_str(&stored).unwrap();
    let token = access["access_token"].as_str().unwrap();
    let export = ctl(&["audit", "export"]).output().bounded().await.unwrap();
    assert!(!String::from_utf8_lossy(&export.stdout).contains(token));
    let db = std::fs::read(d.db_path()).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(token));

    // auth status and logout.
    let st = ctl(&["-o", "json", "auth", "status"])
        .output()
        .bounded()
        .await
        .unwrap();
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["sub"], "auth0|operator1");
    let out = ctl(&["auth", "logout"]).output().bounded().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!session.exists());
}
