//! `defenseclawctl openclaw setup`: the JSON report against the real gateway
//! (dry run, setup, a second run that changes nothing, status `.openclaw.gate`)
//! and the clear refusal when the daemon has no gateway connection.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::Ctl;
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::openclaw::OpenClawGateway;

/// The gate plugin shipped in `deploy/openclaw-plugin`.
fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/openclaw-plugin")
}

fn changed(report: &Value) -> usize {
    report["changes"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["changed"] == true).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_reports_each_setting_and_status_shows_the_gate() {
    let gw = OpenClawGateway::start_with(json!({}))
        .await
        .expect("starting the real OpenClaw gateway");
    let url = gw.url();
    let dir = plugin_dir().canonicalize().unwrap();
    let dir = dir.display().to_string();
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
        ("DEFENSECLAW_OPENCLAW__URL", &url),
        ("DEFENSECLAW_OPENCLAW__PLUGIN_DIR", &dir),
        ("OPENCLAW_GATEWAY_TOKEN", &gw.token),
    ])
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.ctl(&["-o", "json", "status"]).await.ok().json();
        // The gate object is there from the start (the decision counters);
        // its plugin state once the daemon has read the gateway's plugins.
        if s["openclaw"]["state"] == "connected" && s["openclaw"]["gate"]["plugin"].is_string() {
            assert_eq!(s["openclaw"]["gate"]["plugin"], "missing", "{s}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dry = d
        .ctl(&["-o", "json", "openclaw", "setup", "--dry-run"])
        .await
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(changed(&dry), 6, "{dry}");
    let paths = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "plugins.load.paths")
        .cloned()
        .unwrap();
    assert_eq!(paths["before"], Value::Null);
    assert_eq!(paths["after"], json!([dir]));

    let first = d
        .ctl(&["-o", "json", "openclaw", "setup"])
        .await
        .ok()
        .json();
    assert_eq!(first["plugin"], "active", "{first}");
    assert_eq!(changed(&first), 6, "{first}");
    let second = d
        .ctl(&["-o", "json", "openclaw", "setup"])
        .await
        .ok()
        .json();
    assert_eq!(changed(&second), 0, "{second}");

    let s = d.ctl(&["-o", "json", "status"]).await.ok().json();
    let g = &s["openclaw"]["gate"];
    assert_eq!(g["plugin"], "active", "{s}");
    assert_eq!(g["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        g["exec_policy"],
        "security=allowlist ask=on-miss askFallback=deny"
    );
    let table = d.ctl(&["openclaw", "setup"]).await.ok();
    assert!(
        table.stdout.contains("setup changed 0 setting(s)"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_without_a_gateway_connection_fails_clearly_and_writes_nothing() {
    let d = TestDaemon::start().await.unwrap();
    let run = d.ctl(&["-o", "json", "openclaw", "setup"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("not connected to the OpenClaw gateway"),
        "{}",
        run.stderr
    );
    let audit = d.ctl(&["-o", "json", "audit", "list"]).await.ok().json();
    assert!(!audit.to_string().contains("openclaw-setup"), "{audit}");
}

/// The CLI with an operator's bearer token (OIDC mode).
async fn ctl_as(d: &TestDaemon, token: &str, args: &[&str]) -> crate::cli::Run {
    use crate::cli::Bounded;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .env("DEFENSECLAW_TOKEN", token)
        .env("HOME", d.dir.path())
        .kill_on_drop(true)
        .output()
        .bounded()
        .await
        .unwrap()
        .into()
}

/// The audit actions about `mcp/github-mcp`, newest first.
async fn actions(d: &TestDaemon, token: &str) -> Vec<String> {
    let audit = ctl_as(
        d,
        token,
        &[
            "-o",
            "json",
            "audit",
            "list",
            "--limit",
            "0",
            "--target",
            "mcp/github-mcp",
        ],
    )
    .await
    .ok()
    .json();
    audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until the audit log has `action` about `mcp/github-mcp`
/// (the daemon audits a rewrite after the gateway took it).
async fn audited(d: &TestDaemon, token: &str, action: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = actions(d, token).await;
        if seen.iter().any(|a| a == action) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {action} entry: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the gateway's config until `pred` holds for `mcp.servers` (bounded).
async fn servers_until(
    gw: &defenseclaw_testkit::openclaw::GatewayClient,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let cfg = gw.request("config.get", json!({})).await.unwrap();
        let servers = cfg["parsed"]["mcp"]["servers"].clone();
        if pred(&servers) {
            return servers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: mcp.servers is {servers}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Token Vault servers wired automatically: with setup in effect, an MCP
/// server allowed with a connection is started by OpenClaw through
/// `defenseclawctl mcp exec`; `--undo` and a revoke give it its own command
/// back (and only it: another server is never touched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_token_vault_server_is_wired_and_a_revoke_puts_it_back() {
    use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
    use defenseclaw_testkit::openclaw::GatewayClient;

    const OPERATOR: &str = "auth0|operator1";
    let original = json!({"command": "/bin/sh", "args": ["-c", "exit 0"]});
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)");
    let gw = OpenClawGateway::start_with(json!({"mcp": {"servers": {
        "github-mcp": original,
        "plain-mcp": {"command": "/bin/true"},
    }}}))
    .await
    .expect("starting the real OpenClaw gateway");
    let url = gw.url();
    let dir = plugin_dir().canonicalize().unwrap().display().to_string();
    let ctl_path = env!("CARGO_BIN_EXE_defenseclawctl");
    let d = TestDaemon::start_oidc(
        &idp,
        &[
            ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
            ("DEFENSECLAW_OPENCLAW__URL", &url),
            ("DEFENSECLAW_OPENCLAW__PLUGIN_DIR", &dir),
            ("DEFENSECLAW_OPENCLAW__CTL_PATH", ctl_path),
            ("DEFENSECLAW_OPENCLAW__SCAN_SKILLS", "false"),
            ("DEFENSECLAW_OPENCLAW__WATCH_SKILL_DIRS", "false"),
            ("OPENCLAW_GATEWAY_TOKEN", &gw.token),
        ],
    )
    .await
    .unwrap();
    let token = idp
        .sign_token(
            json!({}),
            json!({"sub": OPERATOR, "aud": idp.audience(), "scope": "openid skills:write",
                   "email": "operator1@example.com", "name": "Operator One",
                   "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 3600}),
        )
        .await
        .unwrap();
    let operator = GatewayClient::connect(&url, Some(&gw.token), &[])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = ctl_as(&d, &token, &["-o", "json", "status"]).await.json();
        if s["openclaw"]["state"] == "connected" && s["openclaw"]["gate"]["plugin"].is_string() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let socket = d.socket.display().to_string();
    let wired = json!({"command": ctl_path, "args": [
        "--socket", socket, "mcp", "exec", "github-mcp", "--", "/bin/sh", "-c", "exit 0"]});
    let is_wired = |s: &Value| {
        s["github-mcp"]["command"] == wired["command"] && s["github-mcp"]["args"] == wired["args"]
    };
    let is_original = |s: &Value| {
        s["github-mcp"]["command"] == original["command"]
            && s["github-mcp"]["args"] == original["args"]
    };

    // Allowed with a connection before setup: nothing is rewritten yet.
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    ctl_as(
        &d,
        &token,
        &[
            "mcp",
            "allow",
            "github-mcp",
            "--connection",
            "github",
            "--scopes",
            "repo",
            "--reason",
            "issue triage",
        ],
    )
    .await
    .ok();
    let first = ctl_as(&d, &token, &["-o", "json", "openclaw", "setup"])
        .await
        .ok()
        .json();
    assert_eq!(first["plugin"], "active", "{first}");
    let servers = servers_until(&operator, "github-mcp wired after setup", is_wired).await;
    assert_eq!(servers["plain-mcp"], json!({"command": "/bin/true"}));
    audited(&d, &token, "openclaw-mcp-wrapped").await;

    // Undo: the server's own command is back when undo returns.
    let undone = ctl_as(&d, &token, &["-o", "json", "openclaw", "setup", "--undo"])
        .await
        .ok()
        .json();
    assert!(
        undone["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "mcp.servers.github-mcp.args" && c["changed"] == true),
        "{undone}"
    );
    servers_until(&operator, "github-mcp restored by undo", is_original).await;

    // Set up again: wired again. A revoke puts the original back.
    ctl_as(&d, &token, &["openclaw", "setup"]).await.ok();
    servers_until(&operator, "github-mcp wired again", is_wired).await;
    ctl_as(
        &d,
        &token,
        &[
            "connections",
            "revoke",
            "github-mcp",
            "github",
            "--reason",
            "done",
        ],
    )
    .await
    .ok();
    let servers = servers_until(&operator, "github-mcp restored by the revoke", is_original).await;
    assert_eq!(servers["plain-mcp"], json!({"command": "/bin/true"}));
    audited(&d, &token, "openclaw-mcp-unwrapped").await;
    operator.close().await;
}
