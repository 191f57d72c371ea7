//! Attacks on "protection never goes down without a human", by an operator
//! without the approver's phone, with step-up on against the real local identity
//! provider: rewriting findings, claiming names, admission, the allow list,
//! cancelling the daemon's proposal, misconfiguration, and step-up bounds. Each
//! test asserts the refusal or hold and its audit entry; a property test drives
//! random operator sequences and checks the invariant through the API.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::idp::IdentityProvider;
use pb::control_client::ControlClient;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::scanning::{BENIGN, MALICIOUS, write_skill};
use crate::stepup::{
    OPERATOR, SECOND, answer_ciba, bearer, operator_token, outcome, provider, verdict,
};
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::skill;

type Client = ControlClient<Channel>;

/// Step-up on: the requester approves operator requests, SECOND the daemon's proposals.
fn stepup_env(idp: &IdentityProvider, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = idp.daemon_oidc_env();
    env.extend(
        [
            ("DEFENSECLAW_STEPUP__ENABLED", "true"),
            (
                "DEFENSECLAW_STEPUP__APPROVER",
                &format!("requester,{SECOND}"),
            ),
            ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "300"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

async fn start(env: &[(String, String)]) -> TestDaemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestDaemon::start_with(&pairs).await.unwrap()
}

fn report(scanner: &str, name: &str, findings: &[(&str, pb::Severity)]) -> pb::ScanReport {
    pb::ScanReport {
        scanner: scanner.into(),
        target: skill(name),
        findings: findings
            .iter()
            .map(|(rule, severity)| pb::FindingInput {
                rule_id: (*rule).into(),
                severity: *severity as i32,
                title: format!("{rule} finding"),
                location: "SKILL.md".into(),
                line: 1,
                ..Default::default()
            })
            .collect(),
    }
}

fn set(name: &str, action: pb::EnforcementAction) -> pb::SetEnforcementRequest {
    pb::SetEnforcementRequest {
        target: skill(name),
        action: action as i32,
        reason: "operator request".into(),
        connections: Vec::new(),
    }
}

fn scan(path: &Path, install: bool) -> pb::ScanTargetRequest {
    pb::ScanTargetRequest {
        kind: pb::TargetKind::Skill as i32,
        path: path.display().to_string(),
        name: String::new(),
        server: String::new(),
        install,
    }
}

async fn check(c: &mut Client, name: &str) -> pb::CheckReply {
    c.check_target(skill(name).unwrap())
        .await
        .unwrap()
        .into_inner()
}

async fn audit(c: &mut Client, name: &str) -> Vec<pb::AuditEntry> {
    c.list_audit(pb::ListAuditRequest {
        target: skill(name),
        limit: 10_000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

fn details(e: &pb::AuditEntry) -> Value {
    serde_json::from_str(&e.details_json).unwrap()
}

/// The daemon's pending proposal (requester `system:*`) for `name`.
async fn proposal(c: &mut Client, name: &str) -> pb::StepUp {
    defenseclaw_testkit::wait_for("the daemon's proposal", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            c.list_step_ups(pb::ListStepUpsRequest {
                pending_only: true,
                limit: 1000,
            })
            .await
            .ok()?
            .into_inner()
            .stepups
            .into_iter()
            .find(|s| {
                s.target.as_ref().is_some_and(|t| t.name == name)
                    && s.requester
                        .as_ref()
                        .is_some_and(|r| r.id.starts_with("system:"))
            })
        }
    })
    .await
    .unwrap()
}

async fn open_findings(c: &mut Client, name: &str) -> Vec<pb::Finding> {
    c.list_findings(pb::ListFindingsRequest {
        target: skill(name),
        min_severity: 0,
        include_dismissed: false,
    })
    .await
    .unwrap()
    .into_inner()
    .findings
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_report_then_unblock_does_not_lower_protection() {
    let idp = provider().await;
    let d = start(&stepup_env(&idp, &[])).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;

    // CRITICAL → the daemon proposes a block → the approver approves it.
    c.submit_scan_report(bearer(
        report("ext", "victim", &[("X-1", pb::Severity::Critical)]),
        &token,
    ))
    .await
    .unwrap();
    let proposed = proposal(&mut c, "victim").await;
    answer_ciba(
        &idp,
        Duration::from_secs(60),
        &proposed.binding_message,
        true,
    )
    .await;
    assert_eq!(outcome(&mut c, &proposed.id).await.status, "approved");
    assert_eq!(
        verdict(&check(&mut c, "victim").await),
        pb::Verdict::Blocked
    );
    let critical = open_findings(&mut c, "victim").await;
    assert_eq!(critical.len(), 1);

    // The same scanner lowers it: the CRITICAL finding stays open beside the LOW one.
    c.submit_scan_report(bearer(
        report("ext", "victim", &[("X-1", pb::Severity::Low)]),
        &token,
    ))
    .await
    .unwrap();
    let open = open_findings(&mut c, "victim").await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.iter().any(|f| f.id == critical[0].id));

    // The same scanner now reports nothing: the CRITICAL finding stays open.
    let reply = c
        .submit_scan_report(bearer(report("ext", "victim", &[]), &token))
        .await
        .unwrap()
        .into_inner();
    let still = open_findings(&mut c, "victim").await;
    assert_eq!(
        still.iter().map(|f| f.id).collect::<Vec<_>>(),
        [critical[0].id],
        "a report cannot close a finding at or above min_severity"
    );
    let entries = audit(&mut c, "victim").await;
    let rewrite = entries
        .iter()
        .find(|e| e.seq == reply.audit_seq)
        .expect("the empty report is audited");
    assert_eq!(
        details(rewrite)["kept_open"],
        serde_json::json!([critical[0].id])
    );

    // Unblock: held for a human, not committed.
    let reply = c
        .set_enforcement(bearer(
            set("victim", pb::EnforcementAction::Unblock),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let pending = reply.pending.expect("the unblock waits for a human");
    assert!(!reply.changed);
    assert_eq!(
        verdict(&check(&mut c, "victim").await),
        pb::Verdict::Blocked
    );
    let entries = audit(&mut c, "victim").await;
    let requested = entries
        .iter()
        .find(|e| e.action == "stepup-requested" && details(e)["request_id"] == pending.request_id)
        .expect("the held unblock is audited");
    assert_eq!(details(requested)["action"], "unblock");
    assert!(
        !entries.iter().any(|e| e.action == "unblock"),
        "no unblock committed"
    );
}

#[tokio::test]
async fn scan_target_cannot_claim_another_skills_name() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    let skills = tempfile::tempdir().unwrap();
    let evil = write_skill(skills.path(), "evil", BENIGN);
    let mut req = scan(&evil, true);
    req.name = "victim".into();
    let err = c.scan_target(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("folder"), "{}", err.message());
    // Nothing was written under the victim's name but the refusal.
    let entries = audit(&mut c, "victim").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0].action.as_str(), entries[0].outcome.as_str()),
        ("scan-target", "denied")
    );
    assert_eq!(details(&entries[0])["folder_name"], "evil");
    assert_eq!(
        c.get_target(skill("victim").unwrap())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The folder's own name is accepted.
    let mut req = scan(&evil, true);
    req.name = "evil".into();
    let results = c.scan_target(req).await.unwrap().into_inner().results;
    assert_eq!(results[0].target.as_ref().unwrap().name, "evil");
}

#[tokio::test]
async fn the_daemons_scanner_names_are_reserved_and_unscanned_targets_audited_with_the_peer() {
    let d = TestDaemon::start().await.unwrap();
    let mut c = d.client().await.unwrap();
    for name in ["defenseclaw", "DefenseClaw"] {
        let err = c
            .submit_scan_report(report(name, "victim", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let entries = audit(&mut c, "victim").await;
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert_eq!(
            (e.action.as_str(), e.outcome.as_str()),
            ("scan-report", "denied")
        );
        assert_eq!(details(e)["peer"]["uid"], 0);
        assert_eq!(details(e)["peer"]["pid"], std::process::id());
    }
    assert!(open_findings(&mut c, "victim").await.is_empty());

    // An external report on a target the daemon never scanned: recorded, with the peer.
    let reply = c
        .submit_scan_report(report("ext", "victim", &[("E-1", pb::Severity::Low)]))
        .await
        .unwrap()
        .into_inner();
    let entries = audit(&mut c, "victim").await;
    let recorded = entries.iter().find(|e| e.seq == reply.audit_seq).unwrap();
    let peer = &details(recorded)["peer"];
    assert_eq!(peer["daemon_scanned"], false);
    assert_eq!(peer["uid"], 0);
    assert_eq!(peer["pid"], std::process::id());
}

#[tokio::test(flavor = "multi_thread")]
async fn install_on_a_clean_rescan_waits_for_a_human() {
    let idp = provider().await;
    let d = start(&stepup_env(&idp, &[])).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    // HIGH (below auto_block_severity): protected, not blocked.
    c.submit_scan_report(bearer(
        report("ext", "victim", &[("X-1", pb::Severity::High)]),
        &token,
    ))
    .await
    .unwrap();
    assert_eq!(
        verdict(&check(&mut c, "victim").await),
        pb::Verdict::Unknown
    );

    let skills = tempfile::tempdir().unwrap();
    let clean = write_skill(skills.path(), "victim", BENIGN);
    let held = install_is_held(&mut c, &token, &clean, None).await;
    assert_eq!(held.actor.as_ref().unwrap().id, OPERATOR);
}

/// Installs the skill folder `victim` and checks the admission waits for a human:
/// the result is pending, the target reads blocked, an `allow` step-up (other
/// than `besides`) is audited and nothing was allowed. Returns that entry.
async fn install_is_held(
    c: &mut Client,
    token: &str,
    folder: &Path,
    besides: Option<&str>,
) -> pb::AuditEntry {
    let results = c
        .scan_target(bearer(scan(folder, true), token))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].decision, "pending", "{:?}", results[0]);
    assert_eq!(verdict(&check(c, "victim").await), pb::Verdict::Blocked);
    let entries = audit(c, "victim").await;
    let held = entries
        .iter()
        .find(|e| {
            e.action == "stepup-requested"
                && besides.is_none_or(|id| details(e)["request_id"] != id)
        })
        .expect("the admission is held and audited")
        .clone();
    assert_eq!(details(&held)["action"], "allow");
    assert!(!entries.iter().any(|e| e.action == "allow"), "not admitted");
    held
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_list_match_does_not_unblock_a_critical_target() {
    let idp = provider().await;
    let d = start(&stepup_env(
        &idp,
        &[("DEFENSECLAW_ADMISSION__ALLOW_LIST", "skill/victim")],
    ))
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.submit_scan_report(bearer(
        report("ext", "victim", &[("X-1", pb::Severity::Critical)]),
        &token,
    ))
    .await
    .unwrap();
    let proposed = proposal(&mut c, "victim").await;
    let skills = tempfile::tempdir().unwrap();
    let folder = write_skill(skills.path(), "victim", MALICIOUS);
    install_is_held(&mut c, &token, &folder, Some(&proposed.id)).await;
}

#[tokio::test]
async fn a_skill_md_naming_another_skill_cannot_take_over_its_findings() {
    let watched = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(&[
        (
            "DEFENSECLAW_SCANNER__WATCH_DIRS",
            watched.path().to_str().unwrap(),
        ),
        ("DEFENSECLAW_SCANNER__WATCH_DEBOUNCE_MS", "100"),
    ])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();
    let victim = write_skill(elsewhere.path(), "victim", MALICIOUS);
    let results = c
        .scan_target(scan(&victim, true))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].decision, "blocked");
    let before = open_findings(&mut c, "victim").await;
    assert!(!before.is_empty());

    // A clean folder that calls itself "victim" is dropped into a watched directory.
    let drop = watched.path().join("drop");
    std::fs::create_dir(&drop).unwrap();
    std::fs::write(
        drop.join("SKILL.md"),
        format!("---\nname: victim\ndescription: harmless.\n---\n\n# victim\n\n{BENIGN}\n"),
    )
    .unwrap();
    let seen = defenseclaw_testkit::wait_for(
        "the watcher to scan the dropped folder",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let entries = audit(&mut c, "drop").await;
                entries.into_iter().find(|e| e.action == "scan-report")
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(seen.actor.as_ref().unwrap().id, "system:watcher");
    assert_eq!(
        open_findings(&mut c, "victim").await,
        before,
        "the victim's findings are untouched"
    );
    assert_eq!(
        verdict(&check(&mut c, "victim").await),
        pb::Verdict::Blocked
    );
    assert!(
        !audit(&mut c, "victim")
            .await
            .iter()
            .any(|e| e.actor.as_ref().unwrap().id == "system:watcher"),
        "nothing was recorded under the victim's name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_daemons_proposal_ends_blocked() {
    let idp = provider().await;
    let d = start(&stepup_env(&idp, &[])).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.submit_scan_report(bearer(
        report("ext", "victim", &[("X-1", pb::Severity::Critical)]),
        &token,
    ))
    .await
    .unwrap();
    let proposed = proposal(&mut c, "victim").await;
    let cancelled = c
        .cancel_step_up(bearer(
            pb::StepUpRef {
                id: proposed.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "cancelled");
    let v = check(&mut c, "victim").await;
    assert_eq!(verdict(&v), pb::Verdict::Blocked);
    assert!(
        !v.reason.contains("pending approval"),
        "decided, not held: {}",
        v.reason
    );
    let entries = audit(&mut c, "victim").await;
    let cancel = entries
        .iter()
        .find(|e| e.action == "stepup-cancelled")
        .expect("the cancel is audited");
    let d = details(cancel);
    assert_eq!(d["policy"], "fail_closed");
    assert_eq!(d["human_confirmed"], false);
    assert_eq!(d["committed"], true);
    assert_eq!(cancel.actor.as_ref().unwrap().id, OPERATOR);
    let block = entries
        .iter()
        .find(|e| e.action == "block")
        .expect("the block committed");
    assert_eq!(details(block)["human_confirmed"], false);
}

/// Every contradiction and the key its message must name.
fn contradictions() -> Vec<(Vec<(&'static str, &'static str)>, &'static str)> {
    let oidc = vec![
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", "https://tenant.example.com/"),
        (
            "DEFENSECLAW_AUTH__AUDIENCE",
            "https://defenseclaw.local/api",
        ),
        ("DEFENSECLAW_AUTH__DAEMON_CLIENT_ID", "daemon-client"),
        ("DEFENSECLAW_STEPUP__ENABLED", "true"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = oidc.clone();
        v.extend_from_slice(extra);
        v
    };
    vec![
        (
            with(&[("DEFENSECLAW_STEPUP__APPROVER", "requester")]),
            "stepup.approver",
        ),
        (
            with(&[
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|a"),
                ("DEFENSECLAW_STEPUP__MIN_SEVERITY", "CRITICAL"),
                ("DEFENSECLAW_STEPUP__AUTO_BLOCK_SEVERITY", "HIGH"),
            ]),
            "stepup.auto_block_severity",
        ),
        (
            vec![
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|a"),
            ],
            "stepup.enabled",
        ),
        (
            with(&[
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|a"),
                ("DEFENSECLAW_STEPUP__MAX_PENDING_PER_TARGET", "0"),
            ]),
            "stepup.max_pending_per_target",
        ),
        (
            with(&[
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|a"),
                ("DEFENSECLAW_STEPUP__MAX_PENDING_PER_REQUESTER", "0"),
            ]),
            "stepup.max_pending_per_requester",
        ),
    ]
}

/// Runs the daemon binary to completion; a start that should have been refused
/// but serves instead fails the test after 30 s rather than hanging it.
async fn run_binary(home: &Path, env: &[(&str, &str)], check_config: bool) -> std::process::Output {
    let config = home.join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawd"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(home.join("d.sock"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEFENSECLAW_HOME", home.join("home"))
        .env("DEFENSECLAW_OPENCLAW__ENABLED", "false")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if check_config {
        cmd.arg("--check-config");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .expect("the daemon binary did not exit within 30 s")
        .unwrap()
}

#[tokio::test]
async fn misconfigured_step_up_stops_the_start_and_the_check() {
    use defenseclawd::config::{ConfigFile, Settings};
    let dir = tempfile::tempdir().unwrap();
    for (vars, key) in contradictions() {
        let env =
            defenseclaw_testkit::daemon::daemon_env(dir.path(), &dir.path().join("s.sock"), &vars);
        let err = Settings::load(&ConfigFile::None, &env).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
        for check_config in [true, false] {
            let out = run_binary(dir.path(), &vars, check_config).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{key} (check {check_config}): {stderr}"
            );
            assert!(stderr.contains(key), "{key}: {stderr}");
        }
    }
    // Step-up without the daemon's client secret fails the check as it fails the start.
    let mut vars = contradictions().remove(0).0;
    vars.retain(|(k, _)| *k != "DEFENSECLAW_STEPUP__APPROVER");
    vars.push(("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|a"));
    let out = run_binary(dir.path(), &vars, true).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("stepup.enabled") && stderr.contains("client secret"),
        "{stderr}"
    );
    // The embedded defaults still pass.
    let out = run_binary(dir.path(), &[], true).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn seventy_thousand_step_up_ids_are_unique_and_fit_the_binding_message() {
    let ids: HashSet<String> = (0..70_000)
        .map(|_| defenseclawd::oidc::new_request_code())
        .collect();
    assert_eq!(ids.len(), 70_000, "64-bit ids do not collide");
    for id in ids.iter().take(100) {
        assert!(id.starts_with("DC-") && id.len() == 19, "{id}");
        let message = defenseclawd::oidc::binding_message(id, "unblock", "skill", &"n".repeat(200));
        assert!(message.starts_with(id.as_str()));
        defenseclawd::oidc::validate_binding_message(&message).unwrap();
    }
}

/// Five `request`s are refused by `cap`; the refusal is audited once, and that entry returned.
async fn refused_by_cap(
    c: &mut Client,
    token: &str,
    request: pb::SetEnforcementRequest,
    cap: &str,
) -> pb::AuditEntry {
    let name = request.target.as_ref().unwrap().name.clone();
    for _ in 0..5 {
        let err = c
            .set_enforcement(bearer(request.clone(), token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains(cap), "{}", err.message());
    }
    let refused: Vec<_> = audit(c, &name)
        .await
        .into_iter()
        .filter(|e| e.action == "stepup-refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(details(&refused[0])["cap"], cap);
    refused.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_caps_refuse_and_audit_once() {
    let idp = provider().await;
    let d = start(&stepup_env(
        &idp,
        &[
            ("DEFENSECLAW_STEPUP__MAX_PENDING_PER_REQUESTER", "3"),
            ("DEFENSECLAW_STEPUP__MAX_PENDING_PER_TARGET", "1"),
        ],
    ))
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    for name in ["a", "b", "c", "d"] {
        c.submit_scan_report(bearer(
            report("ext", name, &[("X-1", pb::Severity::High)]),
            &token,
        ))
        .await
        .unwrap();
    }
    let first = c
        .set_enforcement(bearer(set("a", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner()
        .pending
        .unwrap();
    // The same request joins; another one on the target is refused, audited once.
    let again = c
        .set_enforcement(bearer(set("a", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pending.unwrap().request_id, first.request_id);
    let refused = refused_by_cap(
        &mut c,
        &token,
        set("a", pb::EnforcementAction::Allow),
        "max_pending_per_target",
    )
    .await;
    assert_eq!(refused.actor.as_ref().unwrap().id, OPERATOR);

    for name in ["b", "c"] {
        c.set_enforcement(bearer(set(name, pb::EnforcementAction::Block), &token))
            .await
            .unwrap()
            .into_inner()
            .pending
            .unwrap();
    }
    refused_by_cap(
        &mut c,
        &token,
        set("d", pb::EnforcementAction::Block),
        "max_pending_per_requester",
    )
    .await;
    let pending = c
        .list_step_ups(pb::ListStepUpsRequest {
            pending_only: true,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .stepups;
    assert_eq!(pending.len(), 3, "nothing beyond the caps was opened");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_expired_in_the_queue_never_reaches_the_provider() {
    let idp = provider().await;
    let d = start(&stepup_env(
        &idp,
        &[("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "3")],
    ))
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    let sent_before = bc_authorize_count(&idp).await;
    // Six requests for one approver: five are sent this minute, the sixth queues
    // behind the per-approver limit until its deadline has passed.
    let names = ["q1", "q2", "q3", "q4", "q5", "q6"];
    let mut ids = Vec::new();
    for name in names {
        c.submit_scan_report(bearer(
            report("ext", name, &[("X-1", pb::Severity::High)]),
            &token,
        ))
        .await
        .unwrap();
        let pending = c
            .set_enforcement(bearer(set(name, pb::EnforcementAction::Block), &token))
            .await
            .unwrap()
            .into_inner()
            .pending
            .unwrap();
        ids.push(pending.request_id);
    }
    let mut never_sent = Vec::new();
    for id in &ids {
        let done = outcome(&mut c, id).await;
        assert_eq!(done.status, "timed_out", "{done:?}");
        if done.outcome_reason.contains("never sent") {
            never_sent.push(done);
        }
    }
    assert_eq!(
        never_sent.len(),
        1,
        "exactly the queued request was not sent"
    );
    assert_eq!(
        bc_authorize_count(&idp).await - sent_before,
        5,
        "the provider saw only the five sent requests"
    );
    let target = never_sent[0].target.as_ref().unwrap().name.clone();
    let entries = audit(&mut c, &target).await;
    let timed = entries
        .iter()
        .find(|e| e.action == "stepup-timed-out")
        .expect("the expiry is audited");
    assert!(timed.reason.contains("never sent"), "{}", timed.reason);
    assert_eq!(details(timed)["human_confirmed"], false);
    // on_timeout = keep_blocked: the block commits unconfirmed.
    assert_eq!(verdict(&check(&mut c, &target).await), pb::Verdict::Blocked);
}

async fn bc_authorize_count(idp: &IdentityProvider) -> usize {
    idp.requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.path == "/bc-authorize")
        .count()
}

mod property {
    //! Random operator sequences without approvals; the invariant read back through the API.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    /// Two targets keep sequences dense in interactions; `gamma` is on the allow list.
    const NAMES: [&str; 2] = ["alpha", "gamma"];

    #[derive(Debug, Clone)]
    enum Op {
        /// An external scanner's report (may drop or lower what it reported before).
        Report(usize, Vec<(u8, i32)>),
        /// Write the skill folder (malicious or clean) and scan it, installing or not.
        Scan(usize, bool, bool),
        Set(usize, pb::EnforcementAction),
        /// Dismiss the n-th open finding of a target.
        Dismiss(usize, usize),
        /// Cancel the n-th pending step-up.
        Cancel(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let target = 0..NAMES.len();
        let finding = (0u8..3, 1i32..=5);
        prop_oneof![
            3 => (target.clone(), prop::collection::vec(finding, 0..3))
                .prop_map(|(t, f)| Op::Report(t, f)),
            1 => (target.clone(), any::<bool>(), any::<bool>()).prop_map(|(t, m, i)| Op::Scan(t, m, i)),
            3 => (
                target.clone(),
                prop_oneof![
                    Just(pb::EnforcementAction::Block),
                    Just(pb::EnforcementAction::Allow),
                    Just(pb::EnforcementAction::Unblock)
                ]
            )
                .prop_map(|(t, a)| Op::Set(t, a)),
            1 => (target, 0usize..4).prop_map(|(t, n)| Op::Dismiss(t, n)),
            2 => (0usize..4).prop_map(Op::Cancel),
        ]
    }

    async fn apply(c: &mut Client, token: &str, skills: &Path, op: &Op) {
        // Refusals (caps, already-ended requests, bad states) are part of the game.
        match op {
            Op::Report(t, findings) => {
                let findings: Vec<(String, pb::Severity)> = findings
                    .iter()
                    .map(|(rule, sev)| (format!("R-{rule}"), pb::Severity::try_from(*sev).unwrap()))
                    .collect();
                let refs: Vec<(&str, pb::Severity)> =
                    findings.iter().map(|(r, s)| (r.as_str(), *s)).collect();
                let _ = c
                    .submit_scan_report(bearer(report("ext", NAMES[*t], &refs), token))
                    .await;
            }
            Op::Scan(t, malicious, install) => {
                let dir = skills.join(NAMES[*t]);
                let _ = std::fs::remove_dir_all(&dir);
                write_skill(
                    skills,
                    NAMES[*t],
                    if *malicious { MALICIOUS } else { BENIGN },
                );
                let _ = c.scan_target(bearer(scan(&dir, *install), token)).await;
            }
            Op::Set(t, action) => {
                let _ = c
                    .set_enforcement(bearer(set(NAMES[*t], *action), token))
                    .await;
            }
            Op::Dismiss(t, n) => {
                let open = open_findings(c, NAMES[*t]).await;
                if let Some(f) = open.get(*n % open.len().max(1)) {
                    let _ = c
                        .dismiss_finding(bearer(
                            pb::DismissFindingRequest {
                                id: f.id,
                                reason: "accepted risk".into(),
                            },
                            token,
                        ))
                        .await;
                }
            }
            Op::Cancel(n) => {
                let pending = c
                    .list_step_ups(pb::ListStepUpsRequest {
                        pending_only: true,
                        limit: 100,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .stepups;
                if let Some(s) = pending.get(*n % pending.len().max(1)) {
                    let _ = c
                        .cancel_step_up(bearer(pb::StepUpRef { id: s.id.clone() }, token))
                        .await;
                }
            }
        }
    }

    /// No target whose findings ever reached HIGH is left unblocked and unheld
    /// unless a human approved a step-up on it.
    async fn assert_invariant(c: &mut Client) -> Result<(), TestCaseError> {
        for name in NAMES {
            let findings = c
                .list_findings(pb::ListFindingsRequest {
                    target: skill(name),
                    min_severity: pb::Severity::High as i32,
                    include_dismissed: true,
                })
                .await
                .unwrap()
                .into_inner()
                .findings;
            let entries = audit(c, name).await;
            let reached_high = !findings.is_empty()
                || entries.iter().any(|e| {
                    e.action == "scan-report"
                        && e.outcome == "recorded"
                        && e.severity >= pb::Severity::High as i32
                });
            if !reached_high {
                continue;
            }
            let approved = entries
                .iter()
                .any(|e| e.action == "stepup-approved" && details(e)["human_confirmed"] == true);
            let v = check(c, name).await;
            prop_assert!(
                approved || verdict(&v) == pb::Verdict::Blocked,
                "{name} reached HIGH but is {:?} ({}) with no approved step-up; audit: {:#?}",
                verdict(&v),
                v.reason,
                entries
                    .iter()
                    .map(|e| format!("{} {} {} {}", e.action, e.outcome, e.reason, e.details_json))
                    .collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    /// Runs one sequence against a fresh daemon and checks the invariant.
    async fn run_case(
        env: &[(String, String)],
        token: &str,
        ops: &[Op],
    ) -> Result<(), TestCaseError> {
        let mut d = start(env).await;
        let mut c = d.client().await.unwrap();
        let skills = tempfile::tempdir().unwrap();
        for op in ops {
            apply(&mut c, token, skills.path(), op).await;
        }
        let checked = assert_invariant(&mut c).await;
        d.stop().await.unwrap();
        checked
    }

    fn env(idp: &IdentityProvider) -> Vec<(String, String)> {
        stepup_env(
            idp,
            &[
                // Every finding that needs a human also makes the daemon propose a block.
                ("DEFENSECLAW_STEPUP__AUTO_BLOCK_SEVERITY", "HIGH"),
                ("DEFENSECLAW_ADMISSION__ALLOW_LIST", "skill/gamma"),
            ],
        )
    }

    #[test]
    fn random_operator_sequences_never_lower_protection_without_a_human() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let idp = rt.block_on(provider());
        let token = rt.block_on(operator_token(&idp));
        let env = env(&idp);
        // The sequences of the attacks above, then random ones.
        let known = [
            // CRITICAL, cancel the proposal, an empty report, unblock.
            vec![
                Op::Report(0, vec![(0, 5)]),
                Op::Cancel(0),
                Op::Report(0, vec![]),
                Op::Set(0, pb::EnforcementAction::Unblock),
            ],
            // CRITICAL, the operator's allow while the proposal is pending, cancel the
            // allow (the newest): the proposal still holds the target.
            vec![
                Op::Report(0, vec![(1, 5)]),
                Op::Set(0, pb::EnforcementAction::Allow),
                Op::Cancel(0),
            ],
        ];
        for ops in known {
            if let Err(e) = rt.block_on(run_case(&env, &token, &ops)) {
                panic!("{ops:?}: {e}");
            }
        }
        let mut runner = TestRunner::new(Config {
            cases: 48,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&prop::collection::vec(op(), 1..=12), |ops| {
            rt.block_on(run_case(&env, &token, &ops))
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
