//! Quarantine through the daemon: a round trip across file systems (the
//! skills on tmpfs, the daemon's state elsewhere) that keeps modes and the
//! block, name clashes in both directions that replace nothing, paths the
//! daemon does not know as skills never moved, and admission quarantining a
//! skill it just blocked.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{set, skill};

use crate::scanning::{BENIGN, MALICIOUS, write_skill};

/// A skills folder on tmpfs, on another file system than the daemon's state.
fn skills_on_another_fs(daemon_dir: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir_in("/dev/shm")
        .expect("the quarantine tests need /dev/shm (tmpfs) as a second file system");
    let (a, b) = (
        std::fs::metadata(root.path()).unwrap().dev(),
        std::fs::metadata(daemon_dir).unwrap().dev(),
    );
    assert_ne!(
        a,
        b,
        "/dev/shm and {} are on the same file system: the cross-file-system quarantine cannot be tested here",
        daemon_dir.display()
    );
    root
}

fn quarantine(name: &str) -> pb::QuarantineSkillRequest {
    pb::QuarantineSkillRequest {
        name: name.into(),
        path: String::new(),
        reason: "exfiltrates keys".into(),
    }
}

async fn audit(
    c: &mut defenseclaw_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
) -> Vec<pb::AuditEntry> {
    c.list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

#[tokio::test]
async fn quarantine_and_restore_across_file_systems_replace_nothing_and_keep_the_block() {
    let probe = tempfile::tempdir().unwrap();
    let root = skills_on_another_fs(probe.path());
    let evil = write_skill(root.path(), "evil-helper", MALICIOUS);
    std::fs::write(evil.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(evil.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let d = TestDaemon::start_with(&[(
        "DEFENSECLAW_SCANNER__WATCH_DIRS",
        root.path().to_str().unwrap(),
    )])
    .await
    .unwrap();
    assert_ne!(
        std::fs::metadata(root.path()).unwrap().dev(),
        std::fs::metadata(d.dir.path()).unwrap().dev(),
        "the daemon's state must be on another file system than the skills"
    );
    let mut c = d.client().await.unwrap();
    c.set_enforcement(set(
        skill("evil-helper"),
        pb::EnforcementAction::Block,
        "malicious",
    ))
    .await
    .unwrap();

    let q = c
        .quarantine_skill(quarantine("evil-helper"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.how, "copied", "tmpfs to the state directory is a copy");
    let rec = q.record.unwrap();
    assert_eq!(rec.state, "quarantined");
    assert_eq!(Path::new(&rec.original_path), evil);
    let stored = Path::new(&rec.stored_path);
    assert!(
        stored.starts_with(d.dir.path().join("home/quarantine")),
        "{stored:?}"
    );
    assert!(!evil.exists(), "the folder left the skills directory");
    assert_eq!(
        std::fs::metadata(stored.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );

    // A second folder of the same name: quarantining it would replace the first.
    let again = write_skill(root.path(), "evil-helper", BENIGN);
    let clash = c
        .quarantine_skill(quarantine("evil-helper"))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), tonic::Code::FailedPrecondition, "{clash:?}");
    assert!(again.join("SKILL.md").exists());
    // Restoring onto it would replace it: refused, both kept.
    let clash = c
        .restore_skill(pb::RestoreSkillRequest {
            name: "evil-helper".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), tonic::Code::FailedPrecondition, "{clash:?}");
    assert!(clash.message().contains("already exists"), "{clash:?}");
    assert!(stored.join("SKILL.md").exists());
    assert!(
        std::fs::read_to_string(again.join("SKILL.md"))
            .unwrap()
            .contains(BENIGN.trim())
    );
    let listed = c
        .list_quarantined(pb::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "quarantined");

    std::fs::remove_dir_all(&again).unwrap();
    let r = c
        .restore_skill(pb::RestoreSkillRequest {
            name: "evil-helper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.how, "copied");
    assert!(evil.join("SKILL.md").exists());
    assert!(!stored.exists());
    assert_eq!(
        std::fs::metadata(evil.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    let v = c
        .check_target(skill("evil-helper").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.verdict,
        pb::Verdict::Blocked as i32,
        "a restore does not lower protection"
    );
    assert!(
        c.list_quarantined(pb::ListQuarantinedRequest {})
            .await
            .unwrap()
            .into_inner()
            .records
            .is_empty()
    );

    let entries = audit(&mut c).await;
    let block = entries.iter().find(|e| e.action == "block").unwrap();
    for action in ["skill-quarantine", "skill-restore"] {
        let ok = entries
            .iter()
            .find(|e| e.action == action && e.outcome == "success")
            .unwrap_or_else(|| panic!("no successful {action} in the audit log"));
        assert_eq!(
            ok.actor, block.actor,
            "audited with the operator's identity"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e.action == "skill-restore" && e.outcome == "error"),
        "the refused restore is audited"
    );
    assert!(
        c.verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
}

#[tokio::test]
async fn only_folders_the_daemon_knows_as_skills_are_moved() {
    let watched = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let stray = write_skill(elsewhere.path(), "stray", MALICIOUS);
    let d = TestDaemon::start_with(&[(
        "DEFENSECLAW_SCANNER__WATCH_DIRS",
        watched.path().to_str().unwrap(),
    )])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();
    let err = c
        .quarantine_skill(pb::QuarantineSkillRequest {
            name: "stray".into(),
            path: stray.display().to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(stray.join("SKILL.md").exists());
    let err = c.quarantine_skill(quarantine("stray")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // A path whose folder is not the name.
    let err = c
        .quarantine_skill(pb::QuarantineSkillRequest {
            name: "other".into(),
            path: stray.display().to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = c
        .restore_skill(pb::RestoreSkillRequest {
            name: "stray".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(stray.join("SKILL.md").exists());
}

#[tokio::test]
async fn admission_quarantines_a_skill_it_blocks_when_configured() {
    let probe = tempfile::tempdir().unwrap();
    let root = skills_on_another_fs(probe.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(&[
        (
            "DEFENSECLAW_SCANNER__WATCH_DIRS",
            root.path().to_str().unwrap(),
        ),
        ("DEFENSECLAW_SCANNER__WATCH_DEBOUNCE_MS", "100"),
        ("DEFENSECLAW_ADMISSION__QUARANTINE", "true"),
    ])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();
    // A benign skill appears: scanned, not blocked, left in place.
    let good = write_skill(root.path(), "summarise", BENIGN);
    // A malicious one appears: the watcher's scan blocks it, admission quarantines it.
    let evil = write_skill(root.path(), "evil-helper", MALICIOUS);
    let rec = defenseclaw_testkit::wait_for(
        "admission to quarantine the blocked skill",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .list_quarantined(pb::ListQuarantinedRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .records;
                r.into_iter()
                    .find(|r| r.name == "evil-helper" && r.state == "quarantined")
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(rec.quarantined_by, "system:admission");
    assert!(!evil.exists());
    assert!(good.join("SKILL.md").exists());
    let v = c
        .check_target(skill("evil-helper").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.verdict, pb::Verdict::Blocked as i32);

    // A skill scanned at a path the daemon does not know is blocked, never moved.
    let stray = write_skill(elsewhere.path(), "stray", MALICIOUS);
    let r = c
        .scan_target(pb::ScanTargetRequest {
            kind: pb::TargetKind::Skill as i32,
            path: stray.display().to_string(),
            name: String::new(),
            server: String::new(),
            install: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(r[0].decision, "blocked");
    assert!(
        r[0].notes.iter().any(|n| n.starts_with("not quarantined")),
        "{:?}",
        r[0].notes
    );
    assert!(stray.join("SKILL.md").exists());
}

#[tokio::test]
async fn an_interrupted_quarantine_is_settled_from_what_is_on_disk() {
    use defenseclawd::store::quarantine::QuarantineBegin;
    let watched = tempfile::tempdir().unwrap();
    let done = write_skill(watched.path(), "half-moved", MALICIOUS);
    let undone = write_skill(watched.path(), "not-moved", MALICIOUS);
    let d = TestDaemon::start_with(&[(
        "DEFENSECLAW_SCANNER__WATCH_DIRS",
        watched.path().to_str().unwrap(),
    )])
    .await
    .unwrap();
    let store = d.handle.as_ref().unwrap().store().clone();
    let qdir = d.dir.path().join("home/quarantine");
    std::fs::create_dir_all(&qdir).unwrap();
    let begin = |name: &str, original: &Path| QuarantineBegin {
        name: name.into(),
        original_path: std::fs::canonicalize(original)
            .unwrap()
            .display()
            .to_string(),
        stored_path: qdir.join(name).display().to_string(),
        reason: "crash test".into(),
        actor: defenseclawd::model::Actor::system(),
    };
    // A crash after the copy was renamed into place, before the source went.
    write_skill(&qdir, "half-moved", MALICIOUS);
    store.write(begin("half-moved", &done)).await.unwrap();
    // A crash in the middle of a copy: a partial copy, nothing in place.
    std::fs::create_dir(qdir.join(".not-moved.dc-partial-00aa")).unwrap();
    store.write(begin("not-moved", &undone)).await.unwrap();

    let mut c = d.client().await.unwrap();
    let err = c
        .quarantine_skill(quarantine("half-moved"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("already quarantined"), "{err:?}");
    assert!(
        !done.exists(),
        "the finished copy wins: the source is removed"
    );
    assert!(qdir.join("half-moved/SKILL.md").exists());

    let q = c
        .quarantine_skill(quarantine("not-moved"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.record.unwrap().state, "quarantined");
    assert!(!undone.exists());
    assert!(
        !qdir.join(".not-moved.dc-partial-00aa").exists(),
        "the partial copy is cleaned"
    );
    let records = c
        .list_quarantined(pb::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 2);
    assert!(
        records.iter().all(|r| r.state == "quarantined"),
        "{records:?}"
    );
    let entries = audit(&mut c).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "skill-quarantine-recovered")
            .count(),
        2
    );
}
