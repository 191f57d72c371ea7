//! Consent at `mcp allow --connection` without a terminal, `connections unlink` and a
//! suspended grant's exit code, end to end: the real CLI binary,
//! a real daemon and the local identity provider (My Account API, Token Vault).

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::idp::{FailureMode, IdpOptions};
use serde_json::Value;

use crate::connect::{Home, OPERATOR, browser, consent, get, idp, linked};

#[tokio::test(flavor = "multi_thread")]
async fn unlink_deletes_the_account_at_the_provider_and_cuts_every_grant_using_it() {
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
            &[
                "mcp",
                "allow",
                "github-mcp",
                "--connection",
                "github",
                "--scopes",
                "repo",
            ],
        )
        .await;
    // Consent where the operator approves: allowed (the grant is recorded), but nothing is
    // linked yet, and without a terminal the command says exactly what to run.
    assert_eq!(allowed.code, 4, "{}{}", allowed.stdout, allowed.stderr);
    assert!(
        allowed
            .stderr
            .contains("no github account is linked to you at the identity provider; link it with `defenseclawctl connections connect github --scopes \"repo\"`"),
        "{}",
        allowed.stderr
    );
    let listed = home
        .ctl(&d.socket, &["-o", "json", "connections", "list"])
        .await;
    let v: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(v["grants"][0]["status"], "active", "{v}");
    let mut run = home.connect(&d.socket, &["github"]);
    let line = run.connect_line().await;
    let http = browser();
    let back = consent(&http, line["connect_url"].as_str().unwrap()).await;
    let (status, page) = get(&http, back.as_str()).await;
    assert_eq!(status, 200, "{page}");
    let done = run.finish().await;
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);
    let account = linked(&idp, OPERATOR).await.pop().expect("linked");
    // Linked now: the same allow passes the check.
    let again = home
        .ctl(
            &d.socket,
            &["mcp", "allow", "github-mcp", "--connection", "github"],
        )
        .await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let started = home
        .ctl(&d.socket, &["mcp", "exec", "github-mcp", "--", "true"])
        .await;
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);

    // Suspended with nobody to ask (step-up off): its own exit code, and the command to run.
    let suspended = home
        .ctl(
            &d.socket,
            &["connections", "suspend", "github-mcp", "github"],
        )
        .await;
    assert_eq!(
        suspended.code, 0,
        "{}{}",
        suspended.stdout, suspended.stderr
    );
    let refused = home
        .ctl(&d.socket, &["mcp", "exec", "github-mcp", "--", "true"])
        .await;
    assert_eq!(refused.code, 16, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains("defenseclawctl connections resume github-mcp github"),
        "{}",
        refused.stderr
    );
    let resumed = home
        .ctl(
            &d.socket,
            &["connections", "resume", "github-mcp", "github"],
        )
        .await;
    assert_eq!(resumed.code, 0, "{}{}", resumed.stdout, resumed.stderr);

    // The provider fails the DELETE: the grant is cut here all the same, the command fails
    // with the provider's exit code, and the audit entry says what failed where.
    idp.set_failures(&FailureMode {
        error_status: Some(503),
        error_count: Some(-1),
        error_paths: Some(vec![format!(
            "/me/v1/connected-accounts/accounts/{}",
            account.id
        )]),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let failed = home
        .ctl(
            &d.socket,
            &["-o", "json", "connections", "unlink", "github"],
        )
        .await;
    idp.reset_failures().await.unwrap();
    assert_eq!(failed.code, 23, "{}{}", failed.stdout, failed.stderr);
    let result = failed.last_json();
    assert_eq!(result["at_provider"]["outcome"], "failed", "{result}");
    assert_eq!(
        result["grants_unlinked"][0]["server"], "github-mcp",
        "{result}"
    );
    assert!(
        failed
            .stderr
            .contains("not deleted at the identity provider"),
        "{}",
        failed.stderr
    );
    assert_eq!(linked(&idp, OPERATOR).await.len(), 1, "still linked there");

    // Unlink: gone at the provider; the grant stays unlinked, the daemon's record is gone.
    let unlinked = home
        .ctl(
            &d.socket,
            &["-o", "json", "connections", "unlink", "github"],
        )
        .await;
    assert_eq!(unlinked.code, 0, "{}{}", unlinked.stdout, unlinked.stderr);
    assert!(!unlinked.stdout.contains("eyJ") && !unlinked.stderr.contains("eyJ"));
    let result = unlinked.last_json();
    assert_eq!(result["at_provider"]["outcome"], "deleted", "{result}");
    assert_eq!(result["account_id"], account.id.as_str(), "{result}");
    assert_eq!(result["grants_unlinked"], serde_json::json!([]), "{result}");
    assert!(
        linked(&idp, OPERATOR).await.is_empty(),
        "deleted at the provider"
    );

    let list = home
        .ctl(&d.socket, &["-o", "json", "connections", "list"])
        .await;
    let v: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v["grants"][0]["status"], "unlinked", "{v}");
    assert_eq!(v["accounts"], serde_json::json!([]), "{v}");

    // The next start fails and says how to link the account again.
    let refused = home
        .ctl(&d.socket, &["mcp", "exec", "github-mcp", "--", "true"])
        .await;
    assert_eq!(refused.code, 4, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("connections connect github"),
        "{}",
        refused.stderr
    );

    // Audited once, as the operator, with what happened where.
    let audit = home.ctl(&d.socket, &["audit", "export"]).await;
    let entries: Vec<Value> = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["action"] == "connection-unlink")
        .collect();
    assert_eq!(entries.len(), 2, "{}", audit.stdout);
    let (first, second) = (&entries[0], &entries[1]);
    for e in [first, second] {
        assert_eq!(e["actor"]["id"], OPERATOR, "{e}");
        assert_eq!(e["details"]["account_id"], account.id.as_str(), "{e}");
    }
    assert_eq!(first["outcome"], "partial", "{first}");
    assert_eq!(
        first["details"]["at_provider"]["outcome"], "failed",
        "{first}"
    );
    assert_eq!(
        first["details"]["grants_unlinked"][0]["server"], "github-mcp",
        "{first}"
    );
    assert_eq!(
        first["details"]["linked_account_record_removed"], true,
        "{first}"
    );
    assert_eq!(second["outcome"], "success", "{second}");
    assert_eq!(
        second["details"]["at_provider"]["outcome"], "deleted",
        "{second}"
    );

    // Again: nothing is left at the provider, and it says so.
    let again = home
        .ctl(
            &d.socket,
            &["-o", "json", "connections", "unlink", "github"],
        )
        .await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(again.last_json()["at_provider"]["outcome"], "not_found");
    assert_eq!(again.last_json()["grants_unlinked"], serde_json::json!([]));
}
