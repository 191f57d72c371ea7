//! The provider's CIBA and device behaviour, as the daemon and CLI see it on the wire.
use super::*;
use serde_json::{Value, json};
use std::time::Duration;

const CIBA: &str = "urn:openid:params:grant-type:ciba";

fn login_hint(idp: &IdentityProvider, sub: &str) -> String {
    json!({ "format": "iss_sub", "iss": idp.issuer(), "sub": sub }).to_string()
}

async fn post(
    idp: &IdentityProvider,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(idp.url(path))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

type HeaderMap = reqwest::header::HeaderMap;

async fn bc_authorize(idp: &IdentityProvider, sub: &str, msg: &str, expiry: &str) -> (u16, Value) {
    let hint = login_hint(idp, sub);
    let (status, _, body) = post(
        idp,
        "bc-authorize",
        &[
            ("client_id", idp.daemon_client_id()),
            ("client_secret", idp.daemon_client_secret()),
            ("login_hint", &hint),
            ("scope", "openid block:approve"),
            ("audience", idp.audience()),
            ("binding_message", msg),
            ("requested_expiry", expiry),
        ],
    )
    .await;
    (status, body)
}

async fn poll_ciba(idp: &IdentityProvider, id: &str) -> (u16, HeaderMap, Value) {
    post(
        idp,
        "oauth/token",
        &[
            ("grant_type", CIBA),
            ("auth_req_id", id),
            ("client_id", idp.daemon_client_id()),
            ("client_secret", idp.daemon_client_secret()),
        ],
    )
    .await
}

fn claims(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn ciba_approve_deny_expire_and_errors() {
    let mut idp = IdentityProvider::start(IdpOptions::default())
        .await
        .unwrap();
    assert!(idp.issuer().ends_with('/'));

    // Approve: the phone shows the binding message; the ID token's aud is the daemon.
    let (status, body) = bc_authorize(
        &idp,
        "auth0|operator1",
        "DC-4F2A block skill evil-skill",
        "120",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["auth_req_id"].as_str().unwrap().to_owned();
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["interval"], 1);
    let (status, _, body) = poll_ciba(&idp, &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("authorization_pending"))
    );
    // Polling again at once is too fast.
    let (status, headers, body) = poll_ciba(&idp, &id).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("slow_down")));
    assert_eq!(headers.get("retry-after").unwrap(), "6");
    assert_eq!(body["interval"], 6);
    let pending = idp.pending_ciba().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].binding_message.as_deref(),
        Some("DC-4F2A block skill evil-skill")
    );
    assert_eq!(pending[0].email.as_deref(), Some("operator1@example.com"));
    idp.approve_ciba(&CibaSelector::BindingMessage(
        "DC-4F2A block skill evil-skill".into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(6100)).await;
    let (status, _, body) = poll_ciba(&idp, &id).await;
    assert_eq!(status, 200, "{body}");
    let id_token = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id_token["aud"], idp.daemon_client_id());
    assert_eq!(id_token["sub"], "auth0|operator1");
    assert_eq!(id_token["iss"], idp.issuer());
    let at = claims(body["access_token"].as_str().unwrap());
    assert_eq!(at["aud"], idp.audience());
    assert_eq!(at["client_id"], idp.daemon_client_id());
    assert!(idp.pending_ciba().await.unwrap().is_empty());

    // Deny, with HTTP Basic client authentication.
    let (_, body) = bc_authorize(&idp, "auth0|operator2", "DC-0001 allow skill x", "60").await;
    let id = body["auth_req_id"].as_str().unwrap().to_owned();
    idp.deny_ciba(&CibaSelector::Sub("auth0|operator2".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = reqwest::Client::new()
        .post(idp.url("oauth/token"))
        .basic_auth(idp.daemon_client_id(), Some(idp.daemon_client_secret()))
        .form(&[("grant_type", CIBA), ("auth_req_id", id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");

    // Expiry looks like a denial (Auth0).
    let (_, body) = bc_authorize(&idp, "auth0|operator1", "DC-0002 block mcp y", "1").await;
    let id = body["auth_req_id"].as_str().unwrap().to_owned();
    // Poll once the provider itself no longer counts the request as pending.
    crate::wait_for("the request to expire", Duration::from_secs(10), || async {
        let pending = idp.pending_ciba().await.ok()?;
        (!pending.iter().any(|p| p.auth_req_id == id)).then_some(())
    })
    .await
    .unwrap();
    let (status, _, body) = poll_ciba(&idp, &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied"))
    );

    // No push enrolment, bad binding message, bad login_hint issuer.
    let (status, body) = bc_authorize(&idp, "auth0|nopush", "DC-0003 x", "60").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = bc_authorize(&idp, "auth0|operator1", "<script>", "60").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_binding_message"))
    );
    let hint = json!({ "format": "iss_sub", "iss": idp.issuer().trim_end_matches('/'), "sub": "auth0|operator1" }).to_string();
    let (status, _, body) = post(
        &idp,
        "bc-authorize",
        &[
            ("client_id", idp.daemon_client_id()),
            ("client_secret", idp.daemon_client_secret()),
            ("login_hint", &hint),
            ("scope", "openid"),
            ("binding_message", "DC-0004 x"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // A user created at run time can be asked.
    idp.create_user(IdpUser::new("auth0|new", "new@example.com", "New Operator"))
        .await
        .unwrap();
    let (status, body) = bc_authorize(&idp, "auth0|new", "DC-0005 block skill z", "60").await;
    assert_eq!(status, 200, "{body}");

    // Signed test tokens carry the provider's kid.
    let token = idp
        .sign_token(json!({}), json!({ "sub": "auth0|x" }))
        .await
        .unwrap();
    assert_eq!(claims(&token)["iss"], idp.issuer());

    // Stop: connection refused; restart: same issuer, users kept.
    idp.stop().await.unwrap();
    assert!(
        reqwest::Client::new()
            .get(idp.url(".well-known/openid-configuration"))
            .send()
            .await
            .is_err()
    );
    idp.restart().await.unwrap();
    let (status, body) = bc_authorize(&idp, "auth0|new", "DC-0006 block skill z", "60").await;
    assert_eq!(status, 200, "{body}");
}
