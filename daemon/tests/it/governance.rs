//! Targets, enforcement, findings, the check path, validation and access control.

use defenseclaw_proto::v1 as pb;
use pb::EnforcementAction::{Allow, Block, Unblock};
use tonic::Code;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{mcp, set, skill, verify};

#[tokio::test]
async fn block_allow_unblock_are_idempotent_audited_and_checked_from_memory() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();

    let check = |v: pb::CheckReply| pb::Verdict::try_from(v.verdict).unwrap();
    assert_eq!(
        check(
            c.check_target(skill("evil").unwrap())
                .await
                .unwrap()
                .into_inner()
        ),
        pb::Verdict::Unknown
    );

    let r = c
        .set_enforcement(set(skill("evil"), Block, "exfiltrates keys"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.audit_seq, 1);
    let r2 = c
        .set_enforcement(set(skill("evil"), Block, "again"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r2.changed, "second block must be a no-op");
    let v = c
        .check_target(skill("evil").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check(v.clone()), pb::Verdict::Blocked);
    assert_eq!(v.reason, "exfiltrates keys");
    assert_eq!(v.decided_by, "uid:0");

    c.set_enforcement(set(mcp("github"), Allow, "reviewed"))
        .await
        .unwrap();
    assert_eq!(
        check(
            c.check_target(mcp("github").unwrap())
                .await
                .unwrap()
                .into_inner()
        ),
        pb::Verdict::Allowed
    );
    // Same name, other kind: independent.
    assert_eq!(
        check(
            c.check_target(skill("github").unwrap())
                .await
                .unwrap()
                .into_inner()
        ),
        pb::Verdict::Unknown
    );

    c.set_enforcement(set(skill("evil"), Unblock, "false alarm"))
        .await
        .unwrap();
    assert_eq!(
        check(
            c.check_target(skill("evil").unwrap())
                .await
                .unwrap()
                .into_inner()
        ),
        pb::Verdict::Unknown
    );

    let audit = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = audit
        .iter()
        .rev()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("block", "success"),
            ("block", "unchanged"),
            ("allow", "success"),
            ("unblock", "success")
        ]
    );
    let actor = audit[0].actor.clone().unwrap();
    assert_eq!(
        (actor.id.as_str(), actor.auth_method.as_str(), actor.uid),
        ("uid:0", "local", 0)
    );
    assert_eq!(
        actor.pid,
        std::process::id(),
        "peer pid comes from the kernel"
    );

    let list = c
        .list_targets(pb::ListTargetsRequest {
            kind: pb::TargetKind::Skill as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.targets.len(), 1);
    assert!(verify(&mut c, "").await.unwrap().ok);
}

#[tokio::test]
async fn invalid_input_is_rejected_naming_the_field_and_writes_nothing() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    let cases = [
        (set(skill("a/b"), Block, ""), "target.name"),
        (set(skill(""), Block, ""), "target.name"),
        (set(skill("nul\0byte"), Block, ""), "target.name"),
        (set(skill(&"x".repeat(500)), Block, ""), "target.name"),
        (set(None, Block, ""), "target"),
        (
            set(
                Some(pb::TargetRef {
                    kind: 0,
                    name: "x".into(),
                }),
                Block,
                "",
            ),
            "target",
        ),
        (
            set(
                Some(pb::TargetRef {
                    kind: 99,
                    name: "x".into(),
                }),
                Block,
                "",
            ),
            "target",
        ),
        (
            pb::SetEnforcementRequest {
                target: skill("x"),
                action: 0,
                reason: String::new(),
                connections: Vec::new(),
            },
            "action",
        ),
        (set(skill("x"), Block, "bell\u{7}"), "reason"),
    ];
    for (req, field) in cases {
        let err = c.set_enforcement(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let report = pb::ScanReport {
        scanner: "s".into(),
        target: skill("t"),
        findings: vec![pb::FindingInput {
            rule_id: "R".into(),
            severity: 0,
            title: "t".into(),
            ..Default::default()
        }],
    };
    let err = c.submit_scan_report(report).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("findings.severity"),
        "{}",
        err.message()
    );

    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let counts = status.counts.unwrap();
    assert_eq!(
        (counts.targets, counts.audit_entries),
        (0, 0),
        "nothing written"
    );
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let d = TestDaemon::start_with(&[("DEFENSECLAW_SERVER__MAX_MESSAGE_BYTES", "65536")])
        .await
        .unwrap();
    let mut c = d.client().await.unwrap();
    let report = pb::ScanReport {
        scanner: "s".into(),
        target: skill("t"),
        findings: vec![pb::FindingInput {
            rule_id: "R".into(),
            severity: pb::Severity::High as i32,
            title: "t".into(),
            description: "x".repeat(100_000),
            ..Default::default()
        }],
    };
    let err = c.submit_scan_report(report).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    let counts = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .counts
        .unwrap();
    assert_eq!(counts.audit_entries, 0);
}

#[tokio::test]
async fn findings_are_recorded_replaced_listed_and_dismissed_with_audit() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    let finding = |rule: &str, sev: pb::Severity| pb::FindingInput {
        rule_id: rule.into(),
        severity: sev as i32,
        title: format!("{rule} title"),
        description: "d".into(),
        location: "SKILL.md".into(),
        line: 7,
        ..Default::default()
    };
    let reply = c
        .submit_scan_report(pb::ScanReport {
            scanner: "cisco".into(),
            target: skill("s1"),
            findings: vec![
                finding("A", pb::Severity::High),
                finding("B", pb::Severity::Low),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.findings.len(), 2);
    let high = c
        .list_findings(pb::ListFindingsRequest {
            target: skill("s1"),
            min_severity: pb::Severity::Medium as i32,
            include_dismissed: false,
        })
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert_eq!(high.len(), 1);
    assert_eq!(high[0].rule_id, "A");

    let id = high[0].id;
    let err = c
        .dismiss_finding(pb::DismissFindingRequest {
            id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let dismissed = c
        .dismiss_finding(pb::DismissFindingRequest {
            id,
            reason: "accepted risk".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .finding
        .unwrap();
    assert!(dismissed.dismissed);
    assert_eq!(dismissed.dismissed_by, "uid:0");
    let again = c
        .dismiss_finding(pb::DismissFindingRequest {
            id,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let missing = c
        .dismiss_finding(pb::DismissFindingRequest {
            id: 9999,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A new report from the same scanner replaces its open findings; the dismissed one stays.
    c.submit_scan_report(pb::ScanReport {
        scanner: "cisco".into(),
        target: skill("s1"),
        findings: vec![finding("C", pb::Severity::Critical)],
    })
    .await
    .unwrap();
    let detail = c
        .get_target(skill("s1").unwrap())
        .await
        .unwrap()
        .into_inner();
    let mut rules: Vec<_> = detail
        .findings
        .iter()
        .map(|f| (f.rule_id.clone(), f.dismissed))
        .collect();
    rules.sort();
    assert_eq!(rules, [("A".to_string(), true), ("C".to_string(), false)]);
    let summary = detail.summary.unwrap();
    assert_eq!(summary.open_findings, 1);
    assert_eq!(summary.max_open_severity, pb::Severity::Critical as i32);

    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = entries.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["scan-report", "dismiss-finding", "scan-report"]);
    assert_eq!(entries[1].reason, "accepted risk");
}

#[tokio::test]
async fn a_disallowed_uid_is_refused_and_the_refusal_is_audited() {
    // Only a uid nobody has may mutate: the test's own (root) calls are refused.
    let d = TestDaemon::start_with(&[("DEFENSECLAW_ACCESS__MUTATE_UIDS", "4242420")])
        .await
        .unwrap();
    let mut c = d.client().await.unwrap();
    let err = c
        .set_enforcement(set(skill("x"), Block, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("SetEnforcement"),
        "{}",
        err.message()
    );
    // Reads stay open.
    let v = c
        .check_target(skill("x").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.verdict, pb::Verdict::Unknown as i32);
    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].action.as_str(), entries[0].outcome.as_str()),
        ("permission-denied", "refused")
    );
    assert_eq!(entries[0].actor.as_ref().unwrap().uid, 0);
}

#[tokio::test]
async fn group_membership_grants_mutation() {
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_ACCESS__MUTATE_UIDS", "4242420"),
        ("DEFENSECLAW_ACCESS__MUTATE_GIDS", "0"),
    ])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();
    c.set_enforcement(set(skill("x"), Block, "")).await.unwrap();
}

#[tokio::test]
async fn audit_filters_and_follow_stream() {
    use tokio_stream::StreamExt;
    let d = TestDaemon::start().await.unwrap();
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
    c.set_enforcement(set(mcp("b"), Block, "")).await.unwrap();
    c.set_enforcement(set(skill("a"), Allow, "")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = follow.next().await.unwrap().unwrap();
        seen.push(e.seq);
    }
    assert_eq!(
        seen,
        [1, 2, 3],
        "backlog then live, in order, without duplicates"
    );

    let only_a = c
        .list_audit(pb::ListAuditRequest {
            target: skill("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(only_a.len(), 2);
    let by_actor = c
        .list_audit(pb::ListAuditRequest {
            actor: "root".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(by_actor.len(), 1);
    assert_eq!(by_actor[0].seq, 3);
    let future = c
        .list_audit(pb::ListAuditRequest {
            since: "2999-01-01T00:00:00Z".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(future.is_empty());
    let bad = c
        .list_audit(pb::ListAuditRequest {
            since: "yesterday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let exported: Vec<_> = c
        .export_audit(pb::ExportAuditRequest {})
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap().seq)
        .collect()
        .await;
    assert_eq!(exported, [1, 2, 3]);
}

#[tokio::test]
async fn concurrent_clients_lose_no_update_and_keep_the_chain_linear() {
    let d = TestDaemon::start().await.unwrap();
    let mut handles = Vec::new();
    for client_no in 0..16 {
        let mut c = d.client().await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let name = format!("c{client_no}-s{i}");
                let r = c
                    .set_enforcement(set(skill(&name), Block, "load"))
                    .await
                    .unwrap()
                    .into_inner();
                seqs.push(r.audit_seq);
                let v = c
                    .check_target(skill(&name).unwrap())
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(
                    v.verdict,
                    pb::Verdict::Blocked as i32,
                    "a committed block is visible at once"
                );
                // All clients also touch one shared target.
                c.set_enforcement(set(
                    skill("shared"),
                    if i % 2 == 0 { Block } else { Allow },
                    "",
                ))
                .await
                .unwrap();
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 16 * 25, "every call got its own audit entry");
    let mut c = d.client().await.unwrap();
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let counts = status.counts.unwrap();
    assert_eq!(counts.targets, 16 * 25 + 1);
    assert_eq!(counts.audit_entries, 16 * 25 * 2);
    let v = verify(&mut c, "").await.unwrap();
    assert!(v.ok, "{}", v.problem);
    assert_eq!(v.entries_checked, 16 * 25 * 2);
}
