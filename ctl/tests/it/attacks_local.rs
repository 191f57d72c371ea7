//! Attacks by another local user on the CLI: a squatted socket directory, an
//! impostor listener, agent-supplied escape sequences in tables, and group
//! membership for `[access]` taken from the caller's real process.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::Duration;

use defenseclaw_testkit::impostor::Impostor;
use defenseclaw_testkit::wait_for;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Bounded, Ctl, Run, ctl_at};
use defenseclaw_testkit::daemon::TestDaemon;

const WAIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;
const OPERATOR_TOKEN: &str = "operator-token-must-not-leak-9c41e2";

/// Runs the CLI as root with an operator token in the environment.
async fn ctl_with_token(socket: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .env("DEFENSECLAW_TOKEN", OPERATOR_TOKEN)
        .output()
        .bounded()
        .await
        .unwrap();
    Run::from(out)
}

/// Runs the CLI as uid 65534 with exactly `groups` as supplementary groups.
async fn ctl_as_nobody(groups: &[u32], env: &[(&str, &str)], args: &[&str]) -> Run {
    let id = NOBODY.to_string();
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--reuid", &id, "--regid", &id]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.args(["--groups", &list.join(",")]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_defenseclawctl"))
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .env_remove("DEFENSECLAW_TOKEN")
        // A session-less user: no runtime directory from logind or systemd.
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .bounded()
        .await
        .expect("running setpriv (util-linux)");
    let run = Run::from(out);
    assert_ne!(
        run.code, 126,
        "uid {NOBODY} cannot execute the CLI binary (its directories must be world-searchable): {}",
        run.stderr
    );
    run
}

/// The entries of `audit list -o json` output (one JSON value or array per line).
fn audit_entries(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| match serde_json::from_str::<Value>(l).unwrap() {
            Value::Array(a) => a,
            v => vec![v],
        })
        .collect()
}

fn world_searchable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory owned by the other user, as it would create it first.
fn squatter_dir(base: &Path, mode: u32) -> std::path::PathBuf {
    let dir = base.join("squat");
    std::fs::create_dir(&dir).unwrap();
    chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn assert_refused(run: &Run, socket: &Path, owner: &str) {
    assert_eq!(
        run.code, 77,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(&socket.display().to_string()) && run.stderr.contains(owner),
        "the refusal must name the socket and its owner: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatted_socket_directory_is_refused_before_any_byte() {
    let base = tempfile::tempdir().unwrap();
    world_searchable(base.path());
    let squat = squatter_dir(base.path(), 0o1777);
    let socket = squat.join("defenseclawd.sock");
    let squatter = Impostor::unix(NOBODY, &socket).await.expect("impostor");

    let status = ctl_with_token(&socket, &["status"]).await;
    assert_refused(&status, &socket, "owner uid 65534");
    // `auth login` would take its issuer from the daemon: not from this one.
    let login = ctl_with_token(&socket, &["auth", "login", "--no-browser"]).await;
    assert_refused(&login, &socket, "owner uid 65534");

    assert_eq!(squatter.closed_connections(), 0, "the CLI connected");
    assert!(squatter.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_in_a_trusted_directory_is_refused_by_its_credentials() {
    let base = tempfile::tempdir().unwrap();
    world_searchable(base.path());
    let squat = squatter_dir(base.path(), 0o700);
    let planted = squat.join("defenseclawd.sock");
    let squatter = Impostor::unix(NOBODY, &planted).await.expect("impostor");
    // The other user's socket ends up in a directory the checks accept (root's,
    // 0755): only the server's peer credentials tell it apart.
    let trusted = base.path().join("run");
    std::fs::create_dir(&trusted).unwrap();
    world_searchable(&trusted);
    let socket = trusted.join("defenseclawd.sock");
    std::fs::rename(&planted, &socket).unwrap();

    let status = ctl_with_token(&socket, &["status"]).await;
    assert_refused(&status, &socket, "uid 65534");
    assert!(status.stderr.contains("served by"), "{}", status.stderr);
    let login = ctl_with_token(&socket, &["auth", "login", "--no-browser"]).await;
    assert_refused(&login, &socket, "uid 65534");

    wait_for(
        "the impostor to see both connections close",
        WAIT,
        || async { (squatter.closed_connections() >= 2).then_some(()) },
    )
    .await
    .unwrap();
    let received = squatter.received();
    assert!(
        received.is_empty(),
        "the impostor received {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_socket_without_xdg_runtime_dir_is_private() {
    // A session-less user (su, cron, ssh without logind): no XDG_RUNTIME_DIR.
    let run = ctl_as_nobody(&[], &[("TMPDIR", "/tmp")], &["status"]).await;
    assert_eq!(run.code, 69, "{}", run.stderr);
    let path = run
        .stderr
        .split("cannot reach defenseclawd at ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no socket path in: {}", run.stderr));
    assert!(path.ends_with("defenseclawd.sock"), "{path}");
    for shared in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(!Path::new(path).starts_with(shared), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_groups_come_from_the_callers_process() {
    // NSS does not put 65534 in group 4242; only the process's groups do.
    let nss = std::process::Command::new("id")
        .args(["-G", "nobody"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nss.stdout)
            .split_whitespace()
            .any(|g| g == "4242"),
        "this test needs nobody outside group 4242 in NSS"
    );
    let d = TestDaemon::start_with(&[("DEFENSECLAW_ACCESS__MUTATE_GIDS", "4242")])
        .await
        .unwrap();
    // The test lets uid 65534 reach the socket (the daemon refuses to grant
    // others access itself).
    world_searchable(d.dir.path());
    world_searchable(d.socket.parent().unwrap());
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = d.socket.display().to_string();
    let block = |name: &'static str| {
        ["--socket", "", "skill", "block", name, "--reason", "x"]
            .map(|a| if a.is_empty() { socket.as_str() } else { a })
    };

    let refused = ctl_as_nobody(&[], &[], &block("first")).await;
    assert_eq!(refused.code, 77, "{}", refused.stderr);
    let allowed = ctl_as_nobody(&[4242], &[], &block("second")).await;
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    // Leaving the group takes effect at once, without a restart.
    let refused_again = ctl_as_nobody(&[7], &[], &block("third")).await;
    assert_eq!(refused_again.code, 77, "{}", refused_again.stderr);

    let audit = d.ctl(&["-o", "json", "audit", "list"]).await.ok();
    let entries = audit_entries(&audit.stdout);
    let by_nobody: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"]["uid"] == NOBODY)
        .collect();
    let allowed_entry = by_nobody
        .iter()
        .find(|e| e["target"]["name"] == "second")
        .unwrap_or_else(|| panic!("no entry for the allowed block: {by_nobody:#?}"));
    assert_eq!(allowed_entry["action"], "block", "{allowed_entry:#}");
    assert_eq!(allowed_entry["outcome"], "success", "{allowed_entry:#}");
    assert!(
        by_nobody.iter().any(|e| e["action"] == "permission-denied"
            && e["outcome"] == "refused"
            && e["details"]["rpc"] == "SetEnforcement"),
        "the refusals are audited: {by_nobody:#?}"
    );
    assert!(
        !by_nobody
            .iter()
            .any(|e| e["target"]["name"] == "first" || e["target"]["name"] == "third"),
        "a refused caller changed something: {by_nobody:#?}"
    );
}

/// The daemon's own socket mode (0660, root's group) keeps another user out
/// before any RPC: the connection itself is refused, so nothing is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_mode_keeps_another_user_out() {
    let d = TestDaemon::start().await.unwrap();
    world_searchable(d.dir.path());
    world_searchable(d.socket.parent().unwrap());
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let socket = d.socket.display().to_string();
    let run = ctl_as_nobody(&[], &[], &["--socket", &socket, "-o", "json", "status"]).await;
    // Not "is it running?": the daemon runs, this user may not connect.
    assert_eq!(
        run.code, 77,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("permission denied on the socket")
            && run.stderr.contains("uid 0")
            && run.stderr.contains("mode 0660")
            && !run.stderr.contains("Is it running"),
        "{}",
        run.stderr
    );
    let audit = d.ctl(&["-o", "json", "audit", "list"]).await.ok();
    assert!(!audit.stdout.contains("uid:65534"), "{}", audit.stdout);
}

/// A peer that is not root reaches a socket opened to it: it may read, its
/// mutation is refused, and the audit names it by its own uid (not uid 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_peer_reads_but_its_mutation_is_refused_under_its_own_uid() {
    let d = TestDaemon::start().await.unwrap();
    world_searchable(d.dir.path());
    world_searchable(d.socket.parent().unwrap());
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let socket = d.socket.display().to_string();
    let as_nobody = |args: &'static [&'static str]| {
        let socket = socket.clone();
        async move {
            let mut full = vec!["--socket", socket.as_str()];
            full.extend_from_slice(args);
            ctl_as_nobody(&[], &[], &full).await
        }
    };
    let list = as_nobody(&["-o", "json", "skill", "list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let refused = as_nobody(&["skill", "block", "evil", "--reason", "x"]).await;
    assert_eq!(refused.code, 77, "{}", refused.stderr);
    let v = d.ctl(&["-o", "json", "skill", "show", "evil"]).await;
    assert_ne!(
        v.code, 0,
        "a refused mutation left state behind: {}",
        v.stdout
    );

    let mine = d
        .ctl(&["-o", "json", "audit", "list", "--actor", "uid:65534"])
        .await
        .ok();
    let entries = audit_entries(&mine.stdout);
    assert!(
        !entries.is_empty(),
        "no entry for uid 65534: {}",
        mine.stdout
    );
    for e in &entries {
        assert_eq!(e["actor"]["uid"], NOBODY, "{e:#}");
        assert_eq!(e["actor"]["id"], "uid:65534", "{e:#}");
        assert_eq!(
            (e["action"].as_str(), e["outcome"].as_str()),
            (Some("permission-denied"), Some("refused")),
            "{e:#}"
        );
        assert_eq!(e["details"]["rpc"], "SetEnforcement", "{e:#}");
    }
}

/// The smallest gateway that gets one exec approval to the daemon.
async fn gateway_with_approval(listener: TcpListener, command: String) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(json!({"type": "event", "event": "connect.challenge",
        "payload": {"nonce": "n-1", "ts": now}})))
        .await
        .unwrap();
    let mut approved_sent = false;
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        if v["type"] != "req" {
            continue;
        }
        let payload = match v["method"].as_str().unwrap_or("") {
            "connect" => json!({"type": "hello-ok", "protocol": 4,
                "server": {"version": "fake", "connId": "c1"},
                "features": {"methods": [], "events": []},
                "auth": {"method": "token", "role": "operator",
                    "scopes": ["operator.read", "operator.write", "operator.admin", "operator.approvals"]},
                "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000}}),
            "exec.approval.list" | "plugin.approval.list" => json!([]),
            "skills.status" => json!({"skills": []}),
            "config.get" => json!({"hash": "h", "config": {}}),
            _ => json!({"ok": true}),
        };
        ws.send(send(
            json!({"type": "res", "id": v["id"], "ok": true, "payload": payload}),
        ))
        .await
        .unwrap();
        if !approved_sent {
            approved_sent = true;
            ws.send(send(json!({"type": "event", "event": "exec.approval.requested", "payload": {
                "approvalKind": "exec", "id": "appr-esc-1", "createdAtMs": now, "expiresAtMs": now + 600_000,
                "request": {"command": command, "cwd": "/tmp", "host": "gateway", "agentId": "main",
                    "sessionKey": "agent:main:main", "allowedDecisions": ["allow-once", "deny"]}}})))
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_sequences_in_an_approval_never_reach_the_terminal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    // Clear the screen, retitle the terminal, flip the text right-to-left,
    // hide a word: all from the agent's command line.
    let command = "ls \u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}gnp.exe\u{200b}\u{9b}31m done".to_owned();
    tokio::spawn(gateway_with_approval(listener, command.clone()));
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
        ("DEFENSECLAW_OPENCLAW__URL", &url),
        ("OPENCLAW_GATEWAY_TOKEN", "gw-token-esc"),
    ])
    .await
    .unwrap();
    let json = wait_for("the approval in the daemon", WAIT, || async {
        let run = d.ctl(&["-o", "json", "openclaw", "approvals"]).await;
        (run.code == 0 && run.stdout.contains("appr-esc-1")).then_some(run)
    })
    .await
    .unwrap();
    // JSON keeps the text exact (serde's escaping).
    let listed = json.json();
    assert_eq!(listed[0]["subject"], command.as_str(), "{listed:#}");

    // The gateway (this process: root, the daemon's uid) was trusted with the
    // token, and status says why.
    let status = d.ctl(&["-o", "json", "status"]).await.ok().json();
    assert_eq!(
        status["openclaw"]["gateway_check"], "peer-uid 0",
        "{status:#}"
    );

    let table = d.ctl(&["openclaw", "approvals"]).await.ok();
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\u{200b}', '\u{9b}'] {
        assert!(
            !table.stdout.contains(raw) && !table.stderr.contains(raw),
            "{raw:?} reached the terminal: {:?}",
            table.stdout
        );
    }
    assert!(table.stdout.contains("appr-esc-1"), "{}", table.stdout);
    assert!(
        table.stdout.contains("\\u{001b}[2J") && table.stdout.contains("\\u{202e}gnp.exe"),
        "escaped forms are shown: {}",
        table.stdout
    );
}

#[tokio::test]
async fn ctl_at_is_unchanged_for_a_trusted_daemon() {
    // The checks do not get in the way of the normal case (root's 0700 temp
    // directory, a daemon run by the same uid).
    let d = TestDaemon::start().await.unwrap();
    ctl_at(&d.socket, &["status"]).await.ok();
}
