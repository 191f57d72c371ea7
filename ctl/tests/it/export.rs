//! `audit verify --from-export`: a file sink's export verifies, and an edited
//! or a dropped record is named by its seq.

use std::time::Duration;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::wait_for;
use serde_json::Value;

use crate::cli::{Ctl, ctl_at};

async fn verify(file: &std::path::Path) -> crate::cli::Run {
    // No daemon is needed: a socket nobody listens on.
    ctl_at(
        std::path::Path::new("/nonexistent/defenseclawd.sock"),
        &[
            "-o",
            "json",
            "audit",
            "verify",
            "--from-export",
            file.to_str().unwrap(),
        ],
    )
    .await
}

/// A daemon with a file sink `local` writing to `<dir>/audit.jsonl`, plus `extra` settings.
async fn file_sink_daemon(
    dir: &std::path::Path,
    extra: &[(&'static str, &str)],
) -> (TestDaemon, std::path::PathBuf) {
    let path = dir.join("audit.jsonl");
    let url = format!("file://{}", path.display());
    let mut env = vec![
        ("DEFENSECLAW_EXPORT__LOCAL__KIND", "file"),
        ("DEFENSECLAW_EXPORT__LOCAL__URL", url.as_str()),
        ("DEFENSECLAW_EXPORT__LOCAL__FLUSH_INTERVAL_MS", "20"),
    ];
    env.extend_from_slice(extra);
    let d = TestDaemon::start_with(&env).await.unwrap();
    (d, path)
}

/// Every record the file sink has written so far.
fn exported(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(path: &std::path::Path, records: &[Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn verify_from_export_names_an_edited_and_a_dropped_record() {
    let out = tempfile::tempdir().unwrap();
    let (d, path) = file_sink_daemon(out.path(), &[]).await;
    for i in 0..6 {
        d.ctl(&["skill", "block", &format!("s{i}"), "--reason", "exported"])
            .await
            .ok();
    }
    let status = d.ctl(&["-o", "json", "status"]).await.ok().json();
    let head = status["audit_head"]["seq"].as_u64().unwrap();
    assert!(head >= 6);
    let records: Vec<Value> = wait_for(
        "the export to hold every entry",
        Duration::from_secs(60),
        || async {
            let records = exported(&path);
            records
                .iter()
                .any(|r| r.get("type").is_none() && r["seq"] == head)
                .then_some(records)
        },
    )
    .await
    .unwrap();
    let exporters = d.ctl(&["-o", "json", "status"]).await.ok().json()["exporters"].clone();
    assert_eq!(exporters[0]["name"], "local");
    assert_eq!(exporters[0]["kind"], "file");

    let intact = verify(&path).await.ok().json();
    assert_eq!(intact["ok"], true, "{intact}");
    assert_eq!(intact["entries_checked"], head);

    // The same export from `audit export` (plus host_id) verifies too.
    let exported = d.ctl(&["-o", "json", "audit", "export"]).await.ok();
    let from_cli = out.path().join("cli.jsonl");
    std::fs::write(&from_cli, &exported.stdout).unwrap();
    assert_eq!(verify(&from_cli).await.ok().json()["ok"], true);

    let entry_index = |seq: u64| {
        records
            .iter()
            .position(|r| r.get("type").is_none() && r["seq"] == seq)
            .unwrap()
    };

    // One record edited.
    let mut edited = records.clone();
    edited[entry_index(3)]["reason"] = Value::from("nothing to see");
    let file = out.path().join("edited.jsonl");
    write_lines(&file, &edited);
    let run = verify(&file).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert_eq!(run.json()["first_bad_seq"], 3);
    assert!(
        run.stderr.contains("entry 3 was modified"),
        "{}",
        run.stderr
    );

    // One record dropped.
    let mut dropped = records.clone();
    dropped.remove(entry_index(4));
    let file = out.path().join("dropped.jsonl");
    write_lines(&file, &dropped);
    let run = verify(&file).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert_eq!(run.json()["first_bad_seq"], 4);
    assert!(run.stderr.contains("entry 4 is missing"), "{}", run.stderr);

    // Repeats (at-least-once delivery) are fine; a cut-off tail is not.
    let mut repeated = records.clone();
    repeated.extend(records.iter().take(3).cloned());
    let file = out.path().join("repeated.jsonl");
    write_lines(&file, &repeated);
    assert_eq!(verify(&file).await.ok().json()["ok"], true);
    let mut cut: Vec<Value> = records
        .iter()
        .filter(|r| r.get("type").is_some() || r["seq"].as_u64() < Some(head))
        .cloned()
        .collect();
    let head_hash = records[entry_index(head)]["hash"].clone();
    cut.push(serde_json::json!({"type": "head", "host_id": records[0]["host_id"], "seq": head, "hash": head_hash, "ts": "", "filtered": false}));
    let file = out.path().join("cut.jsonl");
    write_lines(&file, &cut);
    let run = verify(&file).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert_eq!(run.json()["first_bad_seq"], head);
}

async fn verify_pinned(file: &std::path::Path, key: &str) -> crate::cli::Run {
    ctl_at(
        std::path::Path::new("/nonexistent/defenseclawd.sock"),
        &[
            "-o",
            "json",
            "audit",
            "verify",
            "--from-export",
            file.to_str().unwrap(),
            "--public-key",
            key,
        ],
    )
    .await
}

#[tokio::test]
async fn signed_head_records_verify_against_the_pinned_key_and_a_forged_one_is_named_by_line() {
    let out = tempfile::tempdir().unwrap();
    let (d, path) = file_sink_daemon(
        out.path(),
        &[("DEFENSECLAW_EXPORT__LOCAL__HEAD_EVERY_SECS", "1")],
    )
    .await;
    for i in 0..4 {
        d.ctl(&["skill", "block", &format!("k{i}"), "--reason", "signed"])
            .await
            .ok();
    }
    let status = d.ctl(&["-o", "json", "status"]).await.ok().json();
    let key = status["export_signing_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 64, "{status}");
    let head = status["audit_head"]["seq"].as_u64().unwrap();
    // The key is private to the state dir and never shown in full elsewhere.
    let key_file = d.db_path().with_file_name("export-signing.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let seed = std::fs::read_to_string(&key_file).unwrap();
    assert!(!status.to_string().contains(seed.trim()));

    // Wait for the entries and a head record naming the last one.
    let records: Vec<Value> = wait_for(
        "a head record after every entry",
        Duration::from_secs(60),
        || async {
            let records = exported(&path);
            let headed = records
                .iter()
                .any(|r| r.get("type").is_some() && r["seq"].as_u64() >= Some(head));
            headed.then_some(records)
        },
    )
    .await
    .unwrap();
    let heads: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("type").is_some())
        .map(|(i, _)| i)
        .collect();
    for &i in &heads {
        assert_eq!(records[i]["public_key"], key.as_str());
        assert_eq!(records[i]["signature"].as_str().unwrap().len(), 128);
    }

    let intact = verify_pinned(&path, &key).await.ok().json();
    assert_eq!(intact["ok"], true, "{intact}");
    assert_eq!(intact["heads_signed"], heads.len());
    assert_eq!(intact["key_pinned"], true);

    // An edited head record (its time) is named by its line, pinned or not.
    let last = *heads.last().unwrap();
    let mut edited = records.clone();
    edited[last]["ts"] = Value::from("2000-01-01T00:00:00.000000Z");
    let file = out.path().join("edited-head.jsonl");
    write_lines(&file, &edited);
    for run in [verify(&file).await, verify_pinned(&file, &key).await] {
        assert_eq!(run.code, 8, "{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("line {}: the head record", last + 1))
                && run.stderr.contains("forged or edited"),
            "{}",
            run.stderr
        );
    }

    // A head record signed by another key passes its own signature check but
    // not the pin; an unsigned one is refused when the key is pinned.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let other_pub = hex::encode(other.verifying_key().to_bytes());
    let mut forged = records.clone();
    let h = &mut forged[last];
    let msg = serde_json::json!([
        "defenseclaw-head-v1",
        h["host_id"],
        h["seq"],
        h["hash"],
        h["ts"],
        h["filtered"],
        other_pub
    ])
    .to_string();
    let sig = ed25519_dalek::Signer::sign(&other, msg.as_bytes());
    h["public_key"] = Value::from(other_pub.as_str());
    h["signature"] = Value::from(hex::encode(sig.to_bytes()));
    let file = out.path().join("forged-head.jsonl");
    write_lines(&file, &forged);
    let run = verify_pinned(&file, &key).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("line {}: the head record", last + 1))
            && run.stderr.contains("another key than the pinned key"),
        "{}",
        run.stderr
    );
    let mut unsigned = records.clone();
    for k in ["signature", "public_key", "key_id"] {
        unsigned[last].as_object_mut().unwrap().remove(k);
    }
    let file = out.path().join("unsigned-head.jsonl");
    write_lines(&file, &unsigned);
    let run = verify_pinned(&file, &key).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(run.stderr.contains("unsigned"), "{}", run.stderr);

    // The wrong pin fails every head; a malformed pin is a usage error.
    let run = verify_pinned(&path, &other_pub).await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    let run = verify_pinned(&path, "not-a-key").await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--public-key"), "{}", run.stderr);
}
