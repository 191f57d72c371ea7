//! Tests of the OpenID Connect module against a scripted identity provider on loopback:
//! the access-token attack suite, the JWKS cache, `/userinfo` and the CIBA client.

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

fn fixture(name: &str) -> String {
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

fn now() -> i64 {
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

fn with(mut base: Value, changes: Value) -> Value {
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

fn provider_for(issuer: &str, min_refetch: Duration) -> Arc<Provider> {
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

// ---------------------------------------------------------------------------------------
// Access-token verification

#[tokio::test]
async fn valid_token_is_verified_and_mapped_to_roles() {
    let idp = MockIdp::start().await;
    let verifier = idp.verifier();
    let token = sign(1, "k1", &access_claims(&idp.issuer));
    let v = verifier.verify(&token).await.unwrap();
    assert_eq!(v.sub, ALICE);
    assert_eq!(v.issuer, idp.issuer);
    assert_eq!(v.client_id.as_deref(), Some("cli-client"));
    assert_eq!(v.kid, "k1");
    assert!(v.scopes.contains("defenseclaw:operate"));
    assert!(v.permissions.contains("defenseclaw:admin"));
    assert!(v.expires_at > now());
    let roles = AuthSettings::default().roles_for(&v);
    assert_eq!(
        roles.into_iter().collect::<Vec<_>>(),
        vec![Role::Viewer, Role::Operator, Role::Admin]
    );

    // Same token again: served from the verified-token cache, same answer.
    assert_eq!(verifier.verify(&token).await.unwrap(), v);
    // Nothing printable holds the token.
    let shown = format!("{verifier:?} {v:?} {:?}", verifier.provider());
    assert!(!shown.contains(&token), "{shown}");
    assert!(!serde_json::to_string(&v).unwrap().contains(&token));
    let header = format!("Bearer {token}");
    assert_eq!(verifier.verify_header(Some(&header)).await.unwrap(), v);

    // RFC 9068 shape (oidc-provider): string aud, client_id instead of azp, no permissions.
    let rfc9068 = with(
        access_claims(&idp.issuer),
        json!({"aud": AUD, "azp": null, "client_id": "native-cli", "permissions": null,
               "scope": "read:status", "email": "a@example.com", "name": "Alice"}),
    );
    let v = verifier.verify(&sign(1, "k1", &rfc9068)).await.unwrap();
    assert_eq!(v.client_id.as_deref(), Some("native-cli"));
    assert!(v.permissions.is_empty());
    assert_eq!(v.email.as_deref(), Some("a@example.com"));
    assert!(AuthSettings::default().roles_for(&v).is_empty());

    // Within the leeway is still accepted.
    let skewed = with(
        access_claims(&idp.issuer),
        json!({"exp": now() - 30, "nbf": now() + 30}),
    );
    verifier.verify(&sign(1, "k1", &skewed)).await.unwrap();
    // Exactly one discovery and one JWKS fetch for all of the above.
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/.well-known/jwks.json"), 1);
}

/// Every forged, stale or malformed token the attack suite throws, with the
/// reason it must be refused for.
fn attack_tokens(iss: &str) -> Vec<(&'static str, String, RejectReason)> {
    let good = access_claims(iss);
    let valid = sign(1, "k1", &good);
    let pub_pem = fixture("key1.pub.pem");
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &good,
        &EncodingKey::from_secret(pub_pem.as_bytes()).unwrap(),
    )
    .unwrap();

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&good)
    );
    let alg_none_sig = {
        let sig = valid.rsplit('.').next().unwrap();
        format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": "none", "kid": "k1"})),
            b64(&good)
        )
    };
    let alg_rs384 = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS384", "kid": "k1"})),
        b64(&good),
        valid.rsplit('.').next().unwrap()
    );
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let evil = with(good.clone(), json!({"sub": "auth0|mallory"}));
        format!("{}.{}.{}", parts[0], b64(&evil), parts[2])
    };
    let oversized = {
        let big = with(good.clone(), json!({"pad": "x".repeat(9000)}));
        sign(1, "k1", &big)
    };
    let issuer_no_slash = iss.trim_end_matches('/').to_owned();

    let cases: Vec<(&str, String, RejectReason)> = vec![
        ("alg none", alg_none, RejectReason::BadAlg),
        (
            "alg none with a signature",
            alg_none_sig,
            RejectReason::BadAlg,
        ),
        (
            "HS256 keyed with the RSA public key",
            hs256,
            RejectReason::BadAlg,
        ),
        ("RS384", alg_rs384, RejectReason::BadAlg),
        (
            "expired",
            sign(1, "k1", &with(good.clone(), json!({"exp": now() - 3600}))),
            RejectReason::Expired,
        ),
        (
            "expired just past the leeway",
            sign(1, "k1", &with(good.clone(), json!({"exp": now() - 61}))),
            RejectReason::Expired,
        ),
        (
            "not yet valid",
            sign(1, "k1", &with(good.clone(), json!({"nbf": now() + 3600}))),
            RejectReason::NotYetValid,
        ),
        (
            "wrong issuer",
            sign(
                1,
                "k1",
                &with(good.clone(), json!({"iss": "https://evil.example/"})),
            ),
            RejectReason::BadIssuer,
        ),
        (
            "issuer without its trailing slash",
            sign(
                1,
                "k1",
                &with(good.clone(), json!({"iss": issuer_no_slash})),
            ),
            RejectReason::BadIssuer,
        ),
        (
            "no issuer",
            sign(1, "k1", &with(good.clone(), json!({"iss": null}))),
            RejectReason::BadIssuer,
        ),
        (
            "wrong audience (string)",
            sign(
                1,
                "k1",
                &with(good.clone(), json!({"aud": "https://other.test/api"})),
            ),
            RejectReason::BadAudience,
        ),
        (
            "wrong audience (array)",
            sign(
                1,
                "k1",
                &with(
                    good.clone(),
                    json!({"aud": ["https://other.test/api", format!("{iss}userinfo")]}),
                ),
            ),
            RejectReason::BadAudience,
        ),
        (
            "no audience",
            sign(1, "k1", &with(good.clone(), json!({"aud": null}))),
            RejectReason::BadAudience,
        ),
        (
            "unknown kid",
            sign(2, "k2", &good),
            RejectReason::UnknownKid,
        ),
        (
            "other key, same kid",
            sign(2, "k1", &good),
            RejectReason::BadSignature,
        ),
        (
            "tampered payload",
            tampered.clone(),
            RejectReason::BadSignature,
        ),
        (
            "no sub",
            sign(1, "k1", &with(good.clone(), json!({"sub": null}))),
            RejectReason::MissingSub,
        ),
        (
            "no exp",
            sign(1, "k1", &with(good.clone(), json!({"exp": null}))),
            RejectReason::Malformed,
        ),
        (
            "crit header",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]})),
                b64(&good),
                valid.rsplit('.').next().unwrap()
            ),
            RejectReason::Malformed,
        ),
        (
            "no kid",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "RS256"})),
                b64(&good),
                valid.rsplit('.').next().unwrap()
            ),
            RejectReason::Malformed,
        ),
        ("garbage", "garbage".into(), RejectReason::Malformed),
        ("garbage with dots", "a.b.c".into(), RejectReason::Malformed),
        ("four parts", format!("{valid}.x"), RejectReason::Malformed),
        ("empty", String::new(), RejectReason::Missing),
        ("oversized", oversized, RejectReason::TooLarge),
    ];
    cases
}

#[tokio::test]
async fn attack_suite_each_case_rejected_with_its_reason() {
    let idp = MockIdp::start().await;
    let verifier = idp.verifier();
    let iss = idp.issuer.clone();
    let good = access_claims(&iss);
    let valid = sign(1, "k1", &good);
    verifier.verify(&valid).await.unwrap();

    let cases = attack_tokens(&iss);
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let evil = with(good.clone(), json!({"sub": "auth0|mallory"}));
        format!("{}.{}.{}", parts[0], b64(&evil), parts[2])
    };
    for (name, token, expected) in &cases {
        let rejection = verifier
            .verify(token)
            .await
            .expect_err(&format!("{name} must be rejected"));
        assert_eq!(rejection.reason, *expected, "{name}: {rejection}");
        if token.len() > 10 {
            let shown = format!("{rejection} {rejection:?}");
            assert!(
                !shown.contains(token.as_str()),
                "{name}: rejection leaks the token"
            );
            let sig = token.rsplit('.').next().unwrap_or_default();
            if sig.len() > 10 {
                assert!(
                    !shown.contains(sig),
                    "{name}: rejection leaks the signature"
                );
            }
        }
    }
    // The refusal carries the unverified sub and kid for the audit.
    let r = verifier.verify(&tampered).await.unwrap_err();
    assert_eq!(r.unverified_sub.as_deref(), Some("auth0|mallory"));
    assert_eq!(r.kid.as_deref(), Some("k1"));
    assert_eq!(r.reason.as_str(), "bad_signature");

    // The legitimate token still works after the barrage.
    verifier.verify(&valid).await.unwrap();

    // Header parsing.
    assert_eq!(
        oidc::bearer_from_header(None).unwrap_err().reason,
        RejectReason::Missing
    );
    assert_eq!(
        oidc::bearer_from_header(Some("Basic abc"))
            .unwrap_err()
            .reason,
        RejectReason::Malformed
    );
    assert_eq!(oidc::bearer_from_header(Some("bearer abc")).unwrap(), "abc");
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

#[tokio::test]
async fn userinfo_is_cached_per_sub() {
    let idp = MockIdp::start().await;
    idp.set(|s| {
        s.userinfo_reply = Some(Reply::json(
            200,
            json!({"sub": ALICE, "name": "Alice Example", "email": "alice@example.com", "email_verified": true}),
        ));
    });
    let provider = idp.provider(Duration::ZERO);
    let cache = UserInfoCache::new(
        Arc::clone(&provider),
        Duration::from_secs(600),
        Duration::from_secs(60),
    );
    assert!(cache.cached(ALICE).is_none());
    let info = cache.get(ALICE, "access-token-a").await.unwrap();
    assert_eq!(info.email.as_deref(), Some("alice@example.com"));
    let again = cache.get(ALICE, "access-token-a").await.unwrap();
    assert_eq!(again, info);
    assert_eq!(idp.hits("/userinfo"), 1);
    assert_eq!(cache.cached(ALICE), Some(info));
    let reqs = idp.requests("/userinfo");
    assert_eq!(reqs[0].1.as_deref(), Some("Bearer access-token-a"));

    // Enrich a token that lacks name/email.
    let verifier = TokenVerifier::new(Arc::clone(&provider), AUD, 60);
    let mut v = verifier
        .verify(&sign(1, "k1", &access_claims(&idp.issuer)))
        .await
        .unwrap();
    assert!(v.email.is_none());
    cache.enrich(&mut v, "access-token-a").await.unwrap();
    assert_eq!(v.name.as_deref(), Some("Alice Example"));
    assert_eq!(idp.hits("/userinfo"), 1);

    // An answer about another user is refused; a failure is remembered briefly.
    let bob = "auth0|bob";
    assert!(cache.get(bob, "access-token-b").await.is_err());
    assert!(cache.get(bob, "access-token-b").await.is_err());
    assert_eq!(idp.hits("/userinfo"), 2);
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past the TTL: the cached key answers at once and a refresh starts in the background.
    verifier
        .verify(&sign(1, "k1", &with(claims, json!({"jti": "later"}))))
        .await
        .unwrap();
    for _ in 0..1000 {
        if idp.hits("/.well-known/jwks.json") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
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

// ---------------------------------------------------------------------------------------
// The daemon in oidc mode

fn with_bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn daemon_in_oidc_mode_stamps_the_operator_and_audits_refusals() {
    use defenseclaw_proto::v1 as pb;
    let idp = MockIdp::start().await;
    let d = crate::support::TestDaemon::start_with(&[
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", &idp.issuer),
        ("DEFENSECLAW_AUTH__AUDIENCE", AUD),
        ("DEFENSECLAW_AUTH__CLI_CLIENT_ID", "cli-client"),
    ])
    .await;
    let mut c = d.client().await;

    let cfg = c
        .get_auth_config(pb::GetAuthConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cfg.mode.as_str(), cfg.issuer.as_str()),
        ("oidc", idp.issuer.as_str())
    );
    assert_eq!(
        (cfg.audience.as_str(), cfg.cli_client_id.as_str()),
        (AUD, "cli-client")
    );
    assert!(cfg.scopes.contains(&"defenseclaw:operate".to_owned()));

    let block = || pb::SetEnforcementRequest {
        target: crate::support::skill("evil"),
        action: pb::EnforcementAction::Block as i32,
        reason: "steals keys".into(),
        connections: Vec::new(),
    };
    let operator = sign(
        1,
        "k1",
        &with(
            access_claims(&idp.issuer),
            json!({"email": "alice@example.com", "name": "Alice Example", "permissions": []}),
        ),
    );
    let viewer = sign(
        1,
        "k1",
        &with(
            access_claims(&idp.issuer),
            json!({"scope": "openid defenseclaw:read", "permissions": []}),
        ),
    );
    let other_issuer = sign(
        1,
        "k1",
        &with(
            access_claims(&idp.issuer),
            json!({"iss": idp.issuer.trim_end_matches('/')}),
        ),
    );

    // No token: unauthenticated, audited.
    let err = c.set_enforcement(block()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("auth login"), "{}", err.message());
    // Bad token: unauthenticated, audited with the reason, never the token.
    let err = c
        .set_enforcement(with_bearer(block(), &other_issuer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Valid token without the operator role: permission denied.
    let err = c
        .set_enforcement(with_bearer(block(), &viewer))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The operator: committed and stamped.
    let r = c
        .set_enforcement(with_bearer(block(), &operator))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    // Reads work without a token; a valid token is verified on the hot path too.
    let v = c
        .check_target(with_bearer(
            crate::support::skill("evil").unwrap(),
            &operator,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.decided_by, ALICE);

    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let summary: Vec<_> = entries
        .iter()
        .rev()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("auth-refused", "refused"),
            ("auth-refused", "refused"),
            ("permission-denied", "refused"),
            ("block", "success")
        ]
    );
    let stamped = entries[0].actor.clone().unwrap();
    assert_eq!(stamped.id, ALICE);
    assert_eq!(stamped.email, "alice@example.com");
    assert_eq!(stamped.name, "Alice Example");
    assert_eq!(stamped.auth_method, "oidc");
    assert_eq!(stamped.issuer, idp.issuer);
    assert_eq!(stamped.client_id, "cli-client");
    assert_eq!(
        stamped.uid, 0,
        "peer credentials are kept beside the operator"
    );
    let bad_issuer: Value = serde_json::from_str(&entries[2].details_json).unwrap();
    assert_eq!(bad_issuer["token_rejection"], "bad_issuer");
    assert_eq!(bad_issuer["unverified_sub"], ALICE);
    for e in &entries {
        for token in [&operator, &viewer, &other_issuer] {
            assert!(!e.details_json.contains(token.as_str()) && !e.reason.contains(token.as_str()));
        }
    }
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let auth = status.auth.unwrap();
    assert_eq!(auth.mode, "oidc");
    assert!(auth.jwks_keys >= 1);
    assert!(!auth.jwks_serving_stale);
}

#[tokio::test]
async fn the_daemon_refuses_every_attack_token_and_audits_each_refusal() {
    use defenseclaw_proto::v1 as pb;
    let idp = MockIdp::start().await;
    let overrides = [
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", idp.issuer.as_str()),
        ("DEFENSECLAW_AUTH__AUDIENCE", AUD),
    ];
    let d = crate::support::TestDaemon::start_with(&overrides).await;
    let mut c = d.client().await;
    let cases = attack_tokens(&idp.issuer);
    for (name, token, expected) in &cases {
        let req = with_bearer(
            pb::SetEnforcementRequest {
                target: crate::support::skill("evil"),
                action: pb::EnforcementAction::Block as i32,
                reason: String::new(),
                connections: Vec::new(),
            },
            token,
        );
        let err = c.set_enforcement(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{name}: {err:?}");
        let leaks = |text: &str| token.len() > 8 && text.contains(token.as_str());
        assert!(!leaks(err.message()), "{name}: error leaks the token");
        let last = c
            .list_audit(pb::ListAuditRequest {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .remove(0);
        assert_eq!(
            (last.action.as_str(), last.outcome.as_str()),
            ("auth-refused", "refused"),
            "{name}"
        );
        let details: Value = serde_json::from_str(&last.details_json).unwrap();
        // "Bearer " with nothing after it is a malformed header rather than a missing token.
        let seen = details["token_rejection"].as_str().unwrap_or_default();
        assert!(
            seen == expected.as_str()
                || (*expected == RejectReason::Missing && seen == "malformed"),
            "{name}: {seen}"
        );
        assert!(
            !leaks(&last.details_json) && !leaks(&last.reason),
            "{name}: audit leaks the token"
        );
    }
    let v = c
        .check_target(crate::support::skill("evil").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.verdict,
        pb::Verdict::Unknown as i32,
        "nothing was blocked"
    );
    // Refusals with the same reason share an entry per window; after shutdown
    // has written the open windows, the counts account for every refusal.
    let mut d = d;
    d.stop().await;
    let crate::support::TestDaemon { dir, .. } = d;
    let d = crate::support::TestDaemon::start_in(dir, &overrides).await;
    let mut c = d.client().await;
    let entries = c
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(entries.iter().all(|e| e.action == "auth-refused"));
    let counted: u64 = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.details_json).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, cases.len() as u64);
}
