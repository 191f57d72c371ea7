//! Audit export: every entry reaches a real rsyslog (and the file sink) at
//! least once and in order, across a receiver that starts late, dies mid-run,
//! never comes back, and a daemon killed with SIGKILL mid-export; and, against
//! scripted syslog and webhook receivers, one that stalls or crawls and one
//! that resets the connection in the middle of a batch.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use pb::EnforcementAction::Block;
use serde_json::Value;
use tonic::transport::Channel;

use defenseclaw_testkit::daemon::{DaemonProcess, TestDaemon};
use defenseclaw_testkit::faulty::{Faulty, Mode};
use defenseclaw_testkit::requests::{set, skill};
use defenseclaw_testkit::rsyslog::Rsyslog;
use defenseclaw_testkit::wait_for;

/// Bound on waiting for deliveries (readiness, never a speed assertion).
pub(crate) const DELIVERY: Duration = Duration::from_secs(60);

fn syslog_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DEFENSECLAW_EXPORT__SIEM__KIND", "syslog".into()),
        ("DEFENSECLAW_EXPORT__SIEM__URL", url.into()),
        ("DEFENSECLAW_EXPORT__SIEM__BATCH_SIZE", "7".into()),
        ("DEFENSECLAW_EXPORT__SIEM__FLUSH_INTERVAL_MS", "20".into()),
        ("DEFENSECLAW_EXPORT__SIEM__MAX_BACKOFF_SECS", "1".into()),
        ("DEFENSECLAW_EXPORT__SIEM__TIMEOUT_SECS", "2".into()),
    ]
}

pub(crate) fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub(crate) async fn block_many(c: &mut ControlClient<Channel>, prefix: &str, n: usize) {
    for i in 0..n {
        c.set_enforcement(set(skill(&format!("{prefix}{i}")), Block, "exported"))
            .await
            .unwrap();
    }
}

pub(crate) async fn status(c: &mut ControlClient<Channel>) -> pb::StatusReply {
    c.get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// seq -> hash of every stored entry.
async fn stored_hashes(c: &mut ControlClient<Channel>) -> BTreeMap<u64, String> {
    c.list_audit(pb::ListAuditRequest {
        limit: 0,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
    .into_iter()
    .map(|e| (e.seq, e.hash))
    .collect()
}

/// Entry records (not heads) in arrival order.
fn entries_of(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r.get("type").is_none()).collect()
}

/// Every stored entry arrived, with its hash and host; first arrivals are in seq order.
fn assert_complete_in_order(records: &[Value], stored: &BTreeMap<u64, String>) {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    let mut host = None;
    for r in entries_of(records) {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(
            r["hash"].as_str(),
            stored.get(&seq).map(String::as_str),
            "entry {seq}'s hash"
        );
        let h = r["host_id"].as_str().unwrap().to_owned();
        assert_eq!(h.len(), 32, "host_id {h}");
        assert!(host.get_or_insert(h.clone()) == &h, "one host id");
        if seen.insert(seq) {
            firsts.push(seq);
        }
    }
    let want: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(firsts, want, "every entry, first arrivals in order");
}

fn covers(records: &[Value], head: u64) -> bool {
    let seen: HashSet<u64> = entries_of(records)
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    (1..=head).all(|s| seen.contains(&s))
}

async fn wait_delivered(rs: &Rsyslog, head: u64) -> Vec<Value> {
    wait_for("rsyslog to receive every entry", DELIVERY, || async {
        let got: Vec<Value> = rs.received().unwrap().into_iter().map(|r| r.msg).collect();
        covers(&got, head).then_some(got)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_reaches_a_real_rsyslog_that_starts_late_and_dies_mid_run() {
    let mut rs = Rsyslog::new().unwrap();
    let env = syslog_env(&rs.url());
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();

    // Receiver down at start: mutations succeed, the sink retries, lag grows.
    block_many(&mut c, "early", 5).await;
    let lagging = wait_for("the sink to report retrying", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            let e = s.exporters.first()?.clone();
            (e.state != "ok" && !e.last_error.is_empty()).then_some((e, s))
        }
    })
    .await
    .unwrap();
    let (e, s) = lagging;
    assert_eq!((e.name.as_str(), e.kind.as_str()), ("siem", "syslog"));
    assert_eq!(e.cursor, 0);
    assert_eq!(e.lag, s.audit_head.unwrap().seq);

    rs.start().await.unwrap();
    let head = status(&mut c).await.audit_head.unwrap().seq;
    wait_delivered(&rs, head).await;
    let first = &rs.received().unwrap()[0];
    assert!(
        first.structured_data.contains("seq=\"1\"")
            && first
                .structured_data
                .contains(&format!("hash=\"{}\"", first.msg["hash"].as_str().unwrap())),
        "{}",
        first.structured_data
    );

    // Receiver killed mid-run, mutations go on, then it is back.
    rs.kill();
    block_many(&mut c, "while-down", 9).await;
    rs.start().await.unwrap();
    block_many(&mut c, "after", 4).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_delivered(&rs, head).await;
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
    assert!(
        got.iter().any(|r| r["type"] == "head"),
        "a head record was sent"
    );

    let ok = wait_for("the sink to catch up", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            let e = s.exporters.first()?.clone();
            (e.state == "ok" && e.lag == 0).then_some(e)
        }
    })
    .await
    .unwrap();
    assert_eq!(ok.cursor, head);
    assert!(!ok.last_success_at.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_comes_back_holds_no_mutation_and_lag_is_reported() {
    // Prepared, never started: nothing listens on its port.
    let rs = Rsyslog::new().unwrap();
    let mut env = syslog_env(&rs.url());
    env.push(("DEFENSECLAW_METRICS__LISTEN", "127.0.0.1:0".into()));
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "s", 40).await;
    let s = status(&mut c).await;
    let head = s.audit_head.unwrap().seq;
    assert!(head >= 40);
    let e = &s.exporters[0];
    assert_eq!(e.cursor, 0);
    assert_eq!(e.lag, head);
    assert!(e.last_success_at.is_empty());
    let failing = wait_for("the sink to report failing", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let e = status(&mut c).await.exporters.first()?.clone();
            (e.state == "failing").then_some(e)
        }
    })
    .await
    .unwrap();
    assert!(
        failing.last_error.contains("127.0.0.1"),
        "{}",
        failing.last_error
    );
    // The metrics endpoint reports the lag too (as of the sink's last attempt).
    let lagged = wait_for("the lag metric", DELIVERY, || async {
        let body = super::metrics::tcp(&d, super::metrics::GET).await;
        body.lines()
            .find_map(|l| l.strip_prefix("defenseclaw_exporter_lag_entries{sink=\"siem\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|lag| *lag >= 40)
    })
    .await
    .unwrap();
    assert!(lagged <= head + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_export_delivers_everything_after_restart() {
    let mut rs = Rsyslog::new().unwrap();
    rs.start().await.unwrap();
    let env = syslog_env(&rs.url());
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_defenseclawd"));
    let mut daemon = DaemonProcess::spawn_with(bin, dir.path(), &as_refs(&env))
        .await
        .unwrap();
    let mut c = defenseclaw_testkit::control_client(&daemon.socket)
        .await
        .unwrap();
    block_many(&mut c, "before-kill", 60).await;
    daemon.kill9();
    drop(c);

    let daemon = DaemonProcess::spawn_with(bin, dir.path(), &as_refs(&env))
        .await
        .unwrap();
    let mut c = defenseclaw_testkit::control_client(&daemon.socket)
        .await
        .unwrap();
    block_many(&mut c, "after-restart", 3).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_delivered(&rs, head).await;
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
}

#[tokio::test]
async fn the_file_sink_resumes_from_its_cursor_with_a_stable_host_id() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.jsonl");
    let url = format!("file://{}", path.display());
    let env = [
        ("DEFENSECLAW_EXPORT__LOCAL__KIND", "file"),
        ("DEFENSECLAW_EXPORT__LOCAL__URL", url.as_str()),
        ("DEFENSECLAW_EXPORT__LOCAL__FLUSH_INTERVAL_MS", "20"),
    ];
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut d = TestDaemon::start_with(&env).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "a", 4).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    wait_for("the file to hold every entry", DELIVERY, || async {
        covers(&read(), head).then_some(())
    })
    .await
    .unwrap();
    let host = read()[0]["host_id"].clone();
    d.stop().await.unwrap();

    let d = TestDaemon::start_in(d.dir, &env).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "b", 3).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_for("the file to hold every entry", DELIVERY, || async {
        let got = read();
        covers(&got, head).then_some(got)
    })
    .await
    .unwrap();
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
    assert!(entries_of(&got).iter().all(|r| r["host_id"] == host));
    let heads: Vec<&Value> = got.iter().filter(|r| r["type"] == "head").collect();
    assert!(!heads.is_empty());
    assert_eq!(heads[0]["filtered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_syslog_reaches_rsyslog_only_with_the_pinned_certificate() {
    use super::openclaw::{TEST_CERT, TEST_CERT_SHA256, TEST_KEY};
    let mut rs = Rsyslog::new_tls(TEST_CERT, TEST_KEY).unwrap();
    rs.start().await.unwrap();

    // A wrong pin: nothing is sent, the failure is reported.
    let mut env = syslog_env(&rs.tls_url());
    env.push(("DEFENSECLAW_EXPORT__SIEM__TLS_PIN_SHA256", "ab".repeat(32)));
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "pinned", 3).await;
    let e = wait_for("the wrong pin to be refused", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let e = status(&mut c).await.exporters.first()?.clone();
            (!e.last_error.is_empty()).then_some(e)
        }
    })
    .await
    .unwrap();
    assert!(e.last_error.contains("tls_pin_sha256"), "{}", e.last_error);
    assert_eq!(e.cursor, 0);
    drop(d);
    assert!(rs.received().unwrap().is_empty());

    // The right pin: everything arrives over TLS.
    let mut env = syslog_env(&rs.tls_url());
    env.push((
        "DEFENSECLAW_EXPORT__SIEM__TLS_PIN_SHA256",
        TEST_CERT_SHA256.into(),
    ));
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "pinned", 4).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_delivered(&rs, head).await;
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
}

/// A webhook receiver: answers 503 to the first `fail_first` requests, then
/// 200; records (signature ok, body) of each request.
async fn webhook_receiver(
    fail_first: usize,
    secret: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(bool, Value)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Headers, then Content-Length bytes of body.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap();
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end..end + len].to_vec();
                    buf.drain(..end + len);
                    let ts = header("x-defenseclaw-timestamp");
                    let want = format!(
                        "sha256={}",
                        defenseclawd::export::webhook::sign(secret.as_bytes(), &ts, &body)
                    );
                    let fresh = ts.parse::<i64>().is_ok_and(|t| {
                        (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300
                    });
                    let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer: &[u8] = if n < fail_first {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        log.lock().unwrap().push((
                            header("x-defenseclaw-signature") == want && fresh,
                            serde_json::from_slice(&body).unwrap(),
                        ));
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                    };
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_signed_entries_and_retries_after_5xx() {
    let (url, seen) = webhook_receiver(3, "hook-secret").await;
    let env = [
        ("DEFENSECLAW_EXPORT__HOOK__KIND", "webhook"),
        ("DEFENSECLAW_EXPORT__HOOK__URL", url.as_str()),
        ("DEFENSECLAW_EXPORT__HOOK__FLUSH_INTERVAL_MS", "20"),
        ("DEFENSECLAW_EXPORT__HOOK__MAX_BACKOFF_SECS", "1"),
        ("DEFENSECLAW_EXPORT_HOOK_TOKEN", "hook-secret"),
    ];
    let d = TestDaemon::start_with(&env).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "hooked", 5).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_for("the webhook to receive every entry", DELIVERY, || async {
        let got: Vec<(bool, Value)> = seen.lock().unwrap().clone();
        let bodies: Vec<Value> = got.iter().map(|(_, b)| b.clone()).collect();
        covers(&bodies, head).then_some(got)
    })
    .await
    .unwrap();
    assert!(
        got.iter().all(|(signed, _)| *signed),
        "every request signed"
    );
    let bodies: Vec<Value> = got.into_iter().map(|(_, b)| b).collect();
    assert_complete_in_order(&bodies, &stored_hashes(&mut c).await);
    let status = status(&mut c).await;
    assert!(!format!("{status:?}").contains("hook-secret"));

    // Without its secret a webhook sink does not start, and says which secret.
    let err = TestDaemon::start_with(&env[..4])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DEFENSECLAW_EXPORT_HOOK_TOKEN") && err.contains("export-hook-token"),
        "{err}"
    );
}

/// The receivers the scripted fault tests run against.
#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Syslog,
    Webhook,
}

impl FaultKind {
    async fn receiver(self, mode: Mode) -> Faulty {
        match self {
            Self::Syslog => Faulty::syslog(mode).await.unwrap(),
            Self::Webhook => Faulty::webhook(mode).await.unwrap(),
        }
    }

    /// Sink `siem` delivering to `rx`, batches of 7, each delivery given `timeout_secs`.
    fn env(self, rx: &Faulty, timeout_secs: u64) -> Vec<(&'static str, String)> {
        let mut env = syslog_env(rx.url());
        env.retain(|(k, _)| *k != "DEFENSECLAW_EXPORT__SIEM__TIMEOUT_SECS");
        env.push((
            "DEFENSECLAW_EXPORT__SIEM__TIMEOUT_SECS",
            timeout_secs.to_string(),
        ));
        if let Self::Webhook = self {
            env[0].1 = "webhook".into();
            env.push(("DEFENSECLAW_EXPORT_SIEM_TOKEN", "fault-secret".into()));
        }
        env
    }
}

/// The sink's status and, read after it, the highest seq the receiver had
/// accepted: the cursor (a delivery the receiver accepted) can never be past it.
async fn cursor_within_accepted(c: &mut ControlClient<Channel>, rx: &Faulty) -> pb::ExporterStatus {
    let e = status(c).await.exporters[0].clone();
    let accepted = rx.max_accepted_seq();
    assert!(
        e.cursor <= accepted,
        "the cursor ({}) is past what the receiver accepted ({accepted})",
        e.cursor
    );
    e
}

async fn wait_received(rx: &Faulty, head: u64) -> Vec<Value> {
    wait_for("the receiver to hold every entry", DELIVERY, || async {
        let got = rx.received();
        covers(&got, head).then_some(got)
    })
    .await
    .unwrap()
}

async fn wait_caught_up(c: &ControlClient<Channel>, head: u64) {
    let e = wait_for("the sink to catch up", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let e = status(&mut c).await.exporters.first()?.clone();
            (e.state == "ok" && e.cursor >= head).then_some(e)
        }
    })
    .await
    .unwrap();
    assert_eq!(e.cursor, head);
}

/// A receiver that takes nothing, then crawls, then keeps up: every mutation
/// completes while it takes nothing, nothing counts as delivered that it did
/// not take, and once it keeps up every entry arrives, first arrivals in order.
async fn slow_receiver(kind: FaultKind) {
    let rx = kind.receiver(Mode::Stalled).await;
    let env = kind.env(&rx, 2);
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();

    block_many(&mut c, "stalled", 60).await;
    let s = status(&mut c).await;
    let head = s.audit_head.unwrap().seq;
    assert!(head >= 60);
    assert!(
        rx.received().is_empty(),
        "the stalled receiver took nothing"
    );
    let e = cursor_within_accepted(&mut c, &rx).await;
    assert_eq!((e.cursor, e.lag), (0, head));

    rx.set_mode(Mode::Slow(Duration::from_millis(5)));
    block_many(&mut c, "slow", 20).await;
    wait_for("the slow receiver to take some", DELIVERY, || async {
        (rx.received().len() >= 5).then_some(())
    })
    .await
    .unwrap();
    cursor_within_accepted(&mut c, &rx).await;

    rx.set_mode(Mode::Normal);
    block_many(&mut c, "fast", 5).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_received(&rx, head).await;
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
    wait_caught_up(&c, head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_syslog_receiver_holds_no_mutation_and_gets_everything_in_order() {
    slow_receiver(FaultKind::Syslog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_holds_no_mutation_and_gets_everything_in_order() {
    slow_receiver(FaultKind::Webhook).await;
}

/// A receiver that takes part of a batch and resets the connection: the
/// cursor does not pass what it took, mutations go on while it refuses, and
/// once it is back every entry arrives at least once, first arrivals in order.
async fn receiver_dropping_mid_batch(kind: FaultKind) {
    // Held until the backlog is queued, so the drop lands inside a batch of 7.
    let rx = kind.receiver(Mode::Stalled).await;
    let env = kind.env(&rx, 30);
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "queued", 30).await;

    rx.set_mode(Mode::DropAfter(3));
    wait_for("the receiver to drop the connection", DELIVERY, || async {
        (rx.drops() >= 1).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(rx.mode(), Mode::Refuse);
    // Three records (entries, and the first batch's head record) taken.
    let taken = rx.received();
    assert_eq!(taken.len(), 3, "{taken:?}");

    // It refuses every connection now: the sink says so, the control plane
    // goes on, and the cursor stays within the three records taken.
    block_many(&mut c, "refused", 5).await;
    wait_for("the sink to report the failure", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let e = status(&mut c).await.exporters.first()?.clone();
            (e.state != "ok" && !e.last_error.is_empty()).then_some(())
        }
    })
    .await
    .unwrap();
    let e = cursor_within_accepted(&mut c, &rx).await;
    assert!(e.lag > 0);

    rx.set_mode(Mode::Normal);
    block_many(&mut c, "back", 4).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    let got = wait_received(&rx, head).await;
    assert_complete_in_order(&got, &stored_hashes(&mut c).await);
    wait_caught_up(&c, head).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_receiver_resetting_mid_batch_loses_nothing() {
    receiver_dropping_mid_batch(FaultKind::Syslog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_dropping_mid_batch_loses_nothing() {
    receiver_dropping_mid_batch(FaultKind::Webhook).await;
}
