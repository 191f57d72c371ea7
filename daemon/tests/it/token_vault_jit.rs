//! Just-in-time credentials and revocation at the source, against the real
//! local identity provider: an idle-suspended grant resumed only by its
//! approver over CIBA (approve, deny, no answer), the refusal that names the
//! resume command when nobody can be asked, and `--at-provider` revocation of
//! the sealed refresh token.

use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclaw_testkit::idp::{CibaSelector, FailureMode, IdentityProvider};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::token_vault::{
    OPERATOR, SERVER, allow, audit, bearer, env, grants, key_file, operator_token, provider, start,
    until, want,
};

/// Upper bound for readiness waits (never a timing assertion).
const WAIT: Duration = Duration::from_secs(60);

fn held(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("defenseclaw-held")
        .and_then(|v| v.to_str().ok())
}

async fn grant_status(c: &mut ControlClient<Channel>, server: &str) -> String {
    grants(c)
        .await
        .into_iter()
        .find(|g| g.server == server && g.connection == "github")
        .map(|g| g.status)
        .unwrap_or_default()
}

fn details(e: &pb::AuditEntry) -> Value {
    serde_json::from_str(&e.details_json).unwrap_or(Value::Null)
}

/// Starts a token request in the background (it waits for the approver).
fn ask(
    c: &ControlClient<Channel>,
    token: &str,
) -> tokio::task::JoinHandle<Result<pb::ConnectionToken, tonic::Status>> {
    let mut c = c.clone();
    let req = bearer(want(SERVER, "github"), token);
    tokio::spawn(async move { c.get_connection_token(req).await.map(|r| r.into_inner()) })
}

/// The phone prompt to resume SERVER's github grant.
async fn resume_prompt(idp: &IdentityProvider) -> defenseclaw_testkit::idp::PendingCiba {
    let wanted = format!("resume mcp {SERVER} github");
    idp.wait_for_ciba(WAIT, |p| {
        p.binding_message
            .as_deref()
            .is_some_and(|m| m.ends_with(&wanted))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_grant_is_served_again_only_when_its_approver_says_so() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let d = start(
        None,
        &env(
            &idp,
            &[
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
                // Long enough to answer at once, short enough to wait out once.
                ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "15"),
                ("DEFENSECLAW_TOKEN_VAULT__IDLE_SUSPEND_SECS", "1"),
            ],
        ),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.set_enforcement(bearer(allow(SERVER, &[("github", &["repo"])]), &token))
        .await
        .unwrap();
    // Idle past the limit (time has to pass; nothing is measured).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Attack: a caller who could not get the token anyway (no operator token, no stored
    // credential) cannot make the daemon push a prompt to the approver's phone.
    let nobody = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_ne!(held(&nobody), Some("resume-denied"), "{nobody:?}");
    assert!(idp.pending_ciba().await.unwrap().is_empty(), "nobody asked");

    // Approve: the call that found it idle waits for the approver, then is served.
    let call = ask(&c, &token);
    let prompt = resume_prompt(&idp).await;
    assert_eq!(prompt.sub, OPERATOR, "the grant's approver is asked");
    let message = prompt.binding_message.clone().unwrap();
    assert!(message.starts_with("DC-"), "{message}");
    assert_eq!(grant_status(&mut c, SERVER).await, "suspended");
    idp.approve_ciba(&CibaSelector::AuthReqId(prompt.auth_req_id))
        .await
        .unwrap();
    let served = call.await.unwrap().expect("served once approved");
    let issued = idp.provider_tokens().await.unwrap();
    assert_eq!(issued.last().unwrap().access_token, served.access_token);
    assert_eq!(grant_status(&mut c, SERVER).await, "active");
    let entries = audit(&mut c).await;
    let suspended = entries
        .iter()
        .find(|e| e.action == "connection-suspend")
        .expect("the idle suspension is audited");
    assert_eq!(suspended.actor.as_ref().unwrap().id, "system:token-vault");
    let resumed = entries
        .iter()
        .find(|e| e.action == "connection-resume")
        .expect("the resumption is audited");
    assert_eq!(resumed.actor.as_ref().unwrap().id, OPERATOR, "{resumed:?}");
    let why = details(resumed);
    assert_eq!(why["human_confirmed"], true, "{why}");
    assert!(
        message.starts_with(why["stepup"].as_str().unwrap()),
        "{why}"
    );

    // Deny: suspended by hand, the approver says no; it stays suspended.
    let change = pb::ConnectionStatusRequest {
        server: SERVER.into(),
        connection: "github".into(),
        reason: "by hand".into(),
    };
    c.suspend_connection(bearer(change.clone(), &token))
        .await
        .unwrap();
    let call = ask(&c, &token);
    let prompt = resume_prompt(&idp).await;
    idp.deny_ciba(&CibaSelector::AuthReqId(prompt.auth_req_id))
        .await
        .unwrap();
    let denied = call.await.unwrap().unwrap_err();
    assert_eq!(denied.code(), Code::FailedPrecondition, "{denied:?}");
    assert_eq!(held(&denied), Some("resume-denied"), "{denied:?}");
    assert!(denied.message().contains("denied"), "{}", denied.message());
    assert!(
        denied.message().contains(&format!(
            "defenseclawctl connections resume {SERVER} github"
        )),
        "{}",
        denied.message()
    );
    assert_eq!(grant_status(&mut c, SERVER).await, "suspended");

    // No answer: told apart from a denial, and it stays suspended.
    let call = ask(&c, &token);
    let _unanswered = resume_prompt(&idp).await;
    let timed_out = call.await.unwrap().unwrap_err();
    assert_eq!(held(&timed_out), Some("resume-timed-out"), "{timed_out:?}");
    assert!(
        timed_out.message().contains("did not answer"),
        "{}",
        timed_out.message()
    );
    assert_eq!(grant_status(&mut c, SERVER).await, "suspended");
    let entries = audit(&mut c).await;
    for action in ["stepup-denied", "stepup-timed-out"] {
        let e = entries
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} entry"));
        assert_eq!(details(e)["action"], "resume", "{e:?}");
    }
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "connection-resume")
            .count(),
        1,
        "neither a denial nor a timeout resumes it"
    );

    // By hand, an operator still resumes it; the next call is served at once.
    c.resume_connection(bearer(change, &token)).await.unwrap();
    c.get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_step_up_a_suspended_grant_names_the_resume_command() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let d = start(
        None,
        &env(&idp, &[("DEFENSECLAW_TOKEN_VAULT__IDLE_SUSPEND_SECS", "1")]),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(held(&refused), Some("grant-suspended"), "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "defenseclawctl connections resume {SERVER} github"
        )),
        "{}",
        refused.message()
    );
    assert!(idp.pending_ciba().await.unwrap().is_empty(), "nobody asked");
}

/// Refreshes `refresh_token` as the daemon's client: whether the provider still honours it.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_at_provider_kills_the_refresh_token_there_and_a_provider_failure_still_revokes_here()
 {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), 7).display().to_string();
    const OTHER: &str = "gh-two";
    let uid = defenseclaw_common::paths::current_uid().unwrap();
    let uids = format!("{SERVER}={uid};{OTHER}={uid}");
    let d = start(
        None,
        &env(
            &idp,
            &[
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
                ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
                ("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", &uids),
                ("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &key),
            ],
        ),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    // Two unattended grants, each approved on the phone with its own refresh token.
    for server in [SERVER, OTHER] {
        let pending = c
            .set_enforcement(bearer(allow(server, &[("github", &["repo"])]), &token))
            .await
            .unwrap()
            .into_inner()
            .pending
            .expect("a step-up");
        let asked = idp
            .wait_for_ciba(WAIT, |p| {
                p.binding_message.as_deref() == Some(pending.binding_message.as_str())
            })
            .await
            .unwrap();
        idp.approve_ciba(&CibaSelector::AuthReqId(asked.auth_req_id))
            .await
            .unwrap();
        until(WAIT, || {
            let mut c = c.clone();
            async move {
                grants(&mut c)
                    .await
                    .iter()
                    .any(|g| g.server == server && g.unattended)
            }
        })
        .await
        .unwrap();
        // The stored credential works (mode b, no caller token).
        c.get_connection_token(want(server, "github"))
            .await
            .unwrap();
    }
    let first = d
        .stored_refresh_token(SERVER, "github", &[7u8; 32])
        .unwrap();
    let second = d.stored_refresh_token(OTHER, "github", &[7u8; 32]).unwrap();
    assert!(idp.honours_refresh_token(&first).await.unwrap());
    let revoke = |server: &str| pb::RevokeConnectionRequest {
        server: server.into(),
        connection: "github".into(),
        reason: "offboarding".into(),
        at_provider: true,
    };

    // The provider fails: reported, and the grant is revoked here all the same.
    idp.set_failures(&FailureMode {
        error_status: Some(503),
        error_count: Some(-1),
        error_paths: Some(vec!["/oauth/revoke".into()]),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let reply = c
        .revoke_connection(bearer(revoke(SERVER), &token))
        .await
        .unwrap()
        .into_inner();
    idp.reset_failures().await.unwrap();
    let there = reply.at_provider.unwrap();
    assert_eq!(there.outcome, "failed", "{there:?}");
    assert!(!there.error.is_empty(), "{there:?}");
    assert_eq!(reply.grant.unwrap().status, "revoked");
    assert!(
        idp.honours_refresh_token(&first).await.unwrap(),
        "not revoked there"
    );
    let refused = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The provider answers: the refresh token is dead there.
    let reply = c
        .revoke_connection(bearer(revoke(OTHER), &token))
        .await
        .unwrap()
        .into_inner();
    let there = reply.at_provider.unwrap();
    assert_eq!(there.outcome, "revoked", "{there:?}");
    assert_eq!(there.subject_sub, OPERATOR);
    assert!(there.endpoint.ends_with("/oauth/revoke"), "{there:?}");
    assert!(
        !idp.honours_refresh_token(&second).await.unwrap(),
        "revoked there"
    );

    let entries = audit(&mut c).await;
    let revokes: Vec<&pb::AuditEntry> = entries
        .iter()
        .filter(|e| e.action == "connection-revoke")
        .collect();
    assert_eq!(revokes.len(), 2);
    let outcome_of = |server: &str| {
        let e = revokes
            .iter()
            .find(|e| e.target.as_ref().unwrap().name == server)
            .unwrap();
        (e.outcome.clone(), details(e))
    };
    let (outcome, why) = outcome_of(SERVER);
    assert_eq!(outcome, "partial", "{why}");
    assert_eq!(why["at_provider"]["outcome"], "failed", "{why}");
    let (outcome, why) = outcome_of(OTHER);
    assert_eq!(outcome, "success", "{why}");
    assert_eq!(why["at_provider"]["outcome"], "revoked", "{why}");
    // Never the token, anywhere in the log.
    for e in &entries {
        for secret in [&first, &second] {
            assert!(!e.details_json.contains(secret.as_str()), "{e:?}");
            assert!(!e.reason.contains(secret.as_str()), "{e:?}");
        }
    }
}
