//! Start-up refusals, sockets, health and reflection, shutdown, crash recovery.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonOptions};
use pb::EnforcementAction::Block;

use defenseclaw_testkit::daemon::{DaemonProcess, TestDaemon, daemon_env};
use defenseclaw_testkit::requests::{set, skill, verify};
use nix::sys::signal::Signal;

/// The daemon binary the crash and signal tests run.
const DAEMON_BIN: &str = env!("CARGO_BIN_EXE_defenseclawd");

async fn try_start(dir: &std::path::Path) -> Result<defenseclawd::daemon::DaemonHandle, String> {
    try_start_on(dir, &defenseclaw_testkit::daemon::socket_in(dir)).await
}

async fn try_start_on(
    dir: &std::path::Path,
    socket: &std::path::Path,
) -> Result<defenseclawd::daemon::DaemonHandle, String> {
    let env = daemon_env(dir, socket, &[]);
    let settings = Settings::load(&ConfigFile::None, &env).unwrap();
    daemon::start(DaemonOptions::new(settings, ConfigFile::None, env).unwrap())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn socket_is_0660_and_a_second_daemon_is_refused_without_touching_the_store() {
    let d = TestDaemon::start().await.unwrap();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let db_mode = std::fs::metadata(d.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(db_mode, 0o600);
    let home_mode = std::fs::metadata(d.dir.path().join("home"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(home_mode, 0o700);
    // Same state directory and socket: the state directory's lock refuses it first.
    let err = try_start(d.dir.path()).await.unwrap_err();
    let holder = format!("pid {}", std::process::id());
    assert!(
        err.contains("already uses the state directory") && err.contains(&holder),
        "{err}"
    );
    // The first daemon still serves.
    d.client()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_daemon_on_another_socket_is_refused_by_the_store_lock() {
    let d = TestDaemon::start().await.unwrap();
    let mut client = d.client().await.unwrap();
    client
        .set_enforcement(set(skill("before"), Block, "first"))
        .await
        .unwrap();
    let other_socket = d.dir.path().join("other.sock");
    let err = try_start_on(d.dir.path(), &other_socket).await.unwrap_err();
    let holder = format!("pid {}", std::process::id());
    assert!(
        err.contains("already uses the state directory") && err.contains(&holder),
        "{err}"
    );
    assert!(
        !other_socket.exists(),
        "the refused daemon bound its socket"
    );
    // Mutations on the first daemon still commit (no second writer on the chain).
    client
        .set_enforcement(set(skill("after"), Block, "second"))
        .await
        .unwrap();
    let report = verify(&mut client, "").await.unwrap();
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn a_daemon_socket_still_answering_refuses_a_daemon_on_another_store() {
    let d = TestDaemon::start().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let err = try_start_on(other.path(), &d.socket).await.unwrap_err();
    assert!(err.contains("already answering"), "{err}");
    d.client()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn the_lock_file_refuses_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "untouched").unwrap();
    std::os::unix::fs::symlink(&target, home.join("defenseclawd.lock")).unwrap();
    let err = try_start(dir.path()).await.unwrap_err();
    assert!(err.contains("lock file"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_non_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let socket = dir.path().join("run/defenseclawd.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a stale socket file is left behind");
    let mut d = TestDaemon::start_in(dir, &[]).await.unwrap();
    d.client()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap();
    d.stop().await.unwrap();
    assert!(!d.socket.exists(), "the daemon removes its socket at exit");

    std::fs::write(&d.socket, "not a socket").unwrap();
    let err = try_start(d.dir.path()).await.unwrap_err();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&d.socket).unwrap(), "not a socket");
}

#[tokio::test]
async fn foreign_and_corrupted_databases_are_refused_and_left_untouched() {
    for (what, content) in [
        (
            "corrupted",
            b"this is not a database at all, just bytes".to_vec(),
        ),
        ("truncated sqlite", b"SQLite format 3\0garbage".to_vec()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let db = home.join("defenseclaw.db");
        std::fs::write(&db, &content).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = try_start(dir.path()).await.unwrap_err();
        assert!(err.contains("refusing"), "{what}: {err}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            content,
            "{what}: file must be untouched"
        );
    }
    // A real SQLite database of another application.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let db = home.join("defenseclaw.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (1);")
            .unwrap();
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = try_start(dir.path()).await.unwrap_err();
    assert!(err.contains("not a DefenseClaw database"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // Loose permissions are refused too.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = try_start(dir.path()).await.unwrap_err();
    assert!(err.contains("0600"), "{err}");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let d = TestDaemon::start().await.unwrap();
    let channel = defenseclaw_testkit::uds_channel(&d.socket).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "defenseclaw.v1.Control".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"defenseclaw.v1.Control"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn shutdown_ends_follow_streams_and_keeps_every_committed_change() {
    let mut d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    c.set_enforcement(set(skill("a"), Block, "")).await.unwrap();
    let mut follow = c
        .follow_audit(pb::FollowAuditRequest {
            after_seq: 0,
            from_start: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(follow.message().await.unwrap().unwrap().seq, 1);
    let stopping = tokio::spawn(async move {
        d.stop().await.unwrap();
        d
    });
    // The stream ends (cleanly or with an error) instead of holding shutdown forever.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = follow.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "follow stream did not end on shutdown");
    let d = stopping.await.unwrap();
    let restarted = TestDaemon::start_in(d.dir, &[]).await.unwrap();
    let mut c = restarted.client().await.unwrap();
    let v = c
        .check_target(skill("a").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.verdict,
        pb::Verdict::Blocked as i32,
        "state reloaded from the store"
    );
    assert!(verify(&mut c, "").await.unwrap().ok);
}

#[tokio::test]
async fn kill_9_during_mutations_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::spawn(DAEMON_BIN.as_ref(), dir.path())
        .await
        .unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let socket = daemon.socket.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut c) = defenseclaw_testkit::control_client(&socket).await else {
                return;
            };
            for i in 0.. {
                let name = format!("w{w}-{i}");
                match c
                    .set_enforcement(set(skill(&name), Block, "crash test"))
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a good number of mutations through, then pull the plug.
    let probe = acked.clone();
    defenseclaw_testkit::wait_for(
        "200 acknowledged mutations",
        Duration::from_secs(60),
        || {
            let n = probe.lock().unwrap().len();
            async move { (n >= 200).then_some(()) }
        },
    )
    .await
    .unwrap();
    daemon.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();

    let daemon = DaemonProcess::spawn(DAEMON_BIN.as_ref(), dir.path())
        .await
        .unwrap();
    let mut c = defenseclaw_testkit::control_client(&daemon.socket)
        .await
        .unwrap();
    for name in &acked {
        let v = c
            .check_target(skill(name).unwrap())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            v.verdict,
            pb::Verdict::Blocked as i32,
            "{name} was acknowledged but lost"
        );
    }
    let v = verify(&mut c, "").await.unwrap();
    assert!(v.ok, "{}", v.problem);
    assert!(v.entries_checked >= acked.len() as u64);
}

#[tokio::test]
async fn sigterm_stops_the_process_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::spawn(DAEMON_BIN.as_ref(), dir.path())
        .await
        .unwrap();
    daemon.signal(Signal::SIGTERM).unwrap();
    let status = daemon.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!daemon.socket.exists());
}

#[test]
fn check_config_prints_redacted_config_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[log]\nlevel = \"debug\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_defenseclawd"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .env("DEFENSECLAW_HOME", dir.path().join("home"))
        .env("OPENCLAW_GATEWAY_TOKEN", "super-secret-token-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("level = \"debug\""), "{text}");
    assert!(text.contains("OPENCLAW_GATEWAY_TOKEN"), "{text}");
    assert!(
        !text.contains("super-secret-token-value"),
        "secret leaked: {text}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nsokcet = \"/tmp/x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_defenseclawd"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sokcet"));
}

/// `--print-example-config` needs no valid configuration, and what it prints
/// is a configuration `--check-config` accepts; a bad one exits 78.
#[test]
fn the_printed_example_config_checks_clean_and_a_bad_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(DAEMON_BIN)
        .arg("--print-example-config")
        .env("DEFENSECLAW_LOG__LEVEL", "loud")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let example = dir.path().join("example.toml");
    std::fs::write(&example, &out.stdout).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[server]"));
    let check = std::process::Command::new(DAEMON_BIN)
        .args(["--check-config", "--config"])
        .arg(&example)
        .env("DEFENSECLAW_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let bad = std::process::Command::new(DAEMON_BIN)
        .args(["--check-config", "--config"])
        .arg(&example)
        .env("DEFENSECLAW_HOME", dir.path().join("home"))
        .env("DEFENSECLAW_STEPUP_ENABLED", "true")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("DEFENSECLAW_STEPUP_ENABLED"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn dotenv_with_process_keys_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dotenv = home.join(".env");
    std::fs::write(&dotenv, "LD_PRELOAD=/tmp/evil.so\n").unwrap();
    std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env: HashMap<String, String> = daemon_env(dir.path(), &dir.path().join("s.sock"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let settings = Settings::load(&ConfigFile::None, &env).unwrap();
    let err = rt
        .block_on(daemon::start(
            DaemonOptions::new(settings, ConfigFile::None, env).unwrap(),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("LD_PRELOAD"), "{err}");
}

/// A gateway that stays unreachable is one warning, not one per retry: the
/// daemon retried several times (the listener counted them) and logged the
/// unchanged failure once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_logged_once_per_change_not_per_retry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        // Accept and hang up at once: every attempt fails the same way.
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = tokio::process::Command::new(DAEMON_BIN)
        .arg("--socket")
        .arg(dir.path().join("d.sock"))
        .env("DEFENSECLAW_HOME", dir.path().join("home"))
        .env("DEFENSECLAW_OPENCLAW__ENABLED", "true")
        .env(
            "DEFENSECLAW_OPENCLAW__URL",
            format!("ws://127.0.0.1:{port}"),
        )
        .env("DEFENSECLAW_OPENCLAW__BACKOFF_INITIAL_MS", "50")
        .env("DEFENSECLAW_OPENCLAW__BACKOFF_MAX_SECS", "1")
        .env_remove("DEFENSECLAWD_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    defenseclaw_testkit::wait_for("four connection attempts", Duration::from_secs(60), || {
        let seen = attempts.load(Ordering::SeqCst);
        async move { (seen >= 4).then_some(()) }
    })
    .await
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the daemon did not stop")
        .unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("openclaw gateway connection"))
        .count();
    assert_eq!(warnings, 1, "{stderr}");
}

/// `status` counts as the daemon reports them: (targets, blocked, allowed,
/// open findings, audit entries).
async fn status_counts(
    c: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
) -> (u64, u64, u64, u64, u64) {
    let n = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap();
    (
        n.targets,
        n.blocked,
        n.allowed,
        n.open_findings,
        n.audit_entries,
    )
}

/// The same figures counted over the database rows.
fn counted_rows(db: &std::path::Path) -> (u64, u64, u64, u64, u64) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let one = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    (
        one("SELECT count(*) FROM targets"),
        one("SELECT count(*) FROM targets WHERE state = 'blocked'"),
        one("SELECT count(*) FROM targets WHERE state = 'allowed'"),
        one("SELECT count(*) FROM findings WHERE dismissed_at IS NULL"),
        one("SELECT count(*) FROM audit"),
    )
}

fn scan_report(name: &str, rules: &[&str]) -> pb::ScanReport {
    pb::ScanReport {
        scanner: "counts-test".into(),
        target: skill(name),
        findings: rules
            .iter()
            .map(|rule| pb::FindingInput {
                rule_id: (*rule).into(),
                severity: pb::Severity::Low as i32,
                title: format!("{rule} finding"),
                location: "SKILL.md".into(),
                line: 1,
                ..Default::default()
            })
            .collect(),
    }
}

/// `status` reads kept counters (no COUNT(*) on the request path); they must
/// equal COUNT(*) over the rows after blocks, allows, unblocks, findings
/// added, dismissed and deleted by a re-scan, and after a `kill -9` in the
/// middle of a mixed write load and a restart.
#[tokio::test]
async fn status_counts_equal_the_rows_across_changes_and_a_crash() {
    use pb::EnforcementAction::{Allow, Unblock};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("home/defenseclaw.db");
    let mut daemon = DaemonProcess::spawn(DAEMON_BIN.as_ref(), dir.path())
        .await
        .unwrap();
    let mut c = defenseclaw_testkit::control_client(&daemon.socket)
        .await
        .unwrap();
    assert_eq!(status_counts(&mut c).await, counted_rows(&db), "empty");

    let steps: Vec<(&str, pb::SetEnforcementRequest)> = vec![
        ("block a", set(skill("a"), Block, "t")),
        ("block b", set(skill("b"), Block, "t")),
        ("block a again", set(skill("a"), Block, "t")),
        ("allow c", set(skill("c"), Allow, "t")),
        ("allow b (was blocked)", set(skill("b"), Allow, "t")),
        ("unblock a", set(skill("a"), Unblock, "t")),
        ("block c (was allowed)", set(skill("c"), Block, "t")),
    ];
    for (what, req) in steps {
        c.set_enforcement(req).await.unwrap();
        assert_eq!(status_counts(&mut c).await, counted_rows(&db), "{what}");
    }

    // Findings: a new target with three, one dismissed, then a re-scan that
    // carries one of the open two and deletes the other.
    let stored = c
        .submit_scan_report(scan_report("e", &["R1", "R2", "R3"]))
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert_eq!(status_counts(&mut c).await, counted_rows(&db), "scan e");
    assert_eq!(status_counts(&mut c).await.3, 3);
    c.dismiss_finding(pb::DismissFindingRequest {
        id: stored[0].id,
        reason: "accepted".into(),
    })
    .await
    .unwrap();
    assert_eq!(status_counts(&mut c).await, counted_rows(&db), "dismiss");
    c.submit_scan_report(scan_report("e", &["R2"]))
        .await
        .unwrap();
    assert_eq!(status_counts(&mut c).await, counted_rows(&db), "re-scan e");
    assert_eq!(status_counts(&mut c).await.3, 1);
    c.submit_scan_report(scan_report("f", &["R1", "R2"]))
        .await
        .unwrap();
    assert_eq!(status_counts(&mut c).await, counted_rows(&db), "scan f");

    // Mixed writers, then the plug pulled mid-flight.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let socket = daemon.socket.clone();
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut c) = defenseclaw_testkit::control_client(&socket).await else {
                return;
            };
            for i in 0usize.. {
                let name = format!("w{w}-{}", i % 7);
                let r = match i % 4 {
                    0 => c
                        .set_enforcement(set(skill(&name), Block, "t"))
                        .await
                        .map(|_| ()),
                    1 => c
                        .set_enforcement(set(skill(&name), Allow, "t"))
                        .await
                        .map(|_| ()),
                    2 => {
                        let rules = &["R1", "R2"][..(i / 4) % 3];
                        c.submit_scan_report(scan_report(&name, rules))
                            .await
                            .map(|_| ())
                    }
                    _ => c
                        .set_enforcement(set(skill(&name), Unblock, "t"))
                        .await
                        .map(|_| ()),
                };
                if r.is_err() {
                    return;
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let probe = done.clone();
    defenseclaw_testkit::wait_for("100 mixed writes", Duration::from_secs(60), || {
        let n = probe.load(std::sync::atomic::Ordering::Relaxed);
        async move { (n >= 100).then_some(()) }
    })
    .await
    .unwrap();
    daemon.kill9();
    for w in writers {
        let _ = w.await;
    }
    let daemon = DaemonProcess::spawn(DAEMON_BIN.as_ref(), dir.path())
        .await
        .unwrap();
    let mut c = defenseclaw_testkit::control_client(&daemon.socket)
        .await
        .unwrap();
    let after = status_counts(&mut c).await;
    assert_eq!(after, counted_rows(&db), "after kill -9 and restart");
    assert!(after.0 > 6, "the writers' targets are counted: {after:?}");
    // And the counters keep following after the restart.
    c.set_enforcement(set(skill("g"), Block, "t"))
        .await
        .unwrap();
    c.submit_scan_report(scan_report("g", &["R9"]))
        .await
        .unwrap();
    assert_eq!(
        status_counts(&mut c).await,
        counted_rows(&db),
        "after restart"
    );
}

/// The benchmark's write-path profile (DEFENSECLAW_PROFILE_OUT): the daemon
/// accepts the variable, writes the file at shutdown, privately, with only
/// fixed labels and numbers in it (no target, reason or caller), and never
/// follows a symlink planted at the path.
#[tokio::test]
async fn the_write_profile_holds_only_numbers_and_labels() {
    use std::os::unix::fs::PermissionsExt as _;
    const MARK: &str = "s3cret-marker-7f1c";
    let run = |dir: &std::path::Path, out: &std::path::Path| {
        let child = std::process::Command::new(DAEMON_BIN)
            .arg("--socket")
            .arg(defenseclaw_testkit::daemon::socket_in(dir))
            .env("DEFENSECLAW_HOME", dir.join("home"))
            .env("DEFENSECLAW_OPENCLAW__ENABLED", "false")
            .env(defenseclawd::store::profile::PROFILE_ENV, out)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        DaemonProcess {
            child,
            socket: defenseclaw_testkit::daemon::socket_in(dir),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.json");
    let socket = defenseclaw_testkit::daemon::socket_in(dir.path());
    let mut child = run(dir.path(), &out);
    let mut c = defenseclaw_testkit::daemon::ready_client(&socket)
        .await
        .unwrap();
    for i in 0..5 {
        c.set_enforcement(set(skill(&format!("{MARK}-{i}")), Block, MARK))
            .await
            .unwrap();
    }
    drop(c);
    child.signal(Signal::SIGTERM).unwrap();
    let status = child.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status:?}");

    let text = std::fs::read_to_string(&out).expect("the profile is written at shutdown");
    assert!(!text.contains(MARK), "{text}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Every string in it is one of the fixed labels (phase names, bucket
    // labels, keys); every other leaf is a number.
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
                out.push(k.clone());
                strings(v, out);
            }),
            serde_json::Value::Number(_) => {}
            other => panic!("unexpected leaf {other}"),
        }
    }
    let mut seen = Vec::new();
    strings(&profile, &mut seen);
    for s in &seen {
        assert!(
            s.len() <= 20
                && s.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "_-+".contains(ch)),
            "{s:?} is not a fixed label"
        );
    }
    assert!(
        profile["phases"]["commit_fsync"]["count"].as_u64().unwrap() >= 5,
        "{profile}"
    );

    // A symlink at the path is not followed: the daemon refuses to write there.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    std::fs::remove_file(&out).unwrap();
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let mut child = run(dir.path(), &out);
    let mut c = defenseclaw_testkit::daemon::ready_client(&socket)
        .await
        .unwrap();
    c.set_enforcement(set(skill("x"), Block, "t"))
        .await
        .unwrap();
    drop(c);
    child.signal(Signal::SIGTERM).unwrap();
    child.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}
