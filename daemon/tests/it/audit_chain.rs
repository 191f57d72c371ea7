//! Tamper detection: rows changed directly in SQLite are found and named.

use defenseclaw_proto::v1 as pb;
use defenseclawd::audit::Entry;
use pb::EnforcementAction::Block;
use rusqlite::Connection;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{set, skill, verify};

async fn daemon_with_entries(n: usize) -> (TestDaemon, String) {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    for i in 0..n {
        c.set_enforcement(set(skill(&format!("s{i}")), Block, "r"))
            .await
            .unwrap();
    }
    let head = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .audit_head
        .unwrap();
    (d, format!("{}:{}", head.seq, head.hash))
}

fn db(d: &TestDaemon) -> Connection {
    Connection::open(d.db_path()).unwrap()
}

/// Changes entry `from`'s reason, then recomputes its hash and the hash and
/// `prev_hash` of every later entry, as a forger who knows the encoding would.
fn rewrite_from(d: &TestDaemon, from: u64, reason: &str) {
    let conn = db(d);
    let mut rows = conn
        .prepare(
            "SELECT seq, ts, action, target_kind, target_name, severity, outcome, reason,
                    details, actor, actor_id, prev_hash, hash FROM audit WHERE seq >= ?1 ORDER BY seq",
        )
        .unwrap();
    let entries: Vec<Entry> = rows
        .query_map([from as i64], |r| {
            Ok(Entry {
                seq: r.get::<_, i64>(0)? as u64,
                ts: r.get(1)?,
                action: r.get(2)?,
                target_kind: r.get(3)?,
                target_name: r.get(4)?,
                severity: r.get(5)?,
                outcome: r.get(6)?,
                reason: r.get(7)?,
                details: r.get(8)?,
                actor: r.get(9)?,
                actor_id: r.get(10)?,
                prev_hash: r.get(11)?,
                hash: r.get(12)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!entries.is_empty(), "no entry at {from}");
    let mut prev = entries[0].prev_hash.clone();
    for mut e in entries {
        if e.seq == from {
            e.reason = reason.to_owned();
        }
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        conn.execute(
            "UPDATE audit SET reason = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![e.reason, e.prev_hash, e.hash, e.seq as i64],
        )
        .unwrap();
        prev = e.hash;
    }
}

#[tokio::test]
async fn modified_entry_is_named() {
    let (d, _) = daemon_with_entries(5).await;
    db(&d)
        .execute(
            "UPDATE audit SET reason = 'nothing to see' WHERE seq = 3",
            [],
        )
        .unwrap();
    let v = verify(&mut d.client().await.unwrap(), "").await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 3);
    assert!(v.problem.contains("modified"), "{}", v.problem);
}

#[tokio::test]
async fn modified_actor_id_is_named() {
    let (d, _) = daemon_with_entries(3).await;
    db(&d)
        .execute(
            "UPDATE audit SET actor_id = 'someone-else' WHERE seq = 2",
            [],
        )
        .unwrap();
    let v = verify(&mut d.client().await.unwrap(), "").await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
}

#[tokio::test]
async fn deleted_entry_is_named() {
    let (d, _) = daemon_with_entries(5).await;
    db(&d)
        .execute("DELETE FROM audit WHERE seq = 2", [])
        .unwrap();
    let v = verify(&mut d.client().await.unwrap(), "").await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
    assert!(v.problem.contains("missing"), "{}", v.problem);
}

#[tokio::test]
async fn reordered_entries_are_named() {
    let (d, _) = daemon_with_entries(5).await;
    let conn = db(&d);
    // Swap entries 2 and 4 while keeping their sequence numbers.
    conn.execute_batch(
        "UPDATE audit SET seq = -2 WHERE seq = 2;
         UPDATE audit SET seq = 2 WHERE seq = 4;
         UPDATE audit SET seq = 4 WHERE seq = -2;",
    )
    .unwrap();
    let v = verify(&mut d.client().await.unwrap(), "").await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
}

#[tokio::test]
async fn inserted_entry_is_named() {
    let (d, _) = daemon_with_entries(3).await;
    let conn = db(&d);
    // Make room at seq 2, then put a forged entry there.
    conn.execute_batch(
        "UPDATE audit SET seq = -seq WHERE seq >= 2;
         UPDATE audit SET seq = 1 - seq WHERE seq < 0;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO audit SELECT 2, ts, 'allow', target_kind, target_name, severity, outcome, reason, details,
                actor, actor_id, hash, hash FROM audit WHERE seq = 1",
        [],
    )
    .unwrap();
    let v = verify(&mut d.client().await.unwrap(), "").await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
}

#[tokio::test]
async fn truncated_tail_is_caught_by_a_recorded_head() {
    let (d, head) = daemon_with_entries(5).await;
    let mut c = d.client().await.unwrap();
    assert!(verify(&mut c, &head).await.unwrap().ok);
    db(&d)
        .execute("DELETE FROM audit WHERE seq >= 4", [])
        .unwrap();
    let plain = verify(&mut c, "").await.unwrap();
    assert!(
        plain.ok,
        "without a head, a clean truncation is undetectable"
    );
    let v = verify(&mut c, &head).await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 4);
    assert!(v.problem.contains("truncated"), "{}", v.problem);
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_a_recorded_head() {
    let (d, _) = daemon_with_entries(3).await;
    let mut c = d.client().await.unwrap();
    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let head_two = format!("2:{}", entries.iter().find(|e| e.seq == 2).unwrap().hash);
    // Someone with write access to the file edits entry 2 and re-seals it and
    // every later entry: the chain is self-consistent again.
    rewrite_from(&d, 2, "nothing to see");
    let plain = verify(&mut c, "").await.unwrap();
    assert!(
        plain.ok,
        "a re-sealed chain passes a plain verify: {}",
        plain.problem
    );
    // Only the head recorded before the rewrite tells.
    let v = verify(&mut c, &head_two).await.unwrap();
    assert_eq!((v.ok, v.first_bad_seq), (false, 2), "{}", v.problem);
    let bad = c
        .verify_audit(pb::VerifyAuditRequest {
            head: "2:xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}
