//! Tamper detection: rows changed directly in SQLite are found and named.

use defenseclaw_proto::v1 as pb;
use pb::EnforcementAction::Block;
use rusqlite::Connection;

use crate::support::{TestDaemon, set, skill, verify};

async fn daemon_with_entries(n: usize) -> (TestDaemon, String) {
    let d = TestDaemon::start().await;
    let mut c = d.client().await;
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

#[tokio::test]
async fn modified_entry_is_named() {
    let (d, _) = daemon_with_entries(5).await;
    db(&d)
        .execute(
            "UPDATE audit SET reason = 'nothing to see' WHERE seq = 3",
            [],
        )
        .unwrap();
    let v = verify(&mut d.client().await, "").await;
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
    let v = verify(&mut d.client().await, "").await;
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
}

#[tokio::test]
async fn deleted_entry_is_named() {
    let (d, _) = daemon_with_entries(5).await;
    db(&d)
        .execute("DELETE FROM audit WHERE seq = 2", [])
        .unwrap();
    let v = verify(&mut d.client().await, "").await;
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
    let v = verify(&mut d.client().await, "").await;
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
    let v = verify(&mut d.client().await, "").await;
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
}

#[tokio::test]
async fn truncated_tail_is_caught_by_a_recorded_head() {
    let (d, head) = daemon_with_entries(5).await;
    let mut c = d.client().await;
    assert!(verify(&mut c, &head).await.ok);
    db(&d)
        .execute("DELETE FROM audit WHERE seq >= 4", [])
        .unwrap();
    let plain = verify(&mut c, "").await;
    assert!(
        plain.ok,
        "without a head, a clean truncation is undetectable"
    );
    let v = verify(&mut c, &head).await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 4);
    assert!(v.problem.contains("truncated"), "{}", v.problem);
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_a_recorded_head() {
    let (d, _) = daemon_with_entries(3).await;
    let mut c = d.client().await;
    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let head_two = format!("2:{}", entries.iter().find(|e| e.seq == 2).unwrap().hash);
    // Entry 2 rewritten with a self-consistent but different hash.
    db(&d)
        .execute("UPDATE audit SET hash = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef' WHERE seq = 2", [])
        .unwrap();
    let v = verify(&mut c, &head_two).await;
    assert_eq!((v.ok, v.first_bad_seq), (false, 2));
    let bad = c
        .verify_audit(pb::VerifyAuditRequest {
            head: "2:xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}
