//! Attacks by another local user on the daemon's channels: a listener squatting
//! the gateway's loopback port, a shared socket directory, and trace logs that
//! could print the gateway token.

use std::os::unix::fs::{PermissionsExt, chown};
use std::process::{Command, Stdio};
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::impostor::Impostor;
use defenseclaw_testkit::wait_for;
use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use defenseclaw_testkit::daemon::{TestDaemon, daemon_env};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "gw-token-local-attack-5e1d7b";
const NOBODY: u32 = 65534;

async fn openclaw_status(d: &TestDaemon) -> pb::OpenClawStatus {
    let mut c = d.client().await.unwrap();
    c.get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .openclaw
        .unwrap()
}

async fn gateway_check_is(d: &TestDaemon, want: &str) -> pb::OpenClawStatus {
    let what = format!("gateway_check = {want:?}");
    let result = wait_for(&what, WAIT, || async {
        let s = openclaw_status(d).await;
        (s.gateway_check == want).then_some(s)
    })
    .await;
    match result {
        Ok(s) => s,
        Err(e) => panic!("{e}; status: {:?}", openclaw_status(d).await),
    }
}

fn monitor_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DEFENSECLAW_OPENCLAW__ENABLED", "true".into()),
        ("DEFENSECLAW_OPENCLAW__URL", url.to_owned()),
        ("DEFENSECLAW_OPENCLAW__BACKOFF_INITIAL_MS", "50".into()),
        ("DEFENSECLAW_OPENCLAW__BACKOFF_MAX_SECS", "1".into()),
        ("DEFENSECLAW_OPENCLAW__HANDSHAKE_TIMEOUT_SECS", "5".into()),
        ("OPENCLAW_GATEWAY_TOKEN", TOKEN.into()),
    ]
}

async fn daemon_with(env: &[(&'static str, String)]) -> TestDaemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestDaemon::start_with(&pairs).await.unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_token_is_withheld_from_a_listener_of_another_uid() {
    let squatter = Impostor::tcp(NOBODY).await.expect("impostor listener");
    let url = format!("ws://127.0.0.1:{}/", squatter.port());
    let d = daemon_with(&monitor_env(&url)).await;

    let status = gateway_check_is(&d, "refused: listener uid 65534, expected 0").await;
    assert!(
        status.last_error.contains("gateway token withheld"),
        "{status:?}"
    );
    // It keeps retrying (with backoff) and never writes a byte: no WebSocket
    // handshake, so certainly no token.
    wait_for("two refused connections", WAIT, || async {
        (squatter.closed_connections() >= 2).then_some(())
    })
    .await
    .unwrap();
    let received = squatter.received();
    assert!(
        received.is_empty(),
        "the squatter received {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(!contains(&received, TOKEN.as_bytes()));

    // Recorded once per change of state, not once per attempt.
    let mut c = d.client().await.unwrap();
    let audit = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let refusals: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "openclaw.connection" && e.outcome == "refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{audit:#?}");
    assert!(
        refusals[0]
            .reason
            .contains("listener uid 65534, expected 0"),
        "{:?}",
        refusals[0]
    );
    assert!(!refusals[0].details_json.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_gateway_uid_is_trusted() {
    let gateway = Impostor::tcp(NOBODY).await.expect("listener");
    let url = format!("ws://127.0.0.1:{}/", gateway.port());
    let mut env = monitor_env(&url);
    env.push(("DEFENSECLAW_OPENCLAW__GATEWAY_UID", NOBODY.to_string()));
    let d = daemon_with(&env).await;
    gateway_check_is(&d, "peer-uid 65534").await;
    // The WebSocket handshake starts once the owner matches.
    wait_for("the WebSocket upgrade", WAIT, || async {
        gateway.received().starts_with(b"GET ").then_some(())
    })
    .await
    .unwrap();
}

/// A minimal gateway in this process (root, the daemon's uid): challenge,
/// then returns the `connect` request and the socket, answered with hello-ok.
async fn accept_and_handshake(
    listener: &TcpListener,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Value,
) {
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the daemon did not connect")
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let challenge = json!({"type": "event", "event": "connect.challenge",
        "payload": {"nonce": "nonce-local-1", "ts": now}});
    ws.send(Message::text(challenge.to_string())).await.unwrap();
    let connect = loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no connect frame")
            .expect("closed before connect")
            .unwrap();
        if let Message::Text(t) = frame {
            break serde_json::from_str::<Value>(t.as_str()).unwrap();
        }
    };
    let hello = json!({"type": "res", "id": connect["id"], "ok": true, "payload": {
        "type": "hello-ok", "protocol": 4,
        "server": {"version": "fake", "connId": "c1"},
        "features": {"methods": [], "events": []},
        "auth": {"method": "token", "role": "operator",
            "scopes": ["operator.read", "operator.write", "operator.admin", "operator.approvals"]},
        "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000}}});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    (ws, connect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_of_the_daemons_own_uid_gets_the_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let d = daemon_with(&monitor_env(&url)).await;
    let (_ws, connect) = accept_and_handshake(&listener).await;
    assert_eq!(connect["params"]["auth"]["token"], TOKEN);
    let s = gateway_check_is(&d, "peer-uid 0").await;
    assert_ne!(s.state, "auth_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_never_prints_the_gateway_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/defenseclawd.sock");
    let log = dir.path().join("daemon.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defenseclawd"));
    cmd.arg("--socket")
        .arg(&socket)
        .env("DEFENSECLAW_HOME", dir.path().join("home"))
        .env("DEFENSECLAWD_LOG", "trace")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in monitor_env(&url) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (mut ws, connect) = accept_and_handshake(&listener).await;
    // The token really went over this connection, in frames the WebSocket
    // library would print at trace level.
    assert_eq!(connect["params"]["auth"]["token"], TOKEN);
    // Answer the monitor's first requests so frames flow both ways.
    let mut answered = 0;
    while answered < 3 {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await.unwrap()
        else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] == "req" {
            let res = json!({"type": "res", "id": v["id"], "ok": true, "payload": {}});
            ws.send(Message::text(res.to_string())).await.unwrap();
            answered += 1;
        }
    }
    let probe = log.clone();
    wait_for("a trace line of the daemon itself", WAIT, || {
        let probe = probe.clone();
        async move {
            let text = std::fs::read_to_string(probe).ok()?;
            text.lines()
                .any(|l| l.contains("TRACE") && l.contains("openclaw frame received"))
                .then_some(())
        }
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read(&log).unwrap();
    assert!(!contains(&text, TOKEN.as_bytes()), "token in the log");
    assert!(
        !contains(&text, hex::encode(TOKEN).as_bytes()),
        "hex-encoded token in the log"
    );
    // The WebSocket library's own lines reach the log (so the cap, not a
    // missing bridge, keeps its frames out).
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.lines().any(|l| l.contains("tungstenite")),
        "no line from the WebSocket library:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("TRACE") && l.contains("tungstenite")),
        "a WebSocket library line at trace level:\n{text}"
    );
}

async fn start_error(socket_dir: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.join("defenseclawd.sock");
    let env = daemon_env(dir.path(), &socket, &[]);
    let settings = Settings::load(&ConfigFile::None, &env).unwrap();
    let opts = DaemonOptions::new(settings, ConfigFile::None, env).unwrap();
    match daemon::start(opts).await {
        Ok(_) => panic!("the daemon bound a socket in {}", socket_dir.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_refuses_to_bind_in_a_shared_socket_directory() {
    let base = tempfile::tempdir().unwrap();
    // Group-writable, owned by the daemon's user.
    let group_writable = base.path().join("group");
    std::fs::create_dir(&group_writable).unwrap();
    std::fs::set_permissions(&group_writable, std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = start_error(&group_writable).await;
    assert!(
        err.contains(&group_writable.display().to_string()) && err.contains("group or others"),
        "{err}"
    );
    assert!(!group_writable.join("defenseclawd.sock").exists());

    // Another user's 1777 directory (created first by a squatter).
    let squatted = base.path().join("squat");
    std::fs::create_dir(&squatted).unwrap();
    chown(&squatted, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&squatted, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = start_error(&squatted).await;
    assert!(
        err.contains(&squatted.display().to_string()) && err.contains("owner uid 65534"),
        "{err}"
    );
    assert!(!squatted.join("defenseclawd.sock").exists());
}
