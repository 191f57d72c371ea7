//! Token Vault, Connected Accounts (My Account API) and MRRT in the test identity provider,
//! driven with plain HTTP the way the daemon and the CLI will.

use std::time::Duration;

use base64::Engine as _;
use defenseclaw_testkit::idp::{
    AccountLink, FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE, FailureMode, IdentityProvider, IdpOptions,
    MY_ACCOUNT_SCOPES, SUBJECT_TOKEN_TYPE_ACCESS_TOKEN, SUBJECT_TOKEN_TYPE_REFRESH_TOKEN,
    TOKEN_VAULT_GRANT, TokenSet,
};
use defenseclaw_testkit::wait_for;
use serde_json::{Value, json};
use sha2::Digest as _;

const OPERATOR: &str = "auth0|operator1";
const CALLBACK: &str = "http://127.0.0.1:18484/callback";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn start(opts: IdpOptions) -> IdentityProvider {
    IdentityProvider::start(opts).await.unwrap()
}

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// A Token Vault exchange by `client_id` (the daemon unless told otherwise).
async fn exchange_as(
    idp: &IdentityProvider,
    client: (&str, Option<&str>),
    subject: &str,
    subject_type: &str,
    connection: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", TOKEN_VAULT_GRANT),
        ("client_id", client.0),
        ("subject_token", subject),
        ("subject_token_type", subject_type),
        (
            "requested_token_type",
            FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE,
        ),
        ("connection", connection),
    ];
    if let Some(secret) = client.1 {
        form.push(("client_secret", secret));
    }
    for (k, v) in extra {
        form.retain(|(name, _)| name != k);
        form.push((k, v));
    }
    form.retain(|(_, v)| !v.is_empty());
    answer(
        http()
            .post(idp.url("oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn exchange(
    idp: &IdentityProvider,
    subject: &str,
    subject_type: &str,
    connection: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let client = (idp.daemon_client_id(), Some(idp.daemon_client_secret()));
    exchange_as(idp, client, subject, subject_type, connection, extra).await
}

fn error_of(r: &(u16, Value)) -> (u16, &str) {
    (r.0, r.1["error"].as_str().unwrap_or("<none>"))
}

fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The daemon's tokens for the operator: CIBA with `offline_access`, audience = the API.
async fn daemon_tokens(idp: &IdentityProvider) -> TokenSet {
    idp.ciba_login(
        OPERATOR,
        "openid offline_access block:approve",
        idp.audience(),
    )
    .await
    .unwrap()
}

/// The CLI's refresh grant, optionally for another audience (MRRT).
async fn refresh_as_cli(
    idp: &IdentityProvider,
    refresh_token: &str,
    audience: &str,
    scope: &str,
) -> (u16, Value) {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", idp.cli_client_id()),
        ("refresh_token", refresh_token),
        ("audience", audience),
        ("scope", scope),
    ];
    let form: Vec<_> = form.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    answer(
        http()
            .post(idp.url("oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn pkce() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned();
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&verifier));
    (verifier, challenge)
}

async fn my_account(
    idp: &IdentityProvider,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http()
        .request(method, idp.my_account_url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    answer(req.send().await.unwrap()).await
}

/// Plays the browser: opens `connect_uri?ticket=…` and returns the redirect's `Location`.
async fn browser_connect(connect: &Value) -> String {
    let resp = http()
        .get(connect["connect_uri"].as_str().unwrap())
        .query(&[(
            "ticket",
            connect["connect_params"]["ticket"].as_str().unwrap(),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    resp.headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// `name=value` pairs of a URL's query (or fragment, with `fragment`).
fn callback_param(location: &str, name: &str, fragment: bool) -> Option<String> {
    let mut url = reqwest::Url::parse(location).unwrap();
    if fragment {
        let fragment = url.fragment().unwrap_or("").to_owned();
        url.set_query(Some(&fragment));
    }
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn ciba_refresh_token_and_api_access_token_both_exchange() {
    let idp = start(IdpOptions::default()).await;
    let daemon = daemon_tokens(&idp).await;
    let refresh = daemon
        .refresh_token
        .clone()
        .expect("CIBA with offline_access returns a refresh token");
    assert_eq!(claims(&daemon.access_token)["aud"], idp.audience());

    // Nothing linked yet.
    let r = exchange(
        &idp,
        &refresh,
        SUBJECT_TOKEN_TYPE_REFRESH_TOKEN,
        "github",
        &[],
    )
    .await;
    assert_eq!(
        error_of(&r),
        (401, "federated_connection_refresh_token_not_found")
    );

    let linked = idp
        .link_account(OPERATOR, "github", "repo read:org")
        .await
        .unwrap();
    assert!(linked.id.starts_with("cac_"), "{linked:?}");
    assert_eq!(linked.scopes, ["repo", "read:org"]);

    let (status, body) = exchange(
        &idp,
        &refresh,
        SUBJECT_TOKEN_TYPE_REFRESH_TOKEN,
        "github",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["access_token"]
            .as_str()
            .unwrap()
            .starts_with("fake-github-")
    );
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "repo read:org");
    assert_eq!(
        body["issued_token_type"],
        FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE
    );
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none());

    // The access token exchange, with a JSON body like Auth0's examples, a login_hint and
    // the link's own lifetime.
    idp.link_account_with(&AccountLink {
        login_hint: Some("octocat".into()),
        expires_in: Some(120),
        ..AccountLink::new(OPERATOR, "github", &["repo"])
    })
    .await
    .unwrap();
    let resp = http()
        .post(idp.url("oauth/token"))
        .json(&json!({
            "grant_type": TOKEN_VAULT_GRANT,
            "client_id": idp.daemon_client_id(),
            "client_secret": idp.daemon_client_secret(),
            "subject_token": daemon.access_token,
            "subject_token_type": SUBJECT_TOKEN_TYPE_ACCESS_TOKEN,
            "requested_token_type": FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE,
            "connection": "github",
            "login_hint": "octocat",
        }))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["expires_in"].as_u64(), body["scope"].as_str()),
        (Some(120), Some("repo"))
    );
    let second = body["access_token"].as_str().unwrap().to_owned();

    let r = exchange(
        &idp,
        &daemon.access_token,
        SUBJECT_TOKEN_TYPE_ACCESS_TOKEN,
        "github",
        &[("login_hint", "someone-else")],
    )
    .await;
    assert_eq!(
        error_of(&r),
        (401, "federated_connection_refresh_token_not_found")
    );

    // Every issued provider token is recorded, in order, with who asked and how.
    let tokens = idp.provider_tokens().await.unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens[0].subject_token_type,
        SUBJECT_TOKEN_TYPE_REFRESH_TOKEN
    );
    assert_eq!(
        tokens[1].subject_token_type,
        SUBJECT_TOKEN_TYPE_ACCESS_TOKEN
    );
    assert_eq!(tokens[1].access_token, second);
    assert!(tokens.iter().all(|t| t.sub == OPERATOR
        && t.connection == "github"
        && t.client_id == idp.daemon_client_id()));
    let stats = idp.token_vault_stats().await.unwrap();
    assert_eq!((stats.exchanges, stats.failures), (2, 2));
}

#[tokio::test]
async fn token_vault_refusals_use_auth0_error_codes() {
    let idp = start(IdpOptions::default()).await;
    let daemon = daemon_tokens(&idp).await;
    let refresh = daemon.refresh_token.clone().unwrap();
    idp.link_account(OPERATOR, "slack", "channels:read")
        .await
        .unwrap();
    let rt = SUBJECT_TOKEN_TYPE_REFRESH_TOKEN;
    let at = SUBJECT_TOKEN_TYPE_ACCESS_TOKEN;

    // Malformed requests.
    for extra in [
        [("connection", "")],
        [("subject_token_type", "")],
        [("requested_token_type", "")],
        [(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        )],
        [("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")],
        [("connection", "no spaces allowed")],
    ] {
        let r = exchange(&idp, &refresh, rt, "slack", &extra).await;
        assert_eq!(error_of(&r), (400, "invalid_request"), "{extra:?}: {}", r.1);
    }

    // A public client may not exchange, not even its own refresh token.
    let cli = idp
        .device_login(
            OPERATOR,
            "openid offline_access read:status",
            idp.audience(),
        )
        .await
        .unwrap();
    let cli_refresh = cli.refresh_token.clone().unwrap();
    let r = exchange_as(
        &idp,
        (idp.cli_client_id(), None),
        &cli_refresh,
        rt,
        "slack",
        &[],
    )
    .await;
    assert_eq!(error_of(&r), (401, "unauthorized_client"), "{}", r.1);

    // Bad subject tokens: unknown, another client's refresh token, a tampered JWT.
    let r = exchange(&idp, "not-a-refresh-token", rt, "slack", &[]).await;
    assert_eq!(error_of(&r), (401, "invalid_grant"));
    let r = exchange(&idp, &cli_refresh, rt, "slack", &[]).await;
    assert_eq!(error_of(&r), (401, "invalid_grant"));
    let mut tampered = daemon.access_token.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let r = exchange(&idp, &tampered, at, "slack", &[]).await;
    assert_eq!(error_of(&r), (401, "invalid_grant"));
    let foreign = idp
        .sign_token(
            json!({}),
            json!({ "sub": OPERATOR, "iss": "https://elsewhere.example/" }),
        )
        .await
        .unwrap();
    let r = exchange(&idp, &foreign, at, "slack", &[]).await;
    assert_eq!(error_of(&r), (401, "invalid_grant"));

    // A valid token for another API: the daemon is not that API's client.
    let other_api = idp
        .sign_token(
            json!({}),
            json!({ "sub": OPERATOR, "aud": "https://other.example/api" }),
        )
        .await
        .unwrap();
    let r = exchange(&idp, &other_api, at, "slack", &[]).await;
    assert_eq!(error_of(&r), (403, "unauthorized_client"));
    // Wrong client secret.
    let r = exchange_as(
        &idp,
        (idp.daemon_client_id(), Some("wrong")),
        &refresh,
        rt,
        "slack",
        &[],
    )
    .await;
    assert_eq!(error_of(&r), (401, "invalid_client"));

    // The provider refresh fails, then works again once relinked.
    idp.break_account(OPERATOR, "slack").await.unwrap();
    let r = exchange(&idp, &refresh, rt, "slack", &[]).await;
    assert_eq!(
        error_of(&r),
        (401, "federated_connection_refresh_token_flow_failed")
    );
    idp.link_account(OPERATOR, "slack", "channels:read")
        .await
        .unwrap();
    let r = exchange(&idp, &refresh, rt, "slack", &[]).await;
    assert_eq!(r.0, 200, "{}", r.1);

    // Unlinked in Auth0.
    idp.unlink_account(OPERATOR, "slack").await.unwrap();
    let r = exchange(&idp, &refresh, rt, "slack", &[]).await;
    assert_eq!(
        error_of(&r),
        (401, "federated_connection_refresh_token_not_found")
    );
    let err = idp.unlink_account(OPERATOR, "slack").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("unknown_connected_account"),
        "{err:#}"
    );
    assert!(idp.linked_accounts().await.unwrap().is_empty());
    // An unknown connection cannot be linked unless configured.
    let err = idp
        .link_account(OPERATOR, "jira", "read")
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("400") && err.contains("invalid_request"),
        "{err}"
    );

    let stats = idp.token_vault_stats().await.unwrap();
    assert_eq!(
        (stats.exchanges, stats.failures, stats.in_flight),
        (1, 15, 0)
    );
    assert_eq!(idp.provider_tokens().await.unwrap().len(), 1);
}

#[tokio::test]
async fn token_vault_failure_injection_and_delay() {
    let idp = start(IdpOptions::default()).await;
    let daemon = daemon_tokens(&idp).await;
    let refresh = daemon.refresh_token.clone().unwrap();
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();
    let rt = SUBJECT_TOKEN_TYPE_REFRESH_TOKEN;

    // Injected 503 for the Token Vault grant only: other token requests are unaffected.
    idp.set_failures(&FailureMode {
        error_count: Some(1),
        error_status: Some(503),
        grant_types: Some(vec![TOKEN_VAULT_GRANT.to_owned()]),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let (status, body) = answer(
        http()
            .post(idp.url("oauth/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", idp.daemon_client_id()),
                ("client_secret", idp.daemon_client_secret()),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = exchange(&idp, &refresh, rt, "github", &[]).await;
    assert_eq!(error_of(&r), (503, "temporarily_unavailable"));
    let r = exchange(&idp, &refresh, rt, "github", &[]).await;
    assert_eq!(r.0, 200, "{}", r.1);

    // A hanging grant: the request gets no answer at all.
    idp.set_failures(&FailureMode {
        hang: Some(true),
        grant_types: Some(vec![TOKEN_VAULT_GRANT.to_owned()]),
        ..FailureMode::default()
    })
    .await
    .unwrap();
    let err = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(idp.url("oauth/token"))
        .form(&[
            ("grant_type", TOKEN_VAULT_GRANT),
            ("client_id", idp.daemon_client_id()),
            ("client_secret", idp.daemon_client_secret()),
            ("subject_token", refresh.as_str()),
            ("subject_token_type", rt),
            (
                "requested_token_type",
                FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE,
            ),
            ("connection", "github"),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    idp.reset_failures().await.unwrap();
    let stats = idp.token_vault_stats().await.unwrap();
    assert_eq!((stats.exchanges, stats.injected), (1, 2));
    let log = idp.requests().await.unwrap();
    let hung = log.iter().filter(|e| e.status == json!("hung")).count();
    assert_eq!(hung, 1);

    // The delay holds exchanges inside the grant, where the stats see them, until released.
    idp.set_token_vault_delay(Duration::from_secs(600))
        .await
        .unwrap();
    let held = {
        let (url, id, secret) = (
            idp.url("oauth/token"),
            idp.daemon_client_id().to_owned(),
            idp.daemon_client_secret().to_owned(),
        );
        tokio::spawn(async move {
            let form = [
                ("grant_type", TOKEN_VAULT_GRANT),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
                ("subject_token", refresh.as_str()),
                ("subject_token_type", SUBJECT_TOKEN_TYPE_REFRESH_TOKEN),
                (
                    "requested_token_type",
                    FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE,
                ),
                ("connection", "github"),
            ];
            let resp = http().post(url).form(&form).send().await.unwrap();
            resp.status().as_u16()
        })
    };
    wait_for(
        "an exchange held by the delay",
        Duration::from_secs(20),
        || async {
            let s = idp.token_vault_stats().await.ok()?;
            (s.in_flight == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let stats = idp.token_vault_stats().await.unwrap();
    assert_eq!((stats.exchanges, stats.delay_ms), (1, 600_000));
    idp.set_token_vault_delay(Duration::ZERO).await.unwrap();
    assert_eq!(held.await.unwrap(), 200);
    let stats = idp.token_vault_stats().await.unwrap();
    assert_eq!(
        (stats.exchanges, stats.in_flight, stats.delay_ms),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn mrrt_token_connects_an_account_that_the_daemon_then_exchanges() {
    let idp = start(IdpOptions::default()).await;
    let me = idp.my_account_audience();
    assert_eq!(me, format!("{}me/", idp.issuer()));

    // The CLI's device login for the API, then MRRT to the My Account API.
    let cli = idp
        .device_login(
            OPERATOR,
            "openid offline_access read:status",
            idp.audience(),
        )
        .await
        .unwrap();
    let cli_refresh = cli.refresh_token.clone().unwrap();
    let scopes = MY_ACCOUNT_SCOPES.join(" ");
    let (status, body) = refresh_as_cli(&idp, &cli_refresh, &me, &scopes).await;
    assert_eq!(status, 200, "{body}");
    let me_token = body["access_token"].as_str().unwrap().to_owned();
    let c = claims(&me_token);
    assert_eq!(c["aud"], me);
    assert_eq!(c["sub"], OPERATOR);
    assert_eq!(c["scope"], scopes);
    // The refresh token still serves the API.
    let (status, body) = refresh_as_cli(&idp, &cli_refresh, "", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        idp.audience()
    );

    // Wrong tokens at the My Account API.
    let (status, body) = my_account(
        &idp,
        reqwest::Method::GET,
        "connected-accounts/accounts",
        &cli.access_token,
        None,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_u64()),
        (401, Some(401)),
        "{body}"
    );
    let (status, _) = refresh_as_cli(&idp, &cli_refresh, &me, "read:me:connected_accounts").await;
    assert_eq!(status, 200);
    let read_only = refresh_as_cli(&idp, &cli_refresh, &me, "read:me:connected_accounts")
        .await
        .1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (verifier, challenge) = pkce();
    let connect_body = json!({
        "connection": "github",
        "redirect_uri": CALLBACK,
        "state": "st-123",
        "scopes": ["repo", "read:org"],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    });
    let (status, body) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/connect",
        &read_only,
        Some(connect_body.clone()),
    )
    .await;
    assert_eq!(
        (status, body["title"].as_str()),
        (403, Some("Forbidden")),
        "{body}"
    );
    let mut unknown = connect_body.clone();
    unknown["connection"] = json!("jira");
    let (status, _) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/connect",
        &me_token,
        Some(unknown),
    )
    .await;
    assert_eq!(status, 400);

    // connect -> browser -> complete.
    let (status, connect) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/connect",
        &me_token,
        Some(connect_body),
    )
    .await;
    assert_eq!(status, 201, "{connect}");
    assert_eq!(
        connect["connect_uri"],
        idp.url("connected-accounts/connect")
    );
    assert_eq!(connect["expires_in"], 300);
    let location = browser_connect(&connect).await;
    assert!(location.starts_with(CALLBACK), "{location}");
    assert_eq!(
        callback_param(&location, "state", false).as_deref(),
        Some("st-123")
    );
    let code = callback_param(&location, "connect_code", false).unwrap();
    let complete = |code: &str, redirect: &str, verifier: &str| {
        json!({
            "auth_session": connect["auth_session"],
            "connect_code": code,
            "redirect_uri": redirect,
            "code_verifier": verifier,
        })
    };
    for bad in [
        complete("nope", CALLBACK, &verifier),
        complete(&code, "http://127.0.0.1:18485/callback", &verifier),
        complete(
            &code,
            CALLBACK,
            "wrong-verifier-wrong-verifier-wrong-verifier",
        ),
    ] {
        let (status, body) = my_account(
            &idp,
            reqwest::Method::POST,
            "connected-accounts/complete",
            &me_token,
            Some(bad),
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, account) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/complete",
        &me_token,
        Some(complete(&code, CALLBACK, &verifier)),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    assert!(account["id"].as_str().unwrap().starts_with("cac_"));
    assert_eq!(account["connection"], "github");
    assert_eq!(account["access_type"], "offline");
    assert_eq!(account["scopes"], json!(["repo", "read:org"]));
    // Single use.
    let (status, _) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/complete",
        &me_token,
        Some(complete(&code, CALLBACK, &verifier)),
    )
    .await;
    assert_eq!(status, 409);
    let (status, list) = my_account(
        &idp,
        reqwest::Method::GET,
        "connected-accounts/accounts",
        &read_only,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["accounts"][0]["id"], account["id"]);

    // The daemon exchanges the CLI's API access token for the linked account.
    let (status, body) = exchange(
        &idp,
        &cli.access_token,
        SUBJECT_TOKEN_TYPE_ACCESS_TOKEN,
        "github",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "repo read:org");
    // A My Account token is not for the daemon's API.
    let r = exchange(
        &idp,
        &me_token,
        SUBJECT_TOKEN_TYPE_ACCESS_TOKEN,
        "github",
        &[],
    )
    .await;
    assert_eq!(error_of(&r), (403, "unauthorized_client"));

    // Deleting the account through the API unlinks it.
    let id = account["id"].as_str().unwrap();
    let resp = http()
        .delete(idp.my_account_url(&format!("connected-accounts/accounts/{id}")))
        .bearer_auth(&me_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _) = my_account(
        &idp,
        reqwest::Method::DELETE,
        &format!("connected-accounts/accounts/{id}"),
        &me_token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let r = exchange(
        &idp,
        &cli.access_token,
        SUBJECT_TOKEN_TYPE_ACCESS_TOKEN,
        "github",
        &[],
    )
    .await;
    assert_eq!(
        error_of(&r),
        (401, "federated_connection_refresh_token_not_found")
    );
}

#[tokio::test]
async fn device_login_for_my_account_with_mrrt_off_and_fragment_callback() {
    let idp = start(IdpOptions {
        mrrt: false,
        connect_code_in_fragment: true,
        ..IdpOptions::default()
    })
    .await;
    let me = idp.my_account_audience();

    // Without MRRT the audience is ignored, like Auth0 without a refresh-token policy.
    let cli = idp
        .device_login(
            OPERATOR,
            "openid offline_access read:status",
            idp.audience(),
        )
        .await
        .unwrap();
    let (status, body) = refresh_as_cli(
        &idp,
        cli.refresh_token.as_deref().unwrap(),
        &me,
        &MY_ACCOUNT_SCOPES.join(" "),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        idp.audience()
    );

    // A device login straight for the My Account API works without MRRT.
    let scope = format!("openid offline_access {}", MY_ACCOUNT_SCOPES.join(" "));
    let direct = idp.device_login(OPERATOR, &scope, &me).await.unwrap();
    let c = claims(&direct.access_token);
    assert_eq!(c["aud"], me);
    assert_eq!(c["scope"], MY_ACCOUNT_SCOPES.join(" "));

    // The callback carries connect_code and state in the fragment; without PKCE no verifier.
    let (status, connect) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/connect",
        &direct.access_token,
        Some(json!({ "connection": "slack", "redirect_uri": CALLBACK, "state": "s1" })),
    )
    .await;
    assert_eq!(status, 201, "{connect}");
    let location = browser_connect(&connect).await;
    assert_eq!(callback_param(&location, "connect_code", false), None);
    assert_eq!(
        callback_param(&location, "state", true).as_deref(),
        Some("s1")
    );
    let code = callback_param(&location, "connect_code", true).unwrap();
    let (status, account) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/complete",
        &direct.access_token,
        Some(json!({
            "auth_session": connect["auth_session"],
            "connect_code": code,
            "redirect_uri": CALLBACK,
        })),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    let linked = idp.linked_accounts().await.unwrap();
    assert_eq!(linked.len(), 1);
    assert_eq!(
        (linked[0].sub.as_str(), linked[0].connection.as_str()),
        (OPERATOR, "slack")
    );
    assert_eq!(linked[0].id, account["id"].as_str().unwrap());
    // The ticket was used.
    let resp = http()
        .get(connect["connect_uri"].as_str().unwrap())
        .query(&[(
            "ticket",
            connect["connect_params"]["ticket"].as_str().unwrap(),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    // The user refuses at the provider: the callback carries the error, nothing is linked.
    let (status, connect) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/connect",
        &direct.access_token,
        Some(json!({ "connection": "github", "redirect_uri": CALLBACK, "state": "s2" })),
    )
    .await;
    assert_eq!(status, 201, "{connect}");
    let resp = http()
        .get(connect["connect_uri"].as_str().unwrap())
        .query(&[
            (
                "ticket",
                connect["connect_params"]["ticket"].as_str().unwrap(),
            ),
            ("consent", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        callback_param(&location, "error", true).as_deref(),
        Some("access_denied")
    );
    assert_eq!(
        callback_param(&location, "state", true).as_deref(),
        Some("s2")
    );
    let (status, _) = my_account(
        &idp,
        reqwest::Method::POST,
        "connected-accounts/complete",
        &direct.access_token,
        Some(json!({
            "auth_session": connect["auth_session"],
            "connect_code": "anything",
            "redirect_uri": CALLBACK,
        })),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(idp.linked_accounts().await.unwrap().len(), 1);
}

#[tokio::test]
async fn mrrt_off_error_refuses_other_audiences() {
    let idp = start(IdpOptions {
        mrrt: false,
        mrrt_off_error: true,
        ..IdpOptions::default()
    })
    .await;
    let cli = idp
        .device_login(
            OPERATOR,
            "openid offline_access read:status",
            idp.audience(),
        )
        .await
        .unwrap();
    let refresh = cli.refresh_token.unwrap();
    let r = refresh_as_cli(
        &idp,
        &refresh,
        &idp.my_account_audience(),
        &MY_ACCOUNT_SCOPES.join(" "),
    )
    .await;
    assert_eq!(error_of(&r), (403, "access_denied"), "{}", r.1);
    // The original audience still refreshes.
    let r = refresh_as_cli(&idp, &refresh, idp.audience(), "").await;
    assert_eq!(r.0, 200, "{}", r.1);
}
