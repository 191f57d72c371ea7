//! `[metrics] listen`: counts rise with the calls and decisions that caused
//! them; only loopback or a Unix socket; GET /metrics only, bounded requests
//! and scrapers; nothing a caller sends (tokens, names) reaches a label.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{set, skill};
use pb::EnforcementAction::Block;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const DAEMON_BIN: &str = env!("CARGO_BIN_EXE_defenseclawd");

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> String {
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

pub(crate) async fn tcp(daemon: &TestDaemon, request: &[u8]) -> String {
    let addr = daemon.handle.as_ref().unwrap().metrics_addr().unwrap();
    exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), request).await
}

async fn unix(path: &Path, request: &[u8]) -> String {
    exchange(
        tokio::net::UnixStream::connect(path).await.unwrap(),
        request,
    )
    .await
}

pub(crate) const GET: &[u8] =
    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n";

/// The body of a 200 answer, as `series -> value`.
fn samples(response: &str) -> HashMap<String, f64> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn get(s: &HashMap<String, f64>, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

const CHECK_OK: &str =
    "defenseclaw_rpc_requests_total{method=\"defenseclaw.v1.Control/CheckTarget\",code=\"OK\"}";

#[tokio::test]
async fn a_scrape_after_calls_shows_their_counts_codes_latencies_and_decisions() {
    let daemon = TestDaemon::start_with(&[("DEFENSECLAW_METRICS__LISTEN", "127.0.0.1:0")])
        .await
        .unwrap();
    let before = samples(&tcp(&daemon, GET).await);
    assert_eq!(
        get(
            &before,
            "defenseclaw_stepup_outcomes_total{outcome=\"denied\"}"
        ),
        0.0
    );
    let mut c = daemon.client().await.unwrap();
    for _ in 0..3 {
        c.check_target(skill("metrics-a").unwrap()).await.unwrap();
    }
    c.set_enforcement(set(skill("metrics-a"), Block, "metrics test"))
        .await
        .unwrap();
    c.check_target(skill("metrics-a").unwrap()).await.unwrap();
    let missing = c
        .get_target(skill("never-seen").unwrap())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let after = samples(&tcp(&daemon, GET).await);
    assert_eq!(get(&after, CHECK_OK) - get(&before, CHECK_OK), 4.0);
    let count = CHECK_OK.replace("requests_total", "duration_seconds_count");
    let inf = CHECK_OK
        .replace("requests_total", "duration_seconds_bucket")
        .replace("}", ",le=\"+Inf\"}");
    assert_eq!(get(&after, &count), get(&after, CHECK_OK));
    assert_eq!(get(&after, &inf), get(&after, CHECK_OK));
    assert_eq!(
        get(
            &after,
            "defenseclaw_rpc_requests_total{method=\"defenseclaw.v1.Control/GetTarget\",code=\"NOT_FOUND\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "defenseclaw_rpc_requests_total{method=\"defenseclaw.v1.Control/SetEnforcement\",code=\"OK\"}"
        ),
        1.0
    );
    let decisions = |s: &HashMap<String, f64>, kind: &str, outcome: &str| {
        get(
            s,
            &format!("defenseclaw_decisions_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(
        decisions(&after, "check", "unknown") - decisions(&before, "check", "unknown"),
        3.0
    );
    assert_eq!(
        decisions(&after, "check", "blocked") - decisions(&before, "check", "blocked"),
        1.0
    );
    assert_eq!(
        decisions(&after, "enforcement", "blocked") - decisions(&before, "enforcement", "blocked"),
        1.0
    );
    // The exporter lag family is there for sinks to fill; empty without them.
    let text = tcp(&daemon, GET).await;
    assert!(
        text.contains("# TYPE defenseclaw_exporter_lag_entries gauge"),
        "{text}"
    );
    assert!(
        !text.contains("defenseclaw_exporter_lag_entries{"),
        "{text}"
    );
}

#[tokio::test]
async fn only_get_metrics_is_answered_and_requests_are_bounded() {
    let daemon = TestDaemon::start_with(&[("DEFENSECLAW_METRICS__LISTEN", "127.0.0.1:0")])
        .await
        .unwrap();
    let post = tcp(
        &daemon,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(!post.contains("defenseclaw_"), "{post}");
    let other = tcp(&daemon, b"GET /debug HTTP/1.1\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let h2 = tcp(&daemon, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(h2.starts_with("HTTP/1.1 400"), "{h2}");
    // A head that never ends is cut at the limit, not buffered.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let addr = daemon.handle.as_ref().unwrap().metrics_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server stops reading at the limit; the write may fail once it closes.
    let _ = s.write_all(&huge).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

#[tokio::test]
async fn a_unix_endpoint_has_the_socket_mode_and_scrapers_beyond_the_cap_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/metrics.sock");
    let listen = format!("unix:{}", path.display());
    let _daemon = TestDaemon::start_in(
        dir,
        &[
            ("DEFENSECLAW_METRICS__LISTEN", listen.as_str()),
            ("DEFENSECLAW_METRICS__MAX_SCRAPERS", "2"),
        ],
    )
    .await
    .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    samples(&unix(&path, GET).await);

    // Two scrapers that have not finished their request hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // A third is closed without an answer (an end of file, or a reset since
    // its request was never read).
    let mut third = tokio::net::UnixStream::connect(&path).await.unwrap();
    let _ = third.write_all(GET).await;
    let mut out = Vec::new();
    match third.read_to_end(&mut out).await {
        Ok(_) => assert!(out.is_empty(), "a scraper beyond the cap was served"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // The held ones still get their answer, and then a place is free again.
    for mut s in held {
        s.write_all(b"\r\n").await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    }
    let again = defenseclaw_testkit::wait_for(
        "a free scraper place",
        std::time::Duration::from_secs(10),
        || {
            let path = path.clone();
            async move {
                let r = unix(&path, GET).await;
                r.starts_with("HTTP/1.1 200").then_some(r)
            }
        },
    )
    .await
    .unwrap();
    samples(&again);
}

#[test]
fn a_non_loopback_metrics_address_stops_the_start_with_a_clear_error() {
    for bad in ["0.0.0.0:9464", "192.0.2.7:9464", "[::]:9464"] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(DAEMON_BIN)
            .arg("--check-config")
            .env("DEFENSECLAW_HOME", dir.path().join("home"))
            .env("DEFENSECLAW_METRICS__LISTEN", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bad}: {stderr}");
        assert!(
            stderr.contains("metrics.listen") && stderr.contains("not a loopback address"),
            "{bad}: {stderr}"
        );
    }
}

/// Label values come from closed sets: method names the server serves,
/// status code names, fixed outcomes. A token in `authorization`, refused
/// names and secrets in the environment never appear.
#[tokio::test]
async fn no_token_secret_or_caller_supplied_name_reaches_a_label() {
    const SECRET: &str = "sekrit-client-secret-4f1e";
    const BEARER: &str = "eyJhbGciOiJSUzI1NiJ9.bearer-token-9d2c.sig";
    let daemon = TestDaemon::start_with(&[
        ("DEFENSECLAW_METRICS__LISTEN", "127.0.0.1:0"),
        ("DEFENSECLAW_AUTH_CLIENT_SECRET", SECRET),
    ])
    .await
    .unwrap();
    let mut c = daemon.client().await.unwrap();
    let mut req = tonic::Request::new(skill("name-in-request-7c1").unwrap());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {BEARER}").parse().unwrap());
    let _ = c.check_target(req).await;
    let _ = c
        .get_connection_token(pb::GetConnectionTokenRequest {
            server: "srv-token-name-5b9".into(),
            connection: "github".into(),
            ..Default::default()
        })
        .await;
    let _ = c
        .check_target(pb::TargetRef {
            kind: pb::TargetKind::Skill as i32,
            name: "bad name\"}\n x 1".into(),
        })
        .await;

    let text = tcp(&daemon, GET).await;
    for leaked in [
        SECRET,
        BEARER,
        "name-in-request-7c1",
        "srv-token-name-5b9",
        "bad name",
        "github",
    ] {
        assert!(
            !text.contains(leaked),
            "{leaked} reached the metrics:\n{text}"
        );
    }
    let allowed_keys = ["version", "method", "code", "kind", "outcome", "le", "sink"];
    for (series, _) in samples(&text) {
        let Some((_, labels)) = series.split_once('{') else {
            continue;
        };
        for pair in labels.trim_end_matches('}').split("\",") {
            let (key, value) = pair.split_once("=\"").unwrap();
            assert!(allowed_keys.contains(&key), "label {key} in {series}");
            if key == "method" {
                let value = value.trim_end_matches('"');
                assert!(
                    value == "unknown"
                        || ["defenseclaw.v1.", "grpc.health.v1.", "grpc.reflection."]
                            .iter()
                            .any(|p| value.starts_with(p)),
                    "method label {value}"
                );
            }
        }
    }
}

/// The settings that turn the endpoint on, for other modules' daemons.
pub(crate) fn listen_env() -> (String, String) {
    ("DEFENSECLAW_METRICS__LISTEN".into(), "127.0.0.1:0".into())
}

/// Waits until the step-up outcome counters read `want` (the counter moves
/// just after the request's row commits, so a reader may see the row first).
pub(crate) async fn wait_for_stepup_outcomes(daemon: &TestDaemon, want: &[(&str, f64)]) {
    let what = format!("step-up outcome counters {want:?}");
    defenseclaw_testkit::wait_for(&what, std::time::Duration::from_secs(30), || async {
        let s = samples(&tcp(daemon, GET).await);
        want.iter()
            .all(|(outcome, n)| {
                get(
                    &s,
                    &format!("defenseclaw_stepup_outcomes_total{{outcome=\"{outcome}\"}}"),
                ) == *n
            })
            .then_some(())
    })
    .await
    .unwrap();
}

/// One scrape of a daemon started with [`listen_env`], as `series -> value`.
pub(crate) async fn scrape(daemon: &TestDaemon) -> HashMap<String, f64> {
    samples(&tcp(daemon, GET).await)
}
