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
