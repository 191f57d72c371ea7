//! Step-up against the real local identity provider (CIBA in poll mode): a
//! change on a HIGH target waits for a human; approve, deny, timeout, the
//! daemon's own proposal on a CRITICAL scan, coalescing, and a restart while
//! a request is pending.

use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::idp::{CibaSelector, IdentityProvider, IdpOptions};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::skill;

pub(crate) const OPERATOR: &str = "auth0|operator1";
pub(crate) const SECOND: &str = "auth0|operator2";

pub(crate) async fn provider() -> IdentityProvider {
    IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)")
}

fn env(idp: &IdentityProvider, expiry: &str) -> Vec<(String, String)> {
    let mut env = idp.daemon_oidc_env();
    env.extend([
        ("DEFENSECLAW_STEPUP__ENABLED".to_owned(), "true".to_owned()),
        (
            "DEFENSECLAW_STEPUP__APPROVER".to_owned(),
            format!("requester,{SECOND}"),
        ),
        (
            "DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS".to_owned(),
            expiry.to_owned(),
        ),
    ]);
    env
}

async fn start(dir: Option<tempfile::TempDir>, env: &[(String, String)]) -> TestDaemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match dir {
        Some(d) => TestDaemon::start_in(d, &pairs).await.unwrap(),
        None => TestDaemon::start_with(&pairs).await.unwrap(),
    }
}

pub(crate) async fn operator_token(idp: &IdentityProvider) -> String {
    idp.sign_token(
        json!({}),
        json!({"sub": OPERATOR, "scope": "openid skills:write", "email": "operator1@example.com",
               "name": "Operator One", "azp": idp.cli_client_id(), "exp": (time::OffsetDateTime::now_utc().unix_timestamp() + 3600)}),
    )
    .await
    .unwrap()
}

pub(crate) fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Waits up to `wait` for the phone prompt showing `binding`, then approves or denies it.
pub(crate) async fn answer_ciba(
    idp: &IdentityProvider,
    wait: Duration,
    binding: &str,
    approve: bool,
) {
    let asked = idp
        .wait_for_ciba(wait, |p| p.binding_message.as_deref() == Some(binding))
        .await
        .unwrap();
    let which = CibaSelector::AuthReqId(asked.auth_req_id);
    if approve {
        idp.approve_ciba(&which).await.unwrap();
    } else {
        idp.deny_ciba(&which).await.unwrap();
    }
}

fn report(name: &str, severity: pb::Severity) -> pb::ScanReport {
    pb::ScanReport {
        scanner: "test".into(),
        target: skill(name),
        findings: vec![pb::FindingInput {
            rule_id: "T-1".into(),
            severity: severity as i32,
            title: "reads ~/.ssh and posts it".into(),
            ..Default::default()
        }],
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

pub(crate) async fn outcome(
    c: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    id: &str,
) -> pb::StepUp {
    let mut stream = c
        .watch_step_up(pb::StepUpRef { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(s) = stream.next().await {
            let s = s.unwrap();
            if s.status != "pending" {
                return s;
            }
        }
        panic!("watch ended without an outcome");
    })
    .await;
    waited.expect("no outcome in time")
}

pub(crate) fn verdict(c: &pb::CheckReply) -> pb::Verdict {
    pb::Verdict::try_from(c.verdict).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_deny_coalesce_and_auto_proposal() {
    let idp = provider().await;
    let mut with_metrics = env(&idp, "120");
    with_metrics.push(crate::metrics::listen_env());
    let d = start(None, &with_metrics).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;

    // A HIGH finding makes the skill need a human for changes.
    c.submit_scan_report(bearer(report("risky", pb::Severity::High), &token))
        .await
        .unwrap();
    let reply = c
        .set_enforcement(bearer(set("risky", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner();
    let pending = reply.pending.expect("the block waits for approval");
    assert!(
        pending.binding_message.contains(&pending.request_id),
        "{pending:?}"
    );
    assert!(pending.binding_message.contains("block"));
    assert_eq!(
        pending.approver, OPERATOR,
        "a true step-up asks the requester"
    );
    // Held: the check fails closed while pending.
    let v = c
        .check_target(skill("risky").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked);
    assert!(v.reason.contains("pending approval"), "{}", v.reason);
    let shown = c
        .get_target(skill("risky").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.pending.unwrap().request_id, pending.request_id);

    // The same request again joins the first.
    let again = c
        .set_enforcement(bearer(set("risky", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pending.unwrap().request_id, pending.request_id);

    // The "phone" shows the binding message; the human approves.
    let asked = idp
        .wait_for_ciba(Duration::from_secs(60), |p| {
            p.binding_message.as_deref() == Some(pending.binding_message.as_str())
        })
        .await
        .unwrap();
    assert_eq!(asked.sub, OPERATOR);
    idp.approve_ciba(&CibaSelector::AuthReqId(asked.auth_req_id))
        .await
        .unwrap();
    let done = outcome(&mut c, &pending.request_id).await;
    assert_eq!(done.status, "approved");
    let approver: Value = serde_json::from_str(&done.approver_json).unwrap();
    assert_eq!(approver["sub"], OPERATOR);
    let v = c
        .check_target(skill("risky").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked);
    assert_eq!(v.decided_by, OPERATOR);

    let entries = c
        .list_audit(pb::ListAuditRequest {
            target: skill("risky"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let approved = entries
        .iter()
        .find(|e| e.action == "stepup-approved")
        .expect("approval audited");
    let details: Value = serde_json::from_str(&approved.details_json).unwrap();
    assert_eq!(details["human_confirmed"], true);
    assert_eq!(details["request_id"], pending.request_id);
    assert_eq!(details["approver"]["sub"], OPERATOR);
    assert_eq!(details["approver"]["email"], "operator1@example.com");
    assert_eq!(details["requester"]["id"], OPERATOR);
    let block = entries
        .iter()
        .find(|e| e.action == "block")
        .expect("the block committed");
    assert!(
        block.details_json.contains("\"human_confirmed\":true"),
        "{}",
        block.details_json
    );

    // Deny: a requested unblock does not happen.
    let reply = c
        .set_enforcement(bearer(set("risky", pb::EnforcementAction::Unblock), &token))
        .await
        .unwrap()
        .into_inner();
    let pending = reply.pending.unwrap();
    answer_ciba(
        &idp,
        Duration::from_secs(60),
        &pending.binding_message,
        false,
    )
    .await;
    assert_eq!(outcome(&mut c, &pending.request_id).await.status, "denied");
    let v = c
        .check_target(skill("risky").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verdict(&v),
        pb::Verdict::Blocked,
        "the denied unblock did not happen"
    );

    // A CRITICAL scan report: the daemon proposes a block itself, asking the listed approver.
    c.submit_scan_report(bearer(report("worse", pb::Severity::Critical), &token))
        .await
        .unwrap();
    let proposals = c
        .list_step_ups(pb::ListStepUpsRequest {
            pending_only: true,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .stepups;
    let proposal = proposals
        .iter()
        .find(|s| s.target.as_ref().unwrap().name == "worse")
        .expect("a proposed block");
    assert_eq!(proposal.approver_sub, SECOND);
    let v = c
        .check_target(skill("worse").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked, "held while pending");
    let asked = idp
        .wait_for_ciba(Duration::from_secs(60), |p| p.sub == SECOND)
        .await
        .unwrap();
    // The approver overrides the proposal: denied → the target is allowed, named override.
    idp.deny_ciba(&CibaSelector::AuthReqId(asked.auth_req_id))
        .await
        .unwrap();
    assert_eq!(outcome(&mut c, &proposal.id).await.status, "denied");
    let v = c
        .check_target(skill("worse").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Allowed);
    assert!(v.reason.contains("override"), "{}", v.reason);
    crate::metrics::wait_for_stepup_outcomes(
        &d,
        &[("approved", 1.0), ("denied", 2.0), ("timed_out", 0.0)],
    )
    .await;
    assert!(
        c.verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_is_distinct_from_deny_and_restart_resumes_or_times_out() {
    let idp = provider().await;
    let dir = tempfile::tempdir().unwrap();
    let mut with_metrics = env(&idp, "3");
    with_metrics.push(crate::metrics::listen_env());
    let mut d = start(Some(dir), &with_metrics).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.submit_scan_report(bearer(report("slow", pb::Severity::High), &token))
        .await
        .unwrap();
    let pending = c
        .set_enforcement(bearer(set("slow", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner()
        .pending
        .unwrap();
    // Nobody answers: timed out, and the policy (keep_blocked) commits the block unconfirmed.
    let done = outcome(&mut c, &pending.request_id).await;
    assert_eq!(done.status, "timed_out");
    crate::metrics::wait_for_stepup_outcomes(&d, &[("timed_out", 1.0), ("denied", 0.0)]).await;
    let v = c
        .check_target(skill("slow").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked);
    let entries = c
        .list_audit(pb::ListAuditRequest {
            target: skill("slow"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let timed = entries
        .iter()
        .find(|e| e.action == "stepup-timed-out")
        .expect("timeout audited");
    assert!(
        timed.details_json.contains("\"human_confirmed\":false"),
        "{}",
        timed.details_json
    );

    // A request pending while the daemon stops: after its deadline it becomes timed_out at start.
    c.submit_scan_report(bearer(report("later", pb::Severity::High), &token))
        .await
        .unwrap();
    let pending = c
        .set_enforcement(bearer(set("later", pb::EnforcementAction::Allow), &token))
        .await
        .unwrap()
        .into_inner()
        .pending
        .unwrap();
    d.stop().await.unwrap();
    // Restart only once the request's own deadline (as the daemon reported it) has passed.
    let deadline = time::OffsetDateTime::parse(
        &pending.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    defenseclaw_testkit::wait_for("the request's deadline", Duration::from_secs(30), || {
        let passed = time::OffsetDateTime::now_utc() >= deadline;
        async move { passed.then_some(()) }
    })
    .await
    .unwrap();
    let dir = d.dir;
    let d = start(Some(dir), &env(&idp, "120")).await;
    let mut c = d.client().await.unwrap();
    let s = c
        .get_step_up(pb::StepUpRef {
            id: pending.request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, "timed_out", "{s:?}");
    let v = c
        .check_target(skill("later").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        verdict(&v),
        pb::Verdict::Allowed,
        "an unconfirmed allow does not happen"
    );

    // Pending across a restart within its deadline: polling resumes and the approval lands.
    let pending = c
        .set_enforcement(bearer(set("later", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner()
        .pending
        .unwrap();
    let asked = idp
        .wait_for_ciba(Duration::from_secs(60), |p| {
            p.binding_message.as_deref() == Some(pending.binding_message.as_str())
        })
        .await
        .unwrap();
    let mut d = d;
    d.stop().await.unwrap();
    idp.approve_ciba(&CibaSelector::AuthReqId(asked.auth_req_id))
        .await
        .unwrap();
    let dir = d.dir;
    let d = start(Some(dir), &env(&idp, "120")).await;
    let mut c = d.client().await.unwrap();
    assert_eq!(
        outcome(&mut c, &pending.request_id).await.status,
        "approved"
    );
    let v = c
        .check_target(skill("later").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_and_user_without_push_end_as_error_under_policy() {
    let mut idp = provider().await;
    let mut vars = env(&idp, "60");
    // The daemon's own proposals go to a user who never enrolled a push device.
    vars.retain(|(k, _)| k != "DEFENSECLAW_STEPUP__APPROVER");
    vars.push((
        "DEFENSECLAW_STEPUP__APPROVER".into(),
        "requester,auth0|nopush".into(),
    ));
    let d = start(None, &vars).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;

    // CRITICAL scan → proposed block → the approver has no push: error, and the
    // default policy (keep_blocked) commits the block without human confirmation.
    c.submit_scan_report(bearer(report("nopush", pb::Severity::Critical), &token))
        .await
        .unwrap();
    let proposal = c
        .list_step_ups(pb::ListStepUpsRequest {
            pending_only: false,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .stepups
        .into_iter()
        .find(|s| s.target.as_ref().unwrap().name == "nopush")
        .expect("a proposal");
    let done = outcome(&mut c, &proposal.id).await;
    assert_eq!(done.status, "error", "{done:?}");
    assert!(
        done.outcome_reason.to_lowercase().contains("push")
            || done.outcome_reason.contains("enrol"),
        "{}",
        done.outcome_reason
    );
    let v = c
        .check_target(skill("nopush").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked);

    // The provider goes down while an operator's block is requested: error, recorded with the reason.
    c.submit_scan_report(bearer(report("down", pb::Severity::High), &token))
        .await
        .unwrap();
    idp.stop().await.unwrap();
    let pending = c
        .set_enforcement(bearer(set("down", pb::EnforcementAction::Block), &token))
        .await
        .unwrap()
        .into_inner()
        .pending
        .expect("held for approval");
    let v = c
        .check_target(skill("down").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verdict(&v),
        pb::Verdict::Blocked,
        "held while the request is open"
    );
    let done = outcome(&mut c, &pending.request_id).await;
    assert_eq!(done.status, "error");
    let entries = c
        .list_audit(pb::ListAuditRequest {
            target: skill("down"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let err = entries
        .iter()
        .find(|e| e.action == "stepup-error")
        .expect("the error is audited");
    assert!(
        err.details_json.contains("\"human_confirmed\":false"),
        "{}",
        err.details_json
    );
    assert!(!err.reason.is_empty());
    let v = c
        .check_target(skill("down").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict(&v), pb::Verdict::Blocked, "fail closed");
}
