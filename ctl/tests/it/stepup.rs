//! The CLI on a change that needs a human: JSON lines, exit codes per outcome,
//! and a CLI killed while waiting (the decision still lands).

use std::process::Stdio;
use std::time::Duration;

use defenseclaw_testkit::idp::{CibaSelector, IdentityProvider, IdpOptions};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use defenseclaw_testkit::daemon::TestDaemon;

use crate::cli::Bounded;

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_approval_from_the_cli() {
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)");
    let d = TestDaemon::start_oidc(
        &idp,
        &[
            ("DEFENSECLAW_STEPUP__ENABLED", "true"),
            ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
            ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
        ],
    )
    .await
    .unwrap();
    let token = idp
        .sign_token(
            json!({}),
            json!({"sub": "auth0|operator1", "scope": "openid skills:write", "email": "operator1@example.com",
                   "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 3600}),
        )
        .await
        .unwrap();
    let ctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"));
        cmd.arg("--socket")
            .arg(&d.socket)
            .args(args)
            .env("DEFENSECLAW_TOKEN", &token)
            .stdin(Stdio::null());
        cmd
    };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    std::fs::write(
        &report,
        r#"{"scanner": "t", "target": {"kind": "skill", "name": "risky"}, "findings": [{"rule_id": "R", "severity": "HIGH", "title": "t"}]}"#,
    )
    .unwrap();
    assert!(
        ctl(&["scan", "report", "--file", report.to_str().unwrap()])
            .status()
            .bounded()
            .await
            .unwrap()
            .success()
    );

    // Waiting: first line is the request, last line the outcome; exit 0 on approval.
    let mut child = ctl(&["-o", "json", "skill", "block", "risky"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    for key in ["request_id", "binding_message", "approver", "expires_at"] {
        assert!(first.get(key).is_some(), "{key} missing: {first}");
    }
    let show = ctl(&["-o", "json", "skill", "show", "risky"])
        .output()
        .bounded()
        .await
        .unwrap();
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show["pending"]["request_id"], first["request_id"]);
    wait_sent(&idp, &first).await;
    idp.approve_ciba(&CibaSelector::BindingMessage(
        first["binding_message"].as_str().unwrap().into(),
    ))
    .await
    .unwrap();
    let last: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    assert_eq!(last["outcome"], "approved");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(0)
    );

    // Denied: exit 10.
    let mut child = ctl(&["-o", "json", "skill", "unblock", "risky"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    wait_sent(&idp, &first).await;
    idp.deny_ciba(&CibaSelector::BindingMessage(
        first["binding_message"].as_str().unwrap().into(),
    ))
    .await
    .unwrap();
    let last: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    assert_eq!(last["outcome"], "denied");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(10)
    );

    // The CLI killed while waiting: the daemon still owns the request and the decision lands.
    let mut child = ctl(&["-o", "json", "skill", "allow", "risky"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value =
        serde_json::from_str(&lines.next_line().bounded().await.unwrap().unwrap()).unwrap();
    child.kill().await.unwrap();
    wait_sent(&idp, &first).await;
    idp.approve_ciba(&CibaSelector::BindingMessage(
        first["binding_message"].as_str().unwrap().into(),
    ))
    .await
    .unwrap();
    let id = first["request_id"].as_str().unwrap().to_owned();
    let watched = ctl(&["-o", "json", "approvals", "watch", &id])
        .output()
        .bounded()
        .await
        .unwrap();
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let show = ctl(&["-o", "json", "skill", "show", "risky"])
        .output()
        .bounded()
        .await
        .unwrap();
    let show: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show["state"], "allowed");

    // --no-wait returns at once; cancel ends it (exit 13 when watched).
    let out = ctl(&["-o", "json", "skill", "block", "risky", "--no-wait"])
        .output()
        .bounded()
        .await
        .unwrap();
    assert!(out.status.success());
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = first["request_id"].as_str().unwrap().to_owned();
    let list = ctl(&["-o", "json", "approvals", "list", "--pending"])
        .output()
        .bounded()
        .await
        .unwrap();
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["request_id"] == id.as_str())
    );
    assert!(
        ctl(&["approvals", "cancel", &id])
            .status()
            .bounded()
            .await
            .unwrap()
            .success()
    );
    let watched = ctl(&["approvals", "watch", &id])
        .output()
        .bounded()
        .await
        .unwrap();
    assert_eq!(watched.status.code(), Some(13));
}

/// Waits until the provider holds the request the CLI printed (the daemon
/// answers the CLI before it sends the request).
async fn wait_sent(idp: &IdentityProvider, first: &Value) {
    let message = first["binding_message"].as_str().unwrap().to_owned();
    idp.wait_for_ciba(Duration::from_secs(60), |p| {
        p.binding_message.as_deref() == Some(message.as_str())
    })
    .await
    .unwrap();
}
