//! Tests of the OpenID Connect module against a scripted identity provider on
//! loopback, kept only for what the real provider (`oidc_tokens.rs`) cannot be
//! made to do: publish, rotate or retire arbitrary keys (rotation, a burst on a
//! new kid, a dropped key), go down or stall mid-refresh, serve a discovery
//! document for another issuer, and answer CIBA with scripted sequences and
//! error codes (pending then approved, slow_down, 5xx, forged ID tokens).
//! Settings, roles and binding messages need no provider at all.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use defenseclawd::oidc::{
    self, AuthMode, AuthReqId, AuthSettings, CibaClient, CibaError, CibaOutcome, ClientSecret,
    PollOutcome, Provider, RejectReason, Role, TokenVerifier, UserInfoCache,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const AUD: &str = "https://defenseclaw.test/api";
const DAEMON_CLIENT: &str = "daemon-client";
const CLIENT_SECRET: &str = "s3cr3t-client-value";
const ALICE: &str = "auth0|alice";

// ---------------------------------------------------------------------------------------
// Keys

pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/oidc/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn jwk(key: u8, kid: &str) -> Value {
    let mut jwk: Value = serde_json::from_str(&fixture(&format!("key{key}.jwk.json"))).unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

fn sign(key: u8, kid: &str, claims: &Value) -> String {
    let pem = fixture(&format!("key{key}.pem"));
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn access_claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": ALICE,
        "aud": [AUD, format!("{issuer}userinfo")],
        "iat": now(),
        "exp": now() + 600,
        "azp": "cli-client",
        "scope": "openid profile defenseclaw:read defenseclaw:operate",
        "permissions": ["defenseclaw:admin"],
    })
}

pub(crate) fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

// ---------------------------------------------------------------------------------------
// Scripted identity provider

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn error(status: u16, code: &str) -> Self {
        Self::json(
            status,
            json!({"error": code, "error_description": format!("{code} (scripted)")}),
        )
    }
}

#[derive(Debug)]
struct Request {
    path: String,
    at: Instant,
    authorization: Option<String>,
    form: HashMap<String, String>,
}

#[derive(Default)]
struct IdpState {
    jwks: Vec<Value>,
    down: bool,
    /// The JWKS endpoint answers only after a minute (a slow provider).
    stall_jwks: bool,
    hits: HashMap<String, usize>,
    token_script: VecDeque<Reply>,
    bc_reply: Option<Reply>,
    userinfo_reply: Option<Reply>,
    requests: Vec<Request>,
}

struct MockIdp {
    issuer: String,
    state: Arc<Mutex<IdpState>>,
}

impl MockIdp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            jwks: vec![jwk(1, "k1")],
            ..IdpState::default()
        }));
        let (st, iss) = (Arc::clone(&state), issuer.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, iss) = (Arc::clone(&st), iss.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, st, iss).await;
                });
            }
        });
        Self { issuer, state }
    }

    fn set<F: FnOnce(&mut IdpState)>(&self, f: F) {
        f(&mut self.state.lock().unwrap());
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn requests(&self, path: &str) -> Vec<(Instant, Option<String>, HashMap<String, String>)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .map(|r| (r.at, r.authorization.clone(), r.form.clone()))
            .collect()
    }

    fn script_token(&self, replies: Vec<Reply>) {
        self.set(|s| s.token_script.extend(replies));
    }

    fn provider(&self, min_refetch: Duration) -> Arc<Provider> {
        provider_for(&self.issuer, min_refetch)
    }

    fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(self.provider(Duration::from_secs(3600)), AUD, 60)
    }

    fn ciba(&self) -> CibaClient {
        CibaClient::new(
            self.provider(Duration::from_secs(3600)),
            DAEMON_CLIENT,
            ClientSecret::new(CLIENT_SECRET),
        )
    }

    fn id_token(&self, changes: Value) -> String {
        let claims = with(
            json!({
                "iss": self.issuer,
                "sub": ALICE,
                "aud": DAEMON_CLIENT,
                "iat": now(),
                "exp": now() + 300,
                "email": "alice@example.com",
                "name": "Alice Example",
            }),
            changes,
        );
        sign(1, "k1", &claims)
    }

    fn approved(&self, id_token: String) -> Reply {
        Reply::json(
            200,
            json!({"access_token": "opaque-at", "id_token": id_token, "token_type": "Bearer", "expires_in": 86400, "scope": "openid"}),
        )
    }
}

/// Waits (bounded) until `provider`'s keys are past their TTL, as its health reports.
async fn past_ttl(provider: &Provider) {
    defenseclaw_testkit::wait_for(
        "the keys to pass their TTL",
        Duration::from_secs(10),
        || {
            let stale = provider.health().serving_stale;
            async move { stale.then_some(()) }
        },
    )
    .await
    .unwrap();
}

pub(crate) fn provider_for(issuer: &str, min_refetch: Duration) -> Arc<Provider> {
    let http = oidc::http_client(issuer).unwrap();
    Provider::new(issuer, http, Duration::from_secs(600), min_refetch).unwrap()
}

async fn serve(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<IdpState>>,
    issuer: String,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let _method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut content_length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).await?;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let reply = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        s.requests.push(Request {
            path: path.clone(),
            at: Instant::now(),
            authorization,
            form,
        });
        if s.down {
            None
        } else {
            Some(match path.as_str() {
                "/.well-known/openid-configuration" => Reply::json(
                    200,
                    json!({
                        "issuer": issuer,
                        "jwks_uri": format!("{issuer}.well-known/jwks.json"),
                        "token_endpoint": format!("{issuer}oauth/token"),
                        "userinfo_endpoint": format!("{issuer}userinfo"),
                        "device_authorization_endpoint": format!("{issuer}oauth/device/code"),
                        "backchannel_authentication_endpoint": format!("{issuer}bc-authorize"),
                        "revocation_endpoint": format!("{issuer}oauth/revoke"),
                        "backchannel_token_delivery_modes_supported": ["poll"],
                    }),
                ),
                "/.well-known/jwks.json" => Reply::json(200, json!({"keys": s.jwks})),
                "/oauth/token" => s
                    .token_script
                    .pop_front()
                    .unwrap_or_else(|| Reply::error(403, "authorization_pending")),
                "/bc-authorize" => s.bc_reply.clone().unwrap_or_else(|| {
                    Reply::json(
                        200,
                        json!({"auth_req_id": "areq-secret-123", "expires_in": 300, "interval": 5}),
                    )
                }),
                "/userinfo" => s
                    .userinfo_reply
                    .clone()
                    .unwrap_or_else(|| Reply::error(401, "invalid_token")),
                _ => Reply::error(404, "not_found"),
            })
        }
    };
    let stall = path == "/.well-known/jwks.json" && state.lock().unwrap().stall_jwks;
    if stall {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let mut stream = reader.into_inner();
    let Some(reply) = reply else {
        // "Down": close the connection without an answer.
        return Ok(());
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------
// Settings and roles

#[test]
fn settings_defaults_and_issuer_rules() {
    let s = AuthSettings::default();
    assert_eq!(s.mode, AuthMode::Local);
    assert_eq!(s.leeway_secs, 60);
    s.validate().unwrap();

    assert_eq!(
        oidc::settings::normalize_issuer("tenant.us.auth0.com").unwrap(),
        "https://tenant.us.auth0.com/"
    );
    assert_eq!(
        oidc::settings::normalize_issuer("tenant.us.auth0.com/").unwrap(),
        "https://tenant.us.auth0.com/"
    );
    // URLs are kept verbatim: the trailing slash is significant.
    assert_eq!(
        oidc::settings::normalize_issuer("https://login.example.com").unwrap(),
        "https://login.example.com"
    );
    assert!(oidc::settings::normalize_issuer("http://127.0.0.1:8080/").is_ok());
    assert!(oidc::settings::normalize_issuer("http://localhost:8080/").is_ok());
    assert!(oidc::settings::normalize_issuer("http://[::1]:8080/").is_ok());
    let err = oidc::settings::normalize_issuer("http://tenant.auth0.com/").unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    assert!(oidc::settings::normalize_issuer("ftp://x.example/").is_err());
    assert!(oidc::settings::normalize_issuer("https://u:p@x.example/").is_err());
    assert!(oidc::settings::normalize_issuer("").is_err());
    assert!(oidc::settings::normalize_issuer("not a domain").is_err());

    let oidc_mode = AuthSettings {
        mode: AuthMode::Oidc,
        ..AuthSettings::default()
    };
    assert!(
        oidc_mode
            .validate()
            .unwrap_err()
            .to_string()
            .contains("issuer")
    );
    let oidc_mode = AuthSettings {
        issuer: Some("tenant.us.auth0.com".into()),
        ..oidc_mode
    };
    assert!(
        oidc_mode
            .validate()
            .unwrap_err()
            .to_string()
            .contains("audience")
    );
    let oidc_mode = AuthSettings {
        audience: Some(AUD.into()),
        ..oidc_mode
    };
    oidc_mode.validate().unwrap();
    assert_eq!(
        oidc_mode.issuer_url().unwrap(),
        "https://tenant.us.auth0.com/"
    );
    let too_lax = AuthSettings {
        leeway_secs: 61,
        ..oidc_mode.clone()
    };
    assert!(
        too_lax
            .validate()
            .unwrap_err()
            .to_string()
            .contains("leeway")
    );
}

#[test]
fn settings_from_toml() {
    let s: AuthSettings = toml::from_str(
        r#"
        mode = "oidc"
        issuer = "tenant.eu.auth0.com"
        audience = "https://defenseclaw.test/api"
        cli_client_id = "cli"
        daemon_client_id = "daemon"
        leeway_secs = 30
        [roles]
        viewer = ["read:status"]
        operator = ["write:block"]
        "#,
    )
    .unwrap();
    assert_eq!(s.mode, AuthMode::Oidc);
    assert_eq!(s.roles.mapping().get("write:block"), Some(&Role::Operator));
    assert_eq!(s.jwks_ttl_secs, AuthSettings::default().jwks_ttl_secs);
    s.validate().unwrap();
    let unknown = toml::from_str::<AuthSettings>("mode = \"oidc\"\nbogus = 1\n");
    assert!(unknown.is_err());
    let bad_mode = toml::from_str::<AuthSettings>("mode = \"ldap\"\n");
    assert!(bad_mode.is_err());
    // Round trip.
    let text = toml::to_string(&s).unwrap();
    assert_eq!(toml::from_str::<AuthSettings>(&text).unwrap(), s);
}

#[test]
fn role_ordering() {
    assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    assert!(Role::Admin.satisfies(Role::Operator));
    assert!(!Role::Viewer.satisfies(Role::Operator));
    assert_eq!(Role::Operator.to_string(), "operator");
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_rate_limited() {
    let idp = MockIdp::start().await;
    let verifier = idp.verifier(); // jwks_min_refetch = 1 h
    let claims = access_claims(&idp.issuer);
    verifier.verify(&sign(1, "k1", &claims)).await.unwrap();
    assert_eq!(idp.hits("/.well-known/jwks.json"), 1);

    // Key rotation: the provider publishes k2; a token with k2 triggers an immediate refetch.
    idp.set(|s| s.jwks.push(jwk(2, "k2")));
    let v = verifier.verify(&sign(2, "k2", &claims)).await.unwrap();
    assert_eq!(v.kid, "k2");
    assert_eq!(idp.hits("/.well-known/jwks.json"), 2);

    // Another unknown kid within the rate limit: refused without a fetch.
    idp.set(|s| s.jwks.push(jwk(2, "k3")));
    for _ in 0..3 {
        let r = verifier.verify(&sign(2, "k3", &claims)).await.unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownKid);
    }
    assert_eq!(idp.hits("/.well-known/jwks.json"), 2);
    // Known kids keep working.
    verifier
        .verify(&sign(1, "k1", &with(claims, json!({"jti": "x"}))))
        .await
        .unwrap();
    assert_eq!(idp.hits("/.well-known/jwks.json"), 2);
    let h = verifier.provider().health();
    assert_eq!(h.keys, 2);
    assert!(!h.serving_stale);
    assert!(h.last_error.is_none());
    assert!(h.last_refresh_ok_at.is_some());
}

#[tokio::test]
async fn idp_down_during_refresh_keeps_cached_keys_and_reports_stale() {
    let idp = MockIdp::start().await;
    let provider = idp.provider(Duration::ZERO);
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let claims = access_claims(&idp.issuer);
    verifier.verify(&sign(1, "k1", &claims)).await.unwrap();
    assert_eq!(provider.refresh_jwks().await.unwrap(), 1);

    idp.set(|s| s.down = true);
    let err = provider.refresh_jwks().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // A new token (not in the verified-token cache) still verifies with the cached key.
    let fresh = sign(
        1,
        "k1",
        &with(claims.clone(), json!({"jti": "after-outage"})),
    );
    let v = verifier.verify(&fresh).await.unwrap();
    assert_eq!(v.sub, ALICE);
    let h = provider.health();
    assert!(h.serving_stale, "{h:?}");
    assert!(h.last_error.is_some());
    assert_eq!(h.keys, 1);
    // An unknown kid while the provider is down: the keys could not be refreshed.
    let r = verifier.verify(&sign(2, "k2", &claims)).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::JwksUnavailable);

    idp.set(|s| s.down = false);
    provider.refresh_jwks().await.unwrap();
    let h = provider.health();
    assert!(!h.serving_stale, "{h:?}");
    assert!(h.last_error.is_none());
}

#[tokio::test]
async fn no_keys_ever_loaded_is_jwks_unavailable() {
    let idp = MockIdp::start().await;
    idp.set(|s| s.down = true);
    let verifier = idp.verifier();
    let token = sign(1, "k1", &access_claims(&idp.issuer));
    let r = verifier.verify(&token).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::JwksUnavailable);
    assert_eq!(r.kid.as_deref(), Some("k1"));
    assert_eq!(r.unverified_sub.as_deref(), Some(ALICE));
    let h = verifier.provider().health();
    assert_eq!(h.keys, 0);
    assert!(!h.serving_stale);
    assert!(h.last_error.is_some());
}

#[tokio::test]
async fn discovery_issuer_must_match_configured_issuer_exactly() {
    let idp = MockIdp::start().await;
    let no_slash = idp.issuer.trim_end_matches('/').to_owned();
    let provider = provider_for(&no_slash, Duration::ZERO);
    let err = provider.discovery().await.unwrap_err();
    assert!(err.to_string().contains("trailing slash"), "{err}");
    let verifier = TokenVerifier::new(provider, AUD, 60);
    let token = sign(
        1,
        "k1",
        &with(access_claims(&idp.issuer), json!({"iss": no_slash})),
    );
    let r = verifier.verify(&token).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::JwksUnavailable);
}

// ---------------------------------------------------------------------------------------
// CIBA

#[test]
fn binding_messages() {
    oidc::validate_binding_message("DC-4F2A block skill evil-skill").unwrap();
    oidc::validate_binding_message("A+b-c_d.e,f:g#1 2").unwrap();
    assert!(oidc::validate_binding_message("").is_err());
    assert!(oidc::validate_binding_message(&"a".repeat(65)).is_err());
    oidc::validate_binding_message(&"a".repeat(64)).unwrap();
    for bad in [
        "block/skill",
        "ok?",
        "naïve",
        "tab\there",
        "new\nline",
        "quote\"",
    ] {
        assert!(oidc::validate_binding_message(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        oidc::binding_message("DC-4F2A", "block", "skill", "evil-skill"),
        "DC-4F2A block skill evil-skill"
    );
    let m = oidc::binding_message("DC-4F2A", "block", "mcp", "github.com/evil/server name?!");
    oidc::validate_binding_message(&m).unwrap();
    assert!(
        m.starts_with("DC-4F2A block mcp github.com-evil-server-name-"),
        "{m}"
    );
    let long = oidc::binding_message("DC-0001", "unblock", "skill", &"x".repeat(200));
    assert_eq!(long.chars().count(), 64);
    oidc::validate_binding_message(&long).unwrap();
    let code = oidc::new_request_code();
    assert!(code.starts_with("DC-") && code.len() == 19, "{code}");
    oidc::validate_binding_message(&code).unwrap();
}

#[tokio::test]
async fn ciba_start_posts_iss_sub_login_hint() {
    let idp = MockIdp::start().await;
    let ciba = idp.ciba();
    let start = ciba
        .start(
            ALICE,
            "DC-4F2A block skill evil-skill",
            "openid email profile",
            Some(120),
        )
        .await
        .unwrap();
    assert_eq!(start.auth_req_id.expose(), "areq-secret-123");
    // The provider said 300 s; the local deadline is capped at the 120 s requested.
    assert_eq!(start.expires_in, 120);
    assert_eq!(start.interval, 5);
    assert!(start.deadline() <= SystemTime::now() + Duration::from_secs(120));
    assert!(start.deadline() > SystemTime::now() + Duration::from_secs(100));
    let shown = format!("{start:?}");
    assert!(!shown.contains("areq-secret-123"), "{shown}");

    let reqs = idp.requests("/bc-authorize");
    assert_eq!(reqs.len(), 1);
    let form = &reqs[0].2;
    let hint: Value = serde_json::from_str(&form["login_hint"]).unwrap();
    assert_eq!(
        hint,
        json!({"format": "iss_sub", "iss": idp.issuer, "sub": ALICE})
    );
    assert!(idp.issuer.ends_with('/'));
    assert_eq!(form["client_id"], DAEMON_CLIENT);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(form["binding_message"], "DC-4F2A block skill evil-skill");
    assert_eq!(form["requested_expiry"], "120");
    assert_eq!(form["scope"], "openid email profile");

    // Local checks before anything is sent.
    assert!(matches!(
        ciba.start(ALICE, "bad/message", "openid", None).await,
        Err(CibaError::InvalidBindingMessage(_))
    ));
    assert!(matches!(
        ciba.start(ALICE, "DC-1 ok", "profile", None).await,
        Err(CibaError::InvalidArgument(_))
    ));
    assert_eq!(idp.requests("/bc-authorize").len(), 1);
    // The client's Debug output never shows the secret.
    let shown = format!("{ciba:?}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}

#[tokio::test]
async fn ciba_user_without_push_has_its_own_error() {
    let idp = MockIdp::start().await;
    idp.set(|s| {
        s.bc_reply = Some(Reply::json(
            400,
            json!({"error": "invalid_request", "error_description": "User does not have push notifications enrolled"}),
        ));
    });
    let err = idp
        .ciba()
        .start(ALICE, "DC-4F2A block skill x", "openid", None)
        .await
        .unwrap_err();
    assert!(matches!(err, CibaError::UserNotEnrolled { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("Guardian push") && msg.contains("push notifications enrolled"),
        "{msg}"
    );
    assert!(!err.is_retryable());

    // Same answer on the first poll.
    let idp = MockIdp::start().await;
    idp.script_token(vec![Reply::error(400, "invalid_request")]);
    let outcome = idp
        .ciba()
        .poll_until(
            &areq(),
            deadline(30),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(
            outcome,
            CibaOutcome::Error(CibaError::UserNotEnrolled { .. })
        ),
        "{outcome:?}"
    );
}

fn areq() -> AuthReqId {
    AuthReqId::new("areq-secret-123")
}

fn deadline(secs: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(secs)
}

#[tokio::test]
async fn ciba_approved_after_pending() {
    let idp = MockIdp::start().await;
    let id_token = idp.id_token(json!({}));
    idp.script_token(vec![
        Reply::error(403, "authorization_pending"),
        Reply::error(400, "authorization_pending"),
        idp.approved(id_token),
    ]);
    let outcome = idp
        .ciba()
        .poll_until(
            &areq(),
            deadline(30),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    let CibaOutcome::Approved(approval) = outcome else {
        panic!("expected approval, got {outcome:?}");
    };
    assert_eq!(approval.sub, ALICE);
    assert_eq!(approval.email.as_deref(), Some("alice@example.com"));
    assert_eq!(approval.name.as_deref(), Some("Alice Example"));
    let polls = idp.requests("/oauth/token");
    assert_eq!(polls.len(), 3, "stops at the first success");
    for (_, _, form) in &polls {
        assert_eq!(form["grant_type"], "urn:openid:params:grant-type:ciba");
        assert_eq!(form["auth_req_id"], "areq-secret-123");
        assert_eq!(form["client_id"], DAEMON_CLIENT);
        assert_eq!(form["client_secret"], CLIENT_SECRET);
    }
}

#[tokio::test]
async fn ciba_denied() {
    let idp = MockIdp::start().await;
    idp.script_token(vec![
        Reply::error(403, "authorization_pending"),
        Reply::error(403, "access_denied"),
    ]);
    let outcome = idp
        .ciba()
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome, CibaOutcome::Denied);
    assert_eq!(outcome.as_str(), "denied");
    assert_eq!(idp.requests("/oauth/token").len(), 2);
}

#[tokio::test]
async fn ciba_timeout_is_decided_by_the_local_deadline() {
    // Still pending when the local deadline passes.
    let idp = MockIdp::start().await;
    let ciba = idp.ciba();
    let outcome = ciba
        .poll_until(
            &areq(),
            SystemTime::now() + Duration::from_millis(300),
            Duration::from_millis(50),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome, CibaOutcome::TimedOut);
    assert!(!idp.requests("/oauth/token").is_empty());

    // Auth0 answers access_denied when the request expires: at the deadline that is a timeout.
    idp.script_token(vec![Reply::error(403, "access_denied")]);
    let outcome = ciba
        .poll_until(
            &areq(),
            SystemTime::now() + Duration::from_millis(500),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome, CibaOutcome::TimedOut);

    // expired_token (the CIBA spec's code) is a timeout too.
    idp.script_token(vec![Reply::error(400, "expired_token")]);
    let outcome = ciba
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome, CibaOutcome::TimedOut);
    assert_eq!(outcome.as_str(), "timed_out");

    // A deadline already past: no poll at all.
    let before = idp.requests("/oauth/token").len();
    let outcome = ciba
        .poll_until(
            &areq(),
            SystemTime::now() - Duration::from_secs(1),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome, CibaOutcome::TimedOut);
    assert_eq!(idp.requests("/oauth/token").len(), before);
}

#[tokio::test]
async fn ciba_slow_down_is_honoured() {
    let idp = MockIdp::start().await;
    let ciba = idp.ciba();
    idp.script_token(vec![
        Reply::json(
            429,
            json!({"error": "slow_down", "error_description": "Try again in 1 seconds.", "interval": 1}),
        )
        .header("Retry-After", "1"),
    ]);
    assert_eq!(
        ciba.poll_once(&areq()).await.unwrap(),
        PollOutcome::SlowDown {
            retry_after: Some(Duration::from_secs(1))
        }
    );

    let idp = MockIdp::start().await;
    let id_token = idp.id_token(json!({}));
    idp.script_token(vec![
        Reply::json(429, json!({"error": "slow_down", "interval": 1})).header("Retry-After", "1"),
        Reply::error(403, "authorization_pending"),
        idp.approved(id_token),
    ]);
    let outcome = idp
        .ciba()
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert!(matches!(outcome, CibaOutcome::Approved(_)), "{outcome:?}");
    let polls = idp.requests("/oauth/token");
    assert_eq!(polls.len(), 3);
    // After slow_down the interval is max(Retry-After, interval) = 1 s for every later poll.
    assert!(polls[1].0 - polls[0].0 >= Duration::from_secs(1));
    assert!(polls[2].0 - polls[1].0 >= Duration::from_secs(1));
}

#[tokio::test]
async fn ciba_backs_off_on_5xx_and_network_errors() {
    let idp = MockIdp::start().await;
    let id_token = idp.id_token(json!({}));
    idp.script_token(vec![
        Reply {
            status: 503,
            headers: Vec::new(),
            body: "<html>unavailable</html>".into(),
        },
        Reply::error(500, "server_error"),
        Reply::json(429, json!({})),
        idp.approved(id_token),
    ]);
    let outcome = idp
        .ciba()
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert!(matches!(outcome, CibaOutcome::Approved(_)), "{outcome:?}");
    let polls = idp.requests("/oauth/token");
    assert_eq!(polls.len(), 4);
    // Backoff doubles from the interval.
    assert!(polls[2].0 - polls[1].0 >= Duration::from_millis(40));
    assert!(polls[3].0 - polls[2].0 >= Duration::from_millis(80));

    // Provider unreachable until the deadline: an error with the reason, not a timeout.
    let idp = MockIdp::start().await;
    let ciba = idp.ciba();
    // Load discovery (kept for the client's lifetime) before the provider goes down.
    let _ = ciba.poll_once(&areq()).await;
    idp.set(|s| s.down = true);
    let outcome = ciba
        .poll_until(
            &areq(),
            SystemTime::now() + Duration::from_millis(400),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    let CibaOutcome::Error(e) = &outcome else {
        panic!("expected an error, got {outcome:?}");
    };
    assert!(e.is_retryable(), "{e:?}");
    assert!(idp.requests("/oauth/token").len() >= 2);
}

#[tokio::test]
async fn ciba_terminal_oauth_errors_and_cancel() {
    let idp = MockIdp::start().await;
    idp.script_token(vec![Reply::error(401, "invalid_client")]);
    let ciba = idp.ciba();
    let outcome = ciba
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    let CibaOutcome::Error(e) = &outcome else {
        panic!("expected an error, got {outcome:?}");
    };
    assert!(matches!(e, CibaError::OAuth { error, .. } if error == "invalid_client"));
    assert!(!e.to_string().contains(CLIENT_SECRET));
    assert!(!format!("{e:?}").contains("areq-secret-123"));

    idp.script_token(vec![Reply::error(400, "invalid_grant")]);
    let outcome = ciba
        .poll_until(
            &areq(),
            deadline(60),
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await;
    assert!(
        matches!(outcome, CibaOutcome::Error(CibaError::OAuth { .. })),
        "{outcome:?}"
    );

    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = ciba
        .poll_until(&areq(), deadline(60), Duration::from_millis(20), &cancel)
        .await;
    assert_eq!(outcome, CibaOutcome::Cancelled);
}

#[tokio::test]
async fn ciba_forged_or_foreign_id_tokens_are_rejected() {
    let idp = MockIdp::start().await;
    let claims = json!({
        "iss": idp.issuer, "sub": ALICE, "aud": DAEMON_CLIENT,
        "iat": now(), "exp": now() + 300,
    });
    let cases: Vec<(&str, String, RejectReason)> = vec![
        (
            "signed by another key with the provider's kid",
            sign(2, "k1", &claims),
            RejectReason::BadSignature,
        ),
        (
            "wrong audience (the CLI's client)",
            idp.id_token(json!({"aud": "cli-client"})),
            RejectReason::BadAudience,
        ),
        (
            "several audiences, azp is another client",
            idp.id_token(json!({"aud": [DAEMON_CLIENT, "other"], "azp": "other"})),
            RejectReason::BadAudience,
        ),
        (
            "wrong issuer",
            idp.id_token(json!({"iss": "https://evil.example/"})),
            RejectReason::BadIssuer,
        ),
        (
            "expired",
            idp.id_token(json!({"exp": now() - 3600})),
            RejectReason::Expired,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "k1"})),
                b64(&claims)
            ),
            RejectReason::BadAlg,
        ),
        (
            "no sub",
            idp.id_token(json!({"sub": null})),
            RejectReason::MissingSub,
        ),
    ];
    let ciba = idp.ciba();
    for (name, id_token, expected) in cases {
        idp.script_token(vec![idp.approved(id_token)]);
        let outcome = ciba
            .poll_until(
                &areq(),
                deadline(60),
                Duration::from_millis(10),
                &CancellationToken::new(),
            )
            .await;
        match outcome {
            CibaOutcome::Error(CibaError::InvalidIdToken(r)) => {
                assert_eq!(r.reason, expected, "{name}")
            }
            other => panic!("{name}: expected a rejected ID token, got {other:?}"),
        }
    }
    // An approval without an ID token is not trusted either.
    idp.script_token(vec![Reply::json(
        200,
        json!({"access_token": "at", "token_type": "Bearer"}),
    )]);
    let outcome = ciba.poll_once(&areq()).await;
    assert!(
        matches!(outcome, Err(CibaError::InvalidResponse(_))),
        "{outcome:?}"
    );
    // A valid one with several audiences and azp = this client is accepted.
    idp.script_token(vec![idp.approved(idp.id_token(
        json!({"aud": [DAEMON_CLIENT, "other"], "azp": DAEMON_CLIENT}),
    ))]);
    assert!(matches!(
        ciba.poll_once(&areq()).await,
        Ok(PollOutcome::Approved(_))
    ));
}

#[tokio::test]
async fn keys_past_their_ttl_are_served_while_refreshed_in_the_background() {
    let idp = MockIdp::start().await;
    let http = oidc::http_client(&idp.issuer).unwrap();
    let provider =
        Provider::new(&idp.issuer, http, Duration::from_secs(1), Duration::ZERO).unwrap();
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let claims = access_claims(&idp.issuer);
    verifier.verify(&sign(1, "k1", &claims)).await.unwrap();
    assert_eq!(idp.hits("/.well-known/jwks.json"), 1);
    past_ttl(&provider).await;
    // Past the TTL: the cached key answers at once and a refresh starts in the background.
    verifier
        .verify(&sign(1, "k1", &with(claims, json!({"jti": "later"}))))
        .await
        .unwrap();
    defenseclaw_testkit::wait_for("the background refresh", Duration::from_secs(10), || {
        let n = idp.hits("/.well-known/jwks.json");
        async move { (n >= 2).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(idp.hits("/.well-known/jwks.json"), 2);
}

#[test]
fn public_types_are_thread_safe_and_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<TokenVerifier>();
    send_sync::<Provider>();
    send_sync::<CibaClient>();
    send_sync::<UserInfoCache>();
    let provider = provider_for("http://127.0.0.1:9/", Duration::ZERO);
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    send(&verifier.verify("x"));
    let ciba = CibaClient::new(Arc::clone(&provider), DAEMON_CLIENT, ClientSecret::new("s"));
    send(&ciba.start(ALICE, "m", "openid", None));
    let id = areq();
    let cancel = CancellationToken::new();
    send(&ciba.poll_until(&id, SystemTime::now(), Duration::from_secs(1), &cancel));
    let cache = UserInfoCache::new(provider, Duration::ZERO, Duration::ZERO);
    send(&cache.get(ALICE, "t"));
}

#[test]
fn client_secret_and_auth_req_id_are_redacted() {
    let secret = ClientSecret::new("hunter2-secret\n");
    assert_eq!(secret.expose(), "hunter2-secret");
    assert!(!format!("{secret:?}").contains("hunter2"));
    assert!(!format!("{:?}", areq()).contains("areq-secret"));
}

#[tokio::test]
async fn a_key_dropped_from_the_jwks_invalidates_cached_tokens() {
    let idp = MockIdp::start().await;
    let provider = idp.provider(Duration::ZERO);
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let token = sign(1, "k1", &access_claims(&idp.issuer));
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    // The provider retires k1 (e.g. compromised) and publishes k2 only.
    idp.set(|s| s.jwks = vec![jwk(2, "k2")]);
    provider.refresh_jwks().await.unwrap();
    let r = verifier.verify(&token).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::UnknownKid);
    assert_eq!(r.unverified_sub.as_deref(), Some(ALICE));
}

/// A key replaced under the same kid (the IdP reusing a kid for new material)
/// must not keep serving tokens the old key signed from the cache; a refresh
/// that changes nothing only costs one full verification again.
#[tokio::test]
async fn a_key_replaced_under_its_kid_invalidates_cached_tokens() {
    let idp = MockIdp::start().await;
    let provider = idp.provider(Duration::ZERO);
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let token = sign(1, "k1", &access_claims(&idp.issuer));
    verifier.verify(&token).await.unwrap();
    provider.refresh_jwks().await.unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().sub, ALICE);
    assert_eq!(verifier.cached_tokens(), 1);
    idp.set(|s| s.jwks = vec![jwk(2, "k1")]);
    provider.refresh_jwks().await.unwrap();
    let r = verifier.verify(&token).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::BadSignature);
    // The new key's tokens verify and are cached in the refused one's place.
    let fresh = sign(2, "k1", &access_claims(&idp.issuer));
    assert_eq!(verifier.verify(&fresh).await.unwrap().sub, ALICE);
    assert_eq!(
        verifier.verify(&token).await.unwrap_err().reason,
        RejectReason::BadSignature
    );
}

#[tokio::test]
async fn ciba_start_rate_limited_is_retryable() {
    let idp = MockIdp::start().await;
    idp.set(|s| {
        s.bc_reply = Some(Reply::error(429, "too_many_requests"));
    });
    let err = idp
        .ciba()
        .start(ALICE, "DC-4F2A block skill x", "openid", None)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    idp.set(|s| {
        s.bc_reply = Some(Reply::error(401, "invalid_client"));
    });
    let err = idp
        .ciba()
        .start(ALICE, "DC-4F2A block skill x", "openid", None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_a_new_kid_shares_one_refetch() {
    let idp = MockIdp::start().await;
    let verifier = Arc::new(idp.verifier()); // jwks_min_refetch = 1 h
    let claims = access_claims(&idp.issuer);
    verifier.verify(&sign(1, "k1", &claims)).await.unwrap();
    idp.set(|s| s.jwks.push(jwk(2, "k2")));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let verifier = Arc::clone(&verifier);
        let token = sign(2, "k2", &with(claims.clone(), json!({"jti": i})));
        tasks.push(tokio::spawn(async move { verifier.verify(&token).await }));
    }
    for task in tasks {
        let v = task.await.unwrap().unwrap();
        assert_eq!(v.kid, "k2");
    }
    assert_eq!(idp.hits("/.well-known/jwks.json"), 2);
}

#[tokio::test]
async fn a_slow_provider_never_delays_verification_with_cached_keys() {
    let idp = MockIdp::start().await;
    let http = oidc::http_client(&idp.issuer).unwrap();
    let provider =
        Provider::new(&idp.issuer, http, Duration::from_secs(1), Duration::ZERO).unwrap();
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let claims = access_claims(&idp.issuer);
    verifier.verify(&sign(1, "k1", &claims)).await.unwrap();
    idp.set(|s| s.stall_jwks = true);
    past_ttl(&provider).await;
    // Past the TTL with a stalled JWKS endpoint: the background refresh hangs, callers don't.
    for i in 0..5 {
        let token = sign(1, "k1", &with(claims.clone(), json!({"jti": i})));
        let verified = tokio::time::timeout(Duration::from_secs(10), verifier.verify(&token))
            .await
            .expect("verification must not wait for the provider");
        verified.unwrap();
    }
    let h = provider.health();
    assert!(h.serving_stale, "{h:?}");
    assert_eq!(h.keys, 1);
}

#[tokio::test]
async fn an_expired_token_is_refused_even_though_it_was_cached() {
    let idp = MockIdp::start().await;
    // No leeway: the token is good until its exp and not a second longer.
    let verifier = TokenVerifier::new(idp.provider(Duration::from_secs(3600)), AUD, 0);
    let token = sign(
        1,
        "k1",
        &with(access_claims(&idp.issuer), json!({"exp": now() + 2})),
    );
    verifier.verify(&token).await.unwrap();
    assert_eq!(
        verifier.cached_tokens(),
        1,
        "a verified token is remembered"
    );
    verifier.verify(&token).await.unwrap();
    while now() < now_after_exp(&token) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = verifier.verify(&token).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::Expired);
}

/// The first second at which `token` (exp in its payload) is expired.
fn now_after_exp(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_i64().unwrap() + 1
}

#[tokio::test]
async fn a_rotated_out_key_drops_its_cached_tokens_and_the_cache_forgets_them() {
    let idp = MockIdp::start().await;
    let provider = idp.provider(Duration::ZERO);
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60).with_cache_capacity(2);
    let old = sign(1, "k1", &access_claims(&idp.issuer));
    verifier.verify(&old).await.unwrap();
    idp.set(|s| s.jwks = vec![jwk(2, "k2")]);
    provider.refresh_jwks().await.unwrap();
    // Refused although it verified a moment ago.
    let r = verifier.verify(&old).await.unwrap_err();
    assert_eq!(r.reason, RejectReason::UnknownKid);
    // New tokens under the new key fill the cache; the retired key's token goes first.
    for i in 0..2 {
        let t = sign(
            2,
            "k2",
            &with(access_claims(&idp.issuer), json!({"jti": i})),
        );
        verifier.verify(&t).await.unwrap();
    }
    assert_eq!(verifier.cached_tokens(), 2);
    assert_eq!(
        verifier.verify(&old).await.unwrap_err().reason,
        RejectReason::UnknownKid
    );
}

#[tokio::test]
async fn a_spray_of_tokens_cannot_grow_the_verified_token_cache() {
    let idp = MockIdp::start().await;
    let verifier =
        TokenVerifier::new(idp.provider(Duration::from_secs(3600)), AUD, 60).with_cache_capacity(8);
    // Forged tokens (right kid, wrong key) and tokens for another audience are never remembered.
    for i in 0..40 {
        let claims = with(access_claims(&idp.issuer), json!({"jti": i}));
        let forged = sign(2, "k1", &claims);
        assert_eq!(
            verifier.verify(&forged).await.unwrap_err().reason,
            RejectReason::BadSignature
        );
        let foreign = sign(1, "k1", &with(claims, json!({"aud": "someone-else"})));
        verifier.verify(&foreign).await.unwrap_err();
    }
    assert_eq!(verifier.cached_tokens(), 0, "no refused token is cached");
    // Distinct valid tokens: the cache stays at its bound, the most recent kept.
    let keep = sign(
        1,
        "k1",
        &with(access_claims(&idp.issuer), json!({"jti": "keep"})),
    );
    for i in 0..64 {
        let t = sign(
            1,
            "k1",
            &with(access_claims(&idp.issuer), json!({"jti": i})),
        );
        verifier.verify(&t).await.unwrap();
        verifier.verify(&keep).await.unwrap();
        assert!(verifier.cached_tokens() <= 8, "bound exceeded after {i}");
    }
    assert_eq!(verifier.cached_tokens(), 8);
    // Every token still verifies (an evicted one is simply checked again).
    let first = sign(
        1,
        "k1",
        &with(access_claims(&idp.issuer), json!({"jti": 0})),
    );
    assert_eq!(verifier.verify(&first).await.unwrap().sub, ALICE);
}
