//! Token Vault against the real local identity provider: connection grants,
//! both subject modes, scope escalation through step-up, cache and coalescing,
//! revocation here and at the provider, provider failures, and the sealed
//! subject credential.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclaw_testkit::idp::{
    CibaSelector, FailureMode, IdentityProvider, IdpOptions, TOKEN_VAULT_GRANT,
};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

pub(crate) use crate::stepup::bearer;
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::requests::mcp;

pub(crate) const OPERATOR: &str = "auth0|operator1";
pub(crate) const SERVER: &str = "github-mcp";

pub(crate) async fn provider() -> IdentityProvider {
    IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)")
}

pub(crate) fn env(idp: &IdentityProvider, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = idp.daemon_oidc_env();
    v.extend(
        extra
            .iter()
            .map(|(k, val)| ((*k).to_owned(), (*val).to_owned())),
    );
    v
}

pub(crate) async fn start(dir: Option<tempfile::TempDir>, env: &[(String, String)]) -> TestDaemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match dir {
        Some(d) => TestDaemon::start_in(d, &pairs).await.unwrap(),
        None => TestDaemon::start_with(&pairs).await.unwrap(),
    }
}

pub(crate) async fn operator_token(idp: &IdentityProvider) -> String {
    token_for(idp, OPERATOR, "operator1@example.com", "Operator One").await
}

/// An operator access token for `sub`, signed by the provider.
pub(crate) async fn token_for(
    idp: &IdentityProvider,
    sub: &str,
    email: &str,
    name: &str,
) -> String {
    idp.sign_token(
        json!({}),
        json!({"sub": sub, "aud": idp.audience(), "scope": "openid skills:write",
               "email": email, "name": name, "azp": idp.cli_client_id(),
               "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 3600}),
    )
    .await
    .unwrap()
}

pub(crate) fn allow(server: &str, connections: &[(&str, &[&str])]) -> pb::SetEnforcementRequest {
    pb::SetEnforcementRequest {
        target: mcp(server),
        action: pb::EnforcementAction::Allow as i32,
        reason: "needs GitHub".into(),
        connections: connections
            .iter()
            .map(|(c, scopes)| pb::ConnectionDeclaration {
                connection: (*c).to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
    }
}

pub(crate) fn want(server: &str, connection: &str) -> pb::GetConnectionTokenRequest {
    pb::GetConnectionTokenRequest {
        server: server.into(),
        connection: connection.into(),
        fresh: false,
    }
}

pub(crate) async fn grants(c: &mut ControlClient<Channel>) -> Vec<pb::ConnectionGrant> {
    c.list_connections(pb::ListConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants
}

/// No file in the stopped daemon's state directory carries `token`.
pub(crate) fn assert_not_in_state_dir(d: &TestDaemon, token: &str) {
    for file in std::fs::read_dir(d.dir.path().join("home")).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "a provider token reached the state directory"
        );
    }
}

pub(crate) async fn audit(c: &mut ControlClient<Channel>) -> Vec<pb::AuditEntry> {
    c.list_audit(pb::ListAuditRequest {
        limit: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

/// Waits until `probe` holds (readiness, never speed).
pub(crate) async fn until<F, Fut>(deadline: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    defenseclaw_testkit::wait_for("the condition", deadline, || {
        let fut = probe();
        async move { fut.await.then_some(()) }
    })
    .await
}

pub(crate) fn key_file(dir: &std::path::Path, byte: u8) -> std::path::PathBuf {
    let path = dir.join(format!("token-vault-{byte}.key"));
    std::fs::write(&path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_token_exchange_cache_and_inventory() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo read:org")
        .await
        .unwrap();
    let d = start(None, &env(&idp, &[])).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;

    // Invalid declarations are refused with the field named, and change nothing.
    let err = c
        .set_enforcement(bearer(allow(SERVER, &[("git hub", &[])]), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("connections.connection"), "{err:?}");
    let mut skill_allow = allow("a-skill", &[("github", &[])]);
    skill_allow.target = defenseclaw_testkit::requests::skill("a-skill");
    let err = c
        .set_enforcement(bearer(skill_allow, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(grants(&mut c).await.is_empty());

    // Not allowed yet: no credentials.
    let err = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let reply = c
        .set_enforcement(bearer(allow(SERVER, &[("github", &["repo"])]), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.changed && reply.pending.is_none(), "{reply:?}");
    let g = grants(&mut c).await;
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].server.as_str(), g[0].connection.as_str()),
        (SERVER, "github")
    );
    assert_eq!(g[0].declared_scopes, vec!["repo"]);
    assert_eq!(g[0].approved_by, OPERATOR);
    assert_eq!(g[0].status, "active");
    assert!(!g[0].unattended);

    // Mode (a): the caller's own access token is exchanged.
    let first = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    let issued = idp.provider_tokens().await.unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(first.access_token, issued[0].access_token);
    assert_eq!(issued[0].sub, OPERATOR);
    assert_eq!(first.subject, "access_token");
    assert!(!first.cached);
    assert!(first.scopes.contains(&"repo".to_owned()), "{first:?}");

    // Cached: no second exchange.
    let second = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(second.cached);
    assert_eq!(second.access_token, first.access_token);
    assert_eq!(idp.token_vault_stats().await.unwrap().exchanges, 1);
    // A server start asks for a fresh one: exchanged again, and cached for the rest.
    let fresh = c
        .get_connection_token(bearer(
            pb::GetConnectionTokenRequest {
                fresh: true,
                ..want(SERVER, "github")
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.cached);
    assert_ne!(fresh.access_token, first.access_token);
    assert_eq!(idp.token_vault_stats().await.unwrap().exchanges, 2);
    let third = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(third.cached);
    assert_eq!(third.access_token, fresh.access_token);

    // A local caller without a token has nothing to exchange (no stored credential).
    let err = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no credential"), "{err:?}");

    // The inventory counts both uses and records the granted scopes.
    until(Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let g = grants(&mut c).await;
            g[0].use_count == 4 && !g[0].last_used.is_empty()
        }
    })
    .await
    .unwrap();
    let g = grants(&mut c).await;
    assert_eq!(g[0].granted_scopes, vec!["repo", "read:org"]);

    // Audited with the operator; the token itself appears nowhere.
    let entries = audit(&mut c).await;
    let grant = entries
        .iter()
        .find(|e| e.action == "connection-grant")
        .unwrap();
    assert_eq!(grant.actor.as_ref().unwrap().id, OPERATOR);
    let exchange = entries
        .iter()
        .find(|e| e.action == "token-exchange")
        .unwrap();
    assert_eq!(exchange.outcome, "success");
    assert_eq!(exchange.actor.as_ref().unwrap().id, OPERATOR);
    for e in &entries {
        assert!(!e.details_json.contains(&first.access_token));
        assert!(!e.reason.contains(&first.access_token));
    }
    // A token lacking a declared scope is not handed out: reconnect needed.
    c.set_enforcement(bearer(
        allow("wide-mcp", &[("github", &["repo", "admin:org"])]),
        &token,
    ))
    .await
    .unwrap();
    let err = c
        .get_connection_token(bearer(want("wide-mcp", "github"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("reconnect needed"), "{err:?}");
    assert!(err.message().contains("admin:org"), "{err:?}");
    let wide = grants(&mut c).await;
    let wide = wide.iter().find(|g| g.server == "wide-mcp").unwrap();
    assert_eq!(wide.status, "broken");

    let mut d = d;
    d.stop().await.unwrap();
    assert_not_in_state_dir(&d, &first.access_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn undeclared_connection_is_refused_and_put_to_the_approver() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    idp.link_account(OPERATOR, "slack", "chat:write")
        .await
        .unwrap();
    let d = start(
        None,
        &env(
            &idp,
            &[
                ("DEFENSECLAW_STEPUP__ENABLED", "true"),
                ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
                ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
            ],
        ),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    // No findings and no key: the allow commits at once.
    let reply = c
        .set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.pending.is_none(), "{reply:?}");

    let err = c
        .get_connection_token(bearer(want(SERVER, "slack"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("did not declare"), "{err:?}");
    let entries = audit(&mut c).await;
    let escalation = entries
        .iter()
        .find(|e| e.action == "scope_escalation")
        .unwrap();
    assert_eq!(escalation.outcome, "refused");
    assert!(escalation.details_json.contains("slack"));
    // The server keeps running meanwhile: it is not held.
    let check = c.check_target(mcp(SERVER).unwrap()).await.unwrap();
    assert_eq!(check.into_inner().verdict, pb::Verdict::Allowed as i32);

    let pending = idp
        .wait_for_ciba(Duration::from_secs(30), |p| {
            p.binding_message.as_deref().unwrap_or("").contains("grant")
        })
        .await
        .unwrap();
    assert!(
        pending
            .binding_message
            .as_deref()
            .unwrap_or("")
            .contains("slack"),
        "{pending:?}"
    );
    // Asking again joins the same request.
    let _ = c
        .get_connection_token(bearer(want(SERVER, "slack"), &token))
        .await
        .unwrap_err();
    assert_eq!(idp.pending_ciba().await.unwrap().len(), 1);
    idp.approve_ciba(&CibaSelector::AuthReqId(pending.auth_req_id.clone()))
        .await
        .unwrap();
    until(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            grants(&mut c)
                .await
                .iter()
                .any(|g| g.connection == "slack" && g.approved_by == OPERATOR)
        }
    })
    .await
    .unwrap();
    let slack = c
        .get_connection_token(bearer(want(SERVER, "slack"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(slack.access_token.starts_with("fake-slack-"));

    // Denied: nothing is added and the request stays refused.
    let err = c
        .get_connection_token(bearer(want(SERVER, "google-oauth2"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let pending = idp
        .wait_for_ciba(Duration::from_secs(30), |p| {
            p.binding_message
                .as_deref()
                .unwrap_or("")
                .contains("google")
        })
        .await
        .unwrap();
    idp.deny_ciba(&CibaSelector::AuthReqId(pending.auth_req_id))
        .await
        .unwrap();
    until(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            audit(&mut c)
                .await
                .iter()
                .any(|e| e.action == "stepup-denied")
        }
    })
    .await
    .unwrap();
    assert!(
        !grants(&mut c)
            .await
            .iter()
            .any(|g| g.connection == "google-oauth2")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unattended_grant_keeps_a_sealed_refresh_token() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), 7);
    let key_env = key.display().to_string();
    // This process's uid may start the server on the stored credential.
    let me = format!(
        "{SERVER}={}",
        defenseclaw_common::paths::current_uid().unwrap()
    );
    let base = [
        ("DEFENSECLAW_STEPUP__ENABLED", "true"),
        ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
        ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
        ("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", me.as_str()),
    ];
    let mut with_key = base.to_vec();
    with_key.push(("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &key_env));
    let d = start(None, &env(&idp, &with_key)).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;

    // Granting credentials with a key configured asks the operator's phone.
    let reply = c
        .set_enforcement(bearer(allow(SERVER, &[("github", &["repo"])]), &token))
        .await
        .unwrap()
        .into_inner();
    let pending = reply.pending.expect("a step-up");
    assert_eq!(pending.approver, OPERATOR);
    let asked = idp
        .wait_for_ciba(Duration::from_secs(30), |p| {
            p.binding_message.as_deref() == Some(pending.binding_message.as_str())
        })
        .await
        .unwrap();
    assert!(
        asked
            .scope
            .as_deref()
            .unwrap_or("")
            .contains("offline_access"),
        "{asked:?}"
    );
    idp.approve_ciba(&CibaSelector::AuthReqId(asked.auth_req_id))
        .await
        .unwrap();
    until(Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { grants(&mut c).await.iter().any(|g| g.unattended) }
    })
    .await
    .unwrap();

    // Mode (b): a local caller with no token gets a token through the stored credential.
    let got = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.subject, "refresh_token");
    let issued = idp.provider_tokens().await.unwrap();
    assert_eq!(issued.last().unwrap().access_token, got.access_token);
    assert!(
        issued
            .last()
            .unwrap()
            .subject_token_type
            .ends_with("refresh_token")
    );

    // At rest the credential is sealed: version byte, nonce, ciphertext.
    let mut d = d;
    d.stop().await.unwrap();
    let db = rusqlite::Connection::open(d.db_path()).unwrap();
    let (sub, sealed): (String, Vec<u8>) = db
        .query_row(
            "SELECT subject_sub, subject_sealed FROM connection_grants",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(db);
    assert_eq!(sub, OPERATOR);
    assert_eq!(sealed[0], 1);
    assert!(sealed.len() > 1 + 12 + 16);

    // Without its key the credential is unreadable, and the daemon says why.
    let TestDaemon { dir, .. } = d;
    let d = start(Some(dir), &env(&idp, &base)).await;
    let mut c = d.client().await.unwrap();
    let err = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no token vault key"), "{err:?}");
    let mut d = d;
    d.stop().await.unwrap();
    // With another key it does not open either.
    let other = key_file(keys.path(), 8).display().to_string();
    let mut wrong = base.to_vec();
    wrong.push(("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &other));
    let TestDaemon { dir, .. } = d;
    let d = start(Some(dir), &env(&idp, &wrong)).await;
    let mut c = d.client().await.unwrap();
    let err = c
        .get_connection_token(want(SERVER, "github"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cannot be opened"), "{err:?}");

    // A key file others can read is refused at start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = d;
    d.stop().await.unwrap();
    let TestDaemon { dir, .. } = d;
    let socket = dir.path().join("run/defenseclawd.sock");
    let pairs = env(&idp, &with_key);
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env_map = defenseclaw_testkit::daemon::daemon_env(dir.path(), &socket, &pairs);
    let settings =
        defenseclawd::config::Settings::load(&defenseclawd::config::ConfigFile::None, &env_map)
            .unwrap();
    let opts = defenseclawd::daemon::DaemonOptions::new(
        settings,
        defenseclawd::config::ConfigFile::None,
        env_map,
    )
    .unwrap();
    let err = defenseclawd::daemon::start(opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_exchange() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let d = start(
        None,
        &env(&idp, &[("DEFENSECLAW_TOKEN_VAULT__CACHE_MAX_SECS", "0")]),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap();
    // Hold the provider's answer until every caller is waiting.
    idp.set_token_vault_delay(Duration::from_secs(120))
        .await
        .unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut c = c.clone();
            let token = token.clone();
            tokio::spawn(async move {
                c.get_connection_token(bearer(want(SERVER, "github"), &token))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    until(Duration::from_secs(30), || async {
        idp.token_vault_stats().await.unwrap().in_flight == 1
    })
    .await
    .unwrap();
    // Local gRPC calls reach the daemon within milliseconds; give them ample time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    idp.set_token_vault_delay(Duration::ZERO).await.unwrap();
    let mut tokens = std::collections::HashSet::new();
    for call in calls {
        tokens.insert(call.await.unwrap().unwrap().access_token);
    }
    assert_eq!(tokens.len(), 1, "every caller got the one exchanged token");
    assert_eq!(idp.token_vault_stats().await.unwrap().exchanges, 1);
    // Caching off: the next request is a new exchange.
    let next = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!next.cached && !tokens.contains(&next.access_token));
    assert_eq!(idp.token_vault_stats().await.unwrap().exchanges, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_block_and_provider_failures() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let d = start(
        None,
        &env(
            &idp,
            &[("DEFENSECLAW_TOKEN_VAULT__REQUEST_TIMEOUT_SECS", "2")],
        ),
    )
    .await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap();
    let get = |c: &mut ControlClient<Channel>| {
        let mut c = c.clone();
        let token = token.clone();
        async move {
            c.get_connection_token(bearer(want(SERVER, "github"), &token))
                .await
        }
    };
    get(&mut c).await.unwrap();

    // Revoked here: refused at once, cache dropped, audited.
    let revoked = c
        .revoke_connection(bearer(
            pb::RevokeConnectionRequest {
                server: SERVER.into(),
                connection: "github".into(),
                reason: "rotating".into(),
                at_provider: false,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.grant.unwrap().status, "revoked");
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    let err = c
        .revoke_connection(bearer(
            pb::RevokeConnectionRequest {
                server: SERVER.into(),
                connection: "slack".into(),
                reason: String::new(),
                at_provider: false,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Declared again, then the account is deleted at the provider.
    c.set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap();
    idp.unlink_account(OPERATOR, "github").await.unwrap();
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("defenseclawctl connections connect github"),
        "{err:?}"
    );
    let g = grants(&mut c).await;
    assert_eq!(g[0].status, "broken");
    // The provider refuses to refresh: reconnect.
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    idp.break_account(OPERATOR, "github").await.unwrap();
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("reconnected"), "{err:?}");
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();

    // Provider down (5xx), then hanging past the timeout: Unavailable, retry advice.
    idp.set_failures(&FailureMode {
        error_status: Some(503),
        error_count: Some(-1),
        grant_types: Some(vec![TOKEN_VAULT_GRANT.into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("retry"), "{err:?}");
    idp.set_failures(&FailureMode {
        hang: Some(true),
        grant_types: Some(vec![TOKEN_VAULT_GRANT.into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    idp.reset_failures().await.unwrap();
    let ok = get(&mut c).await.unwrap().into_inner();
    assert!(!ok.cached);
    assert_eq!(grants(&mut c).await[0].status, "active");

    // Blocked: no credentials, cached or not.
    c.set_enforcement(bearer(
        pb::SetEnforcementRequest {
            target: mcp(SERVER),
            action: pb::EnforcementAction::Block as i32,
            reason: "suspicious".into(),
            connections: Vec::new(),
        },
        &token,
    ))
    .await
    .unwrap();
    let err = get(&mut c).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("blocked"), "{err:?}");

    // Every failed exchange was audited, none with a token in it.
    let entries = audit(&mut c).await;
    let failures: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "token-exchange" && e.outcome == "error")
        .collect();
    assert!(failures.len() >= 4, "{failures:?}");
    for e in &entries {
        assert!(!e.details_json.contains(&ok.access_token));
    }
}

/// An operator suspends a grant: the very next token request is refused (a
/// cached token is not handed out) and names the resume command; a second
/// suspend, a resume of an active grant and a suspend without the operator
/// role are refused; resuming serves it again, each change audited.
#[tokio::test(flavor = "multi_thread")]
async fn suspend_stops_serving_at_once_and_resume_serves_again() {
    let idp = provider().await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let d = start(None, &env(&idp, &[])).await;
    let mut c = d.client().await.unwrap();
    let token = operator_token(&idp).await;
    c.set_enforcement(bearer(allow(SERVER, &[("github", &[])]), &token))
        .await
        .unwrap();
    let first = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    let cached = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(cached.cached && cached.access_token == first.access_token);
    let change = |reason: &str| pb::ConnectionStatusRequest {
        server: SERVER.into(),
        connection: "github".into(),
        reason: reason.into(),
    };

    // Without a token (no operator role) the change is refused and nothing changes.
    let anonymous = c.suspend_connection(change("no role")).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");

    let suspended = c
        .suspend_connection(bearer(change("idle since the audit"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.grant.unwrap().status, "suspended");
    let refused = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "defenseclawctl connections resume {SERVER} github"
        )),
        "{}",
        refused.message()
    );
    let again = c
        .suspend_connection(bearer(change("twice"), &token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    let resumed = c
        .resume_connection(bearer(change("reviewed"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.grant.unwrap().status, "active");
    assert!(resumed.audit_seq > suspended.audit_seq);
    let served = c
        .get_connection_token(bearer(want(SERVER, "github"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!served.cached, "the cache was dropped by the suspension");
    let active = c
        .resume_connection(bearer(change("already"), &token))
        .await
        .unwrap_err();
    assert_eq!(active.code(), Code::FailedPrecondition, "{active:?}");

    let entries = c
        .list_audit(pb::ListAuditRequest {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    for action in ["connection-suspend", "connection-resume"] {
        let e = entries.iter().find(|e| e.action == action);
        let e = e.unwrap_or_else(|| panic!("no {action} entry"));
        assert_eq!(e.actor.as_ref().unwrap().id, OPERATOR, "{e:?}");
    }
}
