//! Attacks on Token Vault and on the audit log's size: a local peer asking for
//! a server's provider token it is not bound to, cached hand-outs nobody would
//! see, a grant re-declared to ride on the previous approver's credential, and
//! a flood of refused calls meant to fill the disk.

use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclaw_testkit::idp::IdentityProvider;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::stepup::answer_ciba;
use crate::token_vault::{
    OPERATOR, SERVER, allow, assert_not_in_state_dir, audit, bearer, env, grants, key_file,
    operator_token, provider, start, token_for, until, want,
};
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::{set, skill, verify};

const WAIT: Duration = Duration::from_secs(60);
/// A server the test process's uid is not listed for.
const VICTIM: &str = "victim-mcp";
const OPERATOR2: &str = "auth0|operator2";

fn my_uid() -> u32 {
    defenseclaw_proto::paths::current_uid().expect("the test's own uid")
}

fn details(e: &pb::AuditEntry) -> Value {
    serde_json::from_str(&e.details_json).unwrap()
}

fn count(e: &pb::AuditEntry) -> u64 {
    details(e)["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("entry {} carries no count: {}", e.seq, e.details_json))
}

/// Every audit entry after `after`, in order.
async fn audit_after(c: &mut ControlClient<Channel>, after: u64) -> Vec<pb::AuditEntry> {
    let mut entries: Vec<pb::AuditEntry> = c
        .list_audit(pb::ListAuditRequest {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.seq > after)
        .collect();
    entries.sort_by_key(|e| e.seq);
    entries
}

async fn head(c: &mut ControlClient<Channel>) -> u64 {
    c.get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_head
        .unwrap()
        .seq
}

/// `operator` allows `server` with the github connection; the grant keeps the
/// approver's sealed refresh token once their phone approves.
async fn unattended_grant(
    idp: &IdentityProvider,
    c: &mut ControlClient<Channel>,
    token: &str,
    server: &str,
    approver: &str,
) {
    let reply = c
        .set_enforcement(bearer(allow(server, &[("github", &["repo"])]), token))
        .await
        .unwrap()
        .into_inner();
    let pending = reply.pending.expect("a step-up for the grant");
    answer_ciba(idp, WAIT, &pending.binding_message, true).await;
    until(WAIT, || {
        let mut c = c.clone();
        let server = server.to_owned();
        let approver = approver.to_owned();
        async move {
            grants(&mut c)
                .await
                .iter()
                .any(|g| g.server == server && g.unattended && g.approved_by == approver)
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_gets_tokens_only_for_servers_its_uid_is_listed_for_and_every_handout_is_audited() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), 3).display().to_string();
    let me = my_uid();
    let listed = format!("{SERVER}={me}");
    // A window longer than the test: the summary is written at shutdown.
    let settings = env(
        &idp,
        &[
            ("DEFENSECLAW_STEPUP__ENABLED", "true"),
            ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
            ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
            ("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &key),
            ("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", &listed),
            ("DEFENSECLAW_AUDIT__COALESCE_WINDOW_SECS", "3600"),
        ],
    );
    let d = start(None, &settings).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    unattended_grant(&idp, &mut c, &token, SERVER, OPERATOR).await;
    unattended_grant(&idp, &mut c, &token, VICTIM, OPERATOR).await;

    // The attack: a local peer allowed to mutate, no operator token, naming a
    // server its uid is not listed for.
    let err = c
        .get_connection_token(want(VICTIM, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("[token_vault] server_uids"),
        "{err:?}"
    );
    assert!(err.message().contains(VICTIM), "{err:?}");
    assert!(
        idp.provider_tokens().await.unwrap().is_empty(),
        "no exchange happened"
    );
    let entries = audit(&mut c).await;
    let refusal = entries
        .iter()
        .find(|e| {
            e.action == "permission-denied" && e.target.as_ref().is_some_and(|t| t.name == VICTIM)
        })
        .expect("the refusal is audited");
    assert_eq!(refusal.outcome, "refused");
    let refusal_details = details(refusal);
    assert_eq!(refusal_details["config_key"], "token_vault.server_uids");
    assert_eq!(refusal_details["rpc"], "GetConnectionToken");
    let actor = refusal.actor.as_ref().unwrap();
    assert_eq!(actor.uid, me);
    assert_eq!(actor.pid, std::process::id());
    assert!(!entries.iter().any(
        |e| e.action == "token-exchange" && e.target.as_ref().is_some_and(|t| t.name == VICTIM)
    ));

    // The listed uid gets its server's token (exchanged, audited as before).
    let first = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.subject, "refresh_token");
    assert!(!first.cached);
    let exchange = audit(&mut c)
        .await
        .into_iter()
        .find(|e| e.action == "token-exchange")
        .expect("the exchange is audited");
    assert_eq!(exchange.actor.as_ref().unwrap().uid, me);

    // Cache hits: each one is accounted for, in a bounded number of entries.
    const HITS: u64 = 200;
    for _ in 0..HITS {
        let hit = c
            .get_connection_token(want(SERVER, "github"))
            .await
            .unwrap()
            .into_inner();
        assert!(hit.cached);
        assert_eq!(hit.access_token, first.access_token);
    }
    let handouts: Vec<_> = audit(&mut c)
        .await
        .into_iter()
        .filter(|e| e.action == "token-handout")
        .collect();
    assert_eq!(
        handouts.len(),
        1,
        "the first hand-out of the window is written at once, the rest counted"
    );
    let h = &handouts[0];
    assert_eq!(h.target.as_ref().unwrap().name, SERVER);
    assert_eq!(count(h), 1);
    let hd = details(h);
    assert_eq!(hd["connection"], "github");
    assert_eq!(hd["subject_sub"], OPERATOR);
    assert_eq!(hd["subject"], "refresh_token");
    let actor = h.actor.as_ref().unwrap();
    assert_eq!((actor.uid, actor.pid), (me, std::process::id()));

    // At shutdown the open window is written as one summary with the count.
    let mut d = d;
    d.stop().await.unwrap();
    let TestDaemon { dir, .. } = d;
    let d = start(Some(dir), &settings).await;
    let mut c = d.client().await.unwrap();
    let entries = audit(&mut c).await;
    let handouts: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "token-handout")
        .collect();
    assert_eq!(handouts.len(), 2, "{handouts:#?}");
    assert_eq!(handouts.iter().map(|e| count(e)).sum::<u64>(), HITS);
    let summary = handouts
        .iter()
        .find(|e| details(e)["coalesced"] == true)
        .expect("a summary entry");
    let sd = details(summary);
    assert_eq!(sd["count"], HITS - 1);
    assert_eq!(sd["subject_sub"], OPERATOR);
    assert!(sd["first_at"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(sd["last_at"].as_str() >= sd["first_at"].as_str());
    assert!(
        sd["pids"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(std::process::id()))
    );
    assert!(verify(&mut c, "").await.unwrap().ok);
    // The token itself is nowhere in the log or the state directory.
    for e in &entries {
        assert!(!e.details_json.contains(&first.access_token));
        assert!(!e.reason.contains(&first.access_token));
    }
    let mut d = d;
    d.stop().await.unwrap();
    assert_not_in_state_dir(&d, &first.access_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_redeclared_by_another_operator_drops_the_previous_approvers_credential() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    idp.link_account(OPERATOR2, "github", "repo").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), 4).display().to_string();
    let listed = format!("{SERVER}={}", my_uid());
    let d = start(
        None,
        &env(
            &idp,
            &[
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
                ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
                ("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &key),
                ("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", &listed),
            ],
        ),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token1 = operator_token(&idp).await;
    let token2 = token_for(&idp, OPERATOR2, "operator2@example.com", "Operator Two").await;
    unattended_grant(&idp, &mut c, &token1, SERVER, OPERATOR).await;
    // Unattended starts work, and a token is cached.
    let cached = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.subject, "refresh_token");

    // The attack: another operator re-declares the grant.
    let reply = c
        .set_enforcement(bearer(allow(SERVER, &[("github", &["repo"])]), &token2))
        .await
        .unwrap()
        .into_inner();
    let pending = reply
        .pending
        .expect("the re-declaration waits for approval");
    assert_eq!(pending.approver, OPERATOR2);
    // The previous approver's credential is gone at once, and that is audited.
    let g = grants(&mut c).await;
    let g = g.iter().find(|g| g.server == SERVER).unwrap();
    assert!(!g.unattended, "{g:?}");
    let db = rusqlite::Connection::open(d.db_path()).unwrap();
    let (sub, sealed): (Option<String>, Option<Vec<u8>>) = db
        .query_row(
            "SELECT subject_sub, subject_sealed FROM connection_grants WHERE server = ?1",
            [SERVER],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(db);
    assert_eq!((sub, sealed), (None, None));
    let entries = audit(&mut c).await;
    let dropped = entries
        .iter()
        .find(|e| e.action == "connection-credential-dropped")
        .expect("the drop is audited");
    assert_eq!(dropped.actor.as_ref().unwrap().id, OPERATOR2);
    assert_eq!(dropped.target.as_ref().unwrap().name, SERVER);
    let dd = details(dropped);
    assert_eq!(dd["dropped"][0]["subject_sub"], OPERATOR);
    assert_eq!(dd["dropped"][0]["connection"], "github");
    // While the re-declaration is pending, no token at all.
    let err = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Denied on the new operator's phone: the server is released, but the old
    // approver's credential (and its cached token) does not come back.
    answer_ciba(&idp, WAIT, &pending.binding_message, false).await;
    until(WAIT, || {
        let mut c = c.clone();
        async move {
            c.check_target(defenseclaw_testkit::requests::mcp(SERVER).unwrap())
                .await
                .is_ok_and(|r| r.into_inner().verdict == pb::Verdict::Allowed as i32)
        }
    })
    .await
    .unwrap();
    let err = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no credential"), "{err:?}");
    assert!(err.message().contains("re-approve"), "{err:?}");

    // Approved by the new operator: unattended starts run on their credential.
    unattended_grant(&idp, &mut c, &token2, SERVER, OPERATOR2).await;
    let got = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(got.access_token, cached.access_token);
    let issued = idp.provider_tokens().await.unwrap();
    let last = issued.last().unwrap();
    assert_eq!(last.access_token, got.access_token);
    assert_eq!(last.sub, OPERATOR2);
}

/// A daemon whose access policy lets nobody in this test mutate.
async fn read_only_daemon(dir: Option<tempfile::TempDir>, window: &str) -> TestDaemon {
    let overrides = [
        ("DEFENSECLAW_ACCESS__MUTATE_UIDS", "4242424"),
        ("DEFENSECLAW_AUDIT__COALESCE_WINDOW_SECS", window),
    ];
    match dir {
        Some(dir) => TestDaemon::start_in(dir, &overrides).await.unwrap(),
        None => TestDaemon::start_with(&overrides).await.unwrap(),
    }
}

/// `n` refused `SetEnforcement` calls, eight at a time.
async fn refused_calls(c: &ControlClient<Channel>, n: usize) {
    let tasks: Vec<_> = (0..8)
        .map(|lane| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for _ in (lane..n).step_by(8) {
                    let err = c
                        .set_enforcement(set(
                            skill("flood"),
                            pb::EnforcementAction::Block,
                            "fill the disk",
                        ))
                        .await
                        .unwrap_err();
                    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refused_calls_grows_the_audit_log_by_two_entries() {
    const FLOOD: u64 = 5_000;
    let d = read_only_daemon(None, "3600").await;
    let mut c = d.client().await.unwrap();
    let before = head(&mut c).await;
    refused_calls(&c, FLOOD as usize).await;

    // While the window is open: one entry, written with the first refusal.
    let during = audit_after(&mut c, before).await;
    assert_eq!(during.len(), 1, "{during:#?}");
    let first = &during[0];
    assert_eq!(first.action, "permission-denied");
    assert_eq!(first.outcome, "refused");
    assert_eq!(details(first)["rpc"], "SetEnforcement");
    assert_eq!(count(first), 1);
    assert_eq!(first.actor.as_ref().unwrap().uid, my_uid());

    // Shutdown writes the window's summary; nothing else was added.
    let mut d = d;
    d.stop().await.unwrap();
    let TestDaemon { dir, .. } = d;
    let d = read_only_daemon(Some(dir), "3600").await;
    let mut c = d.client().await.unwrap();
    let after = audit_after(&mut c, before).await;
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(after.iter().map(count).sum::<u64>(), FLOOD);
    let summary = &after[1];
    let sd = details(summary);
    assert_eq!(summary.action, "permission-denied");
    assert_eq!(sd["coalesced"], true);
    assert_eq!(sd["rpc"], "SetEnforcement");
    assert_eq!(sd["count"], FLOOD - 1);
    assert!(sd["first_at"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(sd["last_at"].as_str() >= sd["first_at"].as_str());
    assert_eq!(summary.actor.as_ref().unwrap().uid, my_uid());
    assert!(
        verify(&mut c, "").await.unwrap().ok,
        "the chain stays intact"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_summarised_when_their_window_ends() {
    const CALLS: u64 = 400;
    let d = read_only_daemon(None, "1").await;
    let mut c = d.client().await.unwrap();
    let before = head(&mut c).await;
    refused_calls(&c, CALLS as usize).await;

    // The summaries appear as windows close, without a restart.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waited = until(WAIT, || {
        let mut c = c.clone();
        let seen = seen.clone();
        async move {
            let entries = audit_after(&mut c, before).await;
            let done = entries.iter().map(count).sum::<u64>() == CALLS;
            *seen.lock().unwrap() = entries;
            done
        }
    })
    .await;
    let last = seen.lock().unwrap().clone();
    waited.unwrap_or_else(|e| panic!("{e}: {last:#?}"));
    assert!(
        (last.len() as u64) < CALLS,
        "refusals were coalesced: {} entries",
        last.len()
    );
    assert!(last.iter().all(|e| e.action == "permission-denied"));
    let summaries: Vec<_> = last
        .iter()
        .filter(|e| details(e)["coalesced"] == true)
        .collect();
    assert!(!summaries.is_empty());
    for s in summaries {
        let sd = details(s);
        assert!(sd["first_at"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(sd["last_at"].as_str() >= sd["first_at"].as_str());
    }
    assert!(verify(&mut c, "").await.unwrap().ok);
}
