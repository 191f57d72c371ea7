//! The `otlp` sink against an OTLP/HTTP receiver decoding with the official
//! protobuf types: every entry arrives in order with its resource attributes
//! and hash, across 503s, carrying the authentication header; head records
//! are signed with the key `status` shows; a partial success is not retried;
//! a wrong token is refused and reported without the token.

use std::collections::{BTreeMap, HashSet};

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use serde_json::Value;
use tonic::transport::Channel;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::otlp::{OtlpReceiver, Record};
use defenseclaw_testkit::wait_for;

use super::export::{DELIVERY, as_refs, block_many, status};

fn otlp_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DEFENSECLAW_EXPORT__OTEL__KIND", "otlp".into()),
        ("DEFENSECLAW_EXPORT__OTEL__URL", url.into()),
        ("DEFENSECLAW_EXPORT__OTEL__BATCH_SIZE", "4".into()),
        ("DEFENSECLAW_EXPORT__OTEL__FLUSH_INTERVAL_MS", "20".into()),
        ("DEFENSECLAW_EXPORT__OTEL__MAX_BACKOFF_SECS", "1".into()),
        ("DEFENSECLAW_EXPORT__OTEL__TIMEOUT_SECS", "5".into()),
    ]
}

async fn stored(c: &mut ControlClient<Channel>) -> BTreeMap<u64, pb::AuditEntry> {
    c.list_audit(pb::ListAuditRequest {
        limit: 0,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
    .into_iter()
    .map(|e| (e.seq, e))
    .collect()
}

fn is_head(r: &Record) -> bool {
    r.attr("type").as_deref() == Some("head")
}

/// Waits until every seq up to `head` arrived as an entry record.
async fn wait_all(rx: &OtlpReceiver, head: u64) -> Vec<Record> {
    wait_for("the collector to receive every entry", DELIVERY, || async {
        let records = rx.records();
        let seqs: HashSet<u64> = records
            .iter()
            .filter(|r| !is_head(r))
            .filter_map(|r| r.attr("seq")?.parse().ok())
            .collect();
        (1..=head).all(|s| seqs.contains(&s)).then_some(records)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_delivers_every_entry_in_order_across_503s_with_auth_and_signed_heads() {
    let rx = OtlpReceiver::start(Some(("authorization", "Bearer otlp-secret")))
        .await
        .unwrap();
    rx.fail_next(3);
    let mut env = otlp_env(&rx.url);
    env.push(("DEFENSECLAW_EXPORT_OTEL_TOKEN", "otlp-secret".into()));
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "otel", 10).await;
    let st = status(&mut c).await;
    let head = st.audit_head.unwrap().seq;
    let records = wait_all(&rx, head).await;

    // The collector answered 503 first; nothing was lost, nothing unauthenticated.
    assert_eq!(rx.answered_503(), 3);
    assert_eq!(rx.refused_unauthenticated(), 0);
    for r in rx.accepted() {
        assert_eq!(r.content_type, "application/x-protobuf");
    }

    let stored = stored(&mut c).await;
    let mut firsts = Vec::new();
    let mut seen = HashSet::new();
    let mut host = None;
    for r in records.iter().filter(|r| !is_head(r)) {
        // Resource attributes on every record.
        assert_eq!(r.resource["service.name"], "defenseclawd");
        assert_eq!(r.resource["service.version"], env!("CARGO_PKG_VERSION"));
        let host_id = r.resource["host.id"].clone();
        assert!(!host_id.is_empty());
        assert_eq!(host.get_or_insert(host_id.clone()), &host_id);
        // The entry's fields as attributes, its hash as stored.
        let seq: u64 = r.attr("seq").unwrap().parse().unwrap();
        let entry = &stored[&seq];
        assert_eq!(r.attr("hash").unwrap(), entry.hash);
        assert_eq!(r.attr("prev_hash").unwrap(), entry.prev_hash);
        assert_eq!(r.attr("action").unwrap(), entry.action);
        assert_eq!(r.attr("outcome").unwrap(), entry.outcome);
        assert_eq!(r.attr("host_id").unwrap(), host_id);
        assert!(r.attr("actor.id").is_some());
        // The body is the export object plus host_id.
        let body: Value = serde_json::from_str(&r.body().unwrap()).unwrap();
        assert_eq!(body["seq"], seq);
        assert_eq!(body["hash"], entry.hash.as_str());
        assert_eq!(body["host_id"], host_id.as_str());
        assert!(r.record.time_unix_nano > 0);
        if seen.insert(seq) {
            firsts.push(seq);
        }
    }
    assert_eq!(firsts, (1..=head).collect::<Vec<_>>(), "in order");
    for (seq, r) in records
        .iter()
        .filter(|r| is_head(r) && r.attr("seq").is_some())
        .map(|r| (r.attr("seq").unwrap().parse::<u64>().unwrap(), r))
    {
        // Head records are signed with the key status shows.
        let body: Value = serde_json::from_str(&r.body().unwrap()).unwrap();
        assert_eq!(body["public_key"], st.export_signing_key.as_str());
        assert_eq!(body["hash"], stored[&seq].hash.as_str());
        assert_eq!(body["signature"].as_str().unwrap().len(), 128);
    }

    // Status: the sink by name and kind, caught up; the token nowhere.
    let st = wait_for("the cursor to reach the head", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let st = status(&mut c).await;
            (st.exporters.first()?.cursor >= head).then_some(st)
        }
    })
    .await
    .unwrap();
    assert_eq!(st.exporters[0].name, "otel");
    assert_eq!(st.exporters[0].kind, "otlp");
    assert_eq!(st.exporters[0].state, "ok");
    assert_eq!(st.export_signing_key.len(), 64);
    assert!(!format!("{st:?}").contains("otlp-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_auth_header_a_wrong_token_and_a_partial_success() {
    // The token under a header of the operator's choosing.
    let rx = OtlpReceiver::start(Some(("x-api-key", "right-key")))
        .await
        .unwrap();
    let mut env = otlp_env(&rx.url);
    env.push(("DEFENSECLAW_EXPORT__OTEL__AUTH_HEADER", "x-api-key".into()));
    env.push(("DEFENSECLAW_EXPORT_OTEL_TOKEN", "wrong-key".into()));
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "refused", 2).await;
    // A wrong token: refused, retried, reported without the token, cursor held.
    let st = wait_for("the sink to report the refusal", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let st = status(&mut c).await;
            let e = st.exporters.first()?;
            (e.state != "ok" && e.last_error.contains("401")).then_some(st)
        }
    })
    .await
    .unwrap();
    assert!(rx.refused_unauthenticated() >= 1);
    assert!(rx.accepted().is_empty());
    assert_eq!(st.exporters[0].cursor, 0);
    assert!(st.exporters[0].lag > 0);
    assert!(!format!("{st:?}").contains("wrong-key"));
    drop(c);
    drop(d);

    // The right token: accepted; a partial success is not retried (OTLP
    // spec) and the cursor moves past it.
    rx.partial_next(1);
    let env: Vec<(&'static str, String)> = env
        .into_iter()
        .map(|(k, v)| {
            if k == "DEFENSECLAW_EXPORT_OTEL_TOKEN" {
                (k, "right-key".into())
            } else {
                (k, v)
            }
        })
        .collect();
    let d = TestDaemon::start_with(&as_refs(&env)).await.unwrap();
    let mut c = d.client().await.unwrap();
    block_many(&mut c, "accepted", 3).await;
    let head = status(&mut c).await.audit_head.unwrap().seq;
    wait_all(&rx, head).await;
    let st = wait_for("the cursor to reach the head", DELIVERY, || {
        let mut c = c.clone();
        async move {
            let st = status(&mut c).await;
            (st.exporters.first()?.cursor >= head).then_some(st)
        }
    })
    .await
    .unwrap();
    assert_eq!(st.exporters[0].state, "ok");
    assert_eq!(rx.answered_partial(), 1);

    // No token but an auth header: the sink does not start, and says why.
    let err = TestDaemon::start_with(&as_refs(&otlp_env_with_header(&rx.url)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth_header") && err.contains("no token"),
        "{err}"
    );
}

fn otlp_env_with_header(url: &str) -> Vec<(&'static str, String)> {
    let mut env = otlp_env(url);
    env.push(("DEFENSECLAW_EXPORT__OTEL__AUTH_HEADER", "x-api-key".into()));
    env
}
