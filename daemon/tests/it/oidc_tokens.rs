//! The access-token attack suite and the daemon in OIDC mode, against the real
//! identity provider (`tests/idp`, oidc-provider): valid tokens are signed with
//! its key through its admin API, forgeries are built here as an attacker
//! would (other keys, `alg` games, edited payloads). Faults the real provider
//! cannot produce (key rotation, a JWKS it stops serving, scripted CIBA answers)
//! stay on the scripted provider in `oidc.rs`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
use defenseclawd::oidc::{
    self, AuthSettings, OidcError, Provider, RejectReason, Role, TokenVerifier, UserInfoCache,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::oidc::{fixture, now, provider_for, with};

const ALICE: &str = "auth0|operator1";
const BOB: &str = "auth0|operator2";

/// The real provider, with what the tests need of it close at hand.
struct Idp {
    idp: IdentityProvider,
    issuer: String,
    aud: String,
    kid: String,
}

impl Idp {
    async fn start() -> Self {
        let idp = IdentityProvider::start(IdpOptions::default())
            .await
            .unwrap();
        Self {
            issuer: idp.issuer().to_owned(),
            aud: idp.audience().to_owned(),
            kid: idp.kid().to_owned(),
            idp,
        }
    }

    fn provider(&self, min_refetch: Duration) -> Arc<Provider> {
        provider_for(&self.issuer, min_refetch)
    }

    fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(self.provider(Duration::from_secs(3600)), &self.aud, 60)
    }

    /// `claims` signed with the provider's own key (RS256, its `kid`).
    async fn sign(&self, claims: &Value) -> String {
        let mut claims = claims.clone();
        // The admin API fills in defaults for absent claims; a removed one is sent as null.
        for k in ["iss", "aud", "iat", "exp"] {
            if claims.get(k).is_none() {
                claims[k] = Value::Null;
            }
        }
        self.idp.sign_token(json!({}), claims).await.unwrap()
    }

    /// Requests that reached the provider on a path containing `path`.
    async fn hits(&self, path: &str) -> usize {
        self.idp
            .requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.path.contains(path))
            .count()
    }

    /// The claims of an access token for the API, in the Auth0 shape.
    fn access_claims(&self) -> Value {
        json!({
            "iss": self.issuer,
            "sub": ALICE,
            "aud": [self.aud, format!("{}userinfo", self.issuer)],
            "iat": now(),
            "exp": now() + 600,
            "azp": "cli-client",
            "scope": "openid profile defenseclaw:read defenseclaw:operate",
            "permissions": ["defenseclaw:admin"],
        })
    }
}

/// `claims` signed with a key the provider never published (fixture `key`), as `kid`.
fn forge(key: u8, kid: &str, claims: &Value) -> String {
    let pem = fixture(&format!("key{key}.pem"));
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

// ---------------------------------------------------------------------------------------
// Access-token verification

#[tokio::test]
async fn valid_token_is_verified_and_mapped_to_roles() {
    let idp = Idp::start().await;
    let verifier = idp.verifier();
    let token = idp.sign(&idp.access_claims()).await;
    let v = verifier.verify(&token).await.unwrap();
    assert_eq!(v.sub, ALICE);
    assert_eq!(v.issuer, idp.issuer);
    assert_eq!(v.client_id.as_deref(), Some("cli-client"));
    assert_eq!(v.kid, idp.kid);
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
        idp.access_claims(),
        json!({"aud": idp.aud.as_str(), "azp": null, "client_id": "native-cli", "permissions": null,
               "scope": "read:status", "email": "a@example.com", "name": "Alice"}),
    );
    let v = verifier.verify(&idp.sign(&rfc9068).await).await.unwrap();
    assert_eq!(v.client_id.as_deref(), Some("native-cli"));
    assert!(v.permissions.is_empty());
    assert_eq!(v.email.as_deref(), Some("a@example.com"));
    assert!(AuthSettings::default().roles_for(&v).is_empty());

    // Within the leeway is still accepted.
    let skewed = with(
        idp.access_claims(),
        json!({"exp": now() - 30, "nbf": now() + 30}),
    );
    verifier.verify(&idp.sign(&skewed).await).await.unwrap();
    // Exactly one discovery and one JWKS fetch for all of the above.
    assert_eq!(idp.hits("/.well-known/openid-configuration").await, 1);
    assert_eq!(idp.hits("/.well-known/jwks.json").await, 1);
}

/// Every forged, stale or malformed token the attack suite throws, with the
/// reason it must be refused for.
async fn attack_tokens(idp: &Idp) -> Vec<(&'static str, String, RejectReason)> {
    let iss = idp.issuer.as_str();
    let good = idp.access_claims();
    let valid = idp.sign(&good).await;
    let pub_pem = idp.idp.public_key_pem().await.unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(idp.kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &good,
        &EncodingKey::from_secret(pub_pem.as_bytes()).unwrap(),
    )
    .unwrap();

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": idp.kid})),
        b64(&good)
    );
    let alg_none_sig = {
        let sig = valid.rsplit('.').next().unwrap();
        format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": "none", "kid": idp.kid})),
            b64(&good)
        )
    };
    let alg_rs384 = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS384", "kid": idp.kid})),
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
        idp.sign(&big).await
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
            idp.sign(&with(good.clone(), json!({"exp": now() - 3600})))
                .await,
            RejectReason::Expired,
        ),
        (
            "expired just past the leeway",
            idp.sign(&with(good.clone(), json!({"exp": now() - 61})))
                .await,
            RejectReason::Expired,
        ),
        (
            "not yet valid",
            idp.sign(&with(good.clone(), json!({"nbf": now() + 3600})))
                .await,
            RejectReason::NotYetValid,
        ),
        (
            "wrong issuer",
            idp.sign(&with(good.clone(), json!({"iss": "https://evil.example/"})))
                .await,
            RejectReason::BadIssuer,
        ),
        (
            "issuer without its trailing slash",
            idp.sign(&with(good.clone(), json!({"iss": issuer_no_slash})))
                .await,
            RejectReason::BadIssuer,
        ),
        (
            "no issuer",
            idp.sign(&with(good.clone(), json!({"iss": null}))).await,
            RejectReason::BadIssuer,
        ),
        (
            "wrong audience (string)",
            idp.sign(&with(
                good.clone(),
                json!({"aud": "https://other.test/api"}),
            ))
            .await,
            RejectReason::BadAudience,
        ),
        (
            "wrong audience (array)",
            idp.sign(&with(
                good.clone(),
                json!({"aud": ["https://other.test/api", format!("{iss}userinfo")]}),
            ))
            .await,
            RejectReason::BadAudience,
        ),
        (
            "no audience",
            idp.sign(&with(good.clone(), json!({"aud": null}))).await,
            RejectReason::BadAudience,
        ),
        (
            "unknown kid",
            forge(2, "k2", &good),
            RejectReason::UnknownKid,
        ),
        (
            "other key, same kid",
            forge(2, &idp.kid, &good),
            RejectReason::BadSignature,
        ),
        (
            "tampered payload",
            tampered.clone(),
            RejectReason::BadSignature,
        ),
        (
            "no sub",
            idp.sign(&with(good.clone(), json!({"sub": null}))).await,
            RejectReason::MissingSub,
        ),
        (
            "no exp",
            idp.sign(&with(good.clone(), json!({"exp": null}))).await,
            RejectReason::Malformed,
        ),
        (
            "crit header",
            format!(
                "{}.{}.{}",
                b64(&json!({"alg": "RS256", "kid": idp.kid, "crit": ["exp"]})),
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
    let idp = Idp::start().await;
    let verifier = idp.verifier();
    let good = idp.access_claims();
    let valid = idp.sign(&good).await;
    verifier.verify(&valid).await.unwrap();

    let cases = attack_tokens(&idp).await;
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
    assert_eq!(r.kid.as_deref(), Some(idp.kid.as_str()));
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
async fn userinfo_is_cached_per_sub_and_an_answer_about_another_user_is_refused() {
    let idp = Idp::start().await;
    // Tokens the provider's /userinfo accepts: its key, the API audience, one user each.
    let alice_token = idp
        .idp
        .sign_token(json!({}), json!({ "sub": ALICE }))
        .await
        .unwrap();
    let bob_token = idp
        .idp
        .sign_token(json!({}), json!({ "sub": BOB }))
        .await
        .unwrap();
    let provider = idp.provider(Duration::ZERO);
    let cache = UserInfoCache::new(
        Arc::clone(&provider),
        Duration::from_secs(600),
        Duration::from_secs(60),
    );
    assert!(cache.cached(ALICE).is_none());
    let info = cache.get(ALICE, &alice_token).await.unwrap();
    assert_eq!(info.email.as_deref(), Some("operator1@example.com"));
    let again = cache.get(ALICE, &alice_token).await.unwrap();
    assert_eq!(again, info);
    assert_eq!(idp.hits("/userinfo").await, 1);
    assert_eq!(cache.cached(ALICE), Some(info));

    // Enrich a token that lacks name/email.
    let verifier = TokenVerifier::new(Arc::clone(&provider), idp.aud.as_str(), 60);
    let mut v = verifier
        .verify(&idp.sign(&idp.access_claims()).await)
        .await
        .unwrap();
    assert!(v.email.is_none());
    cache.enrich(&mut v, &alice_token).await.unwrap();
    assert_eq!(v.name.as_deref(), Some("Operator One"));
    assert_eq!(idp.hits("/userinfo").await, 1);

    // The provider answers for whoever the bearer names: Bob's token, Bob's answer.
    let bob = cache.get(BOB, &bob_token).await.unwrap();
    assert_eq!(bob.email.as_deref(), Some("operator2@example.com"));
    assert_eq!(idp.hits("/userinfo").await, 2);

    // Asking about Mallory with Alice's token gets Alice's answer: refused for
    // naming another user, and the failure is remembered briefly.
    let mallory = "auth0|mallory";
    for _ in 0..2 {
        let err = cache.get(mallory, &alice_token).await.unwrap_err();
        assert!(
            matches!(err, OidcError::InvalidResponse { .. })
                && err.to_string().contains("sub differs"),
            "{err}"
        );
    }
    assert_eq!(idp.hits("/userinfo").await, 3);
    assert!(cache.cached(mallory).is_none());
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
    let idp = Idp::start().await;
    let d = defenseclaw_testkit::daemon::TestDaemon::start_with(&[
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", &idp.issuer),
        ("DEFENSECLAW_AUTH__AUDIENCE", idp.aud.as_str()),
        ("DEFENSECLAW_AUTH__CLI_CLIENT_ID", "cli-client"),
    ])
    .await
    .unwrap();
    let mut c = d.client().await.unwrap();

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
        (idp.aud.as_str(), "cli-client")
    );
    assert!(cfg.scopes.contains(&"defenseclaw:operate".to_owned()));

    let block = || pb::SetEnforcementRequest {
        target: defenseclaw_testkit::requests::skill("evil"),
        action: pb::EnforcementAction::Block as i32,
        reason: "steals keys".into(),
        connections: Vec::new(),
    };
    let operator = idp
        .sign(&with(
            idp.access_claims(),
            json!({"email": "alice@example.com", "name": "Alice Example", "permissions": []}),
        ))
        .await;
    let viewer = idp
        .sign(&with(
            idp.access_claims(),
            json!({"scope": "openid defenseclaw:read", "permissions": []}),
        ))
        .await;
    let other_issuer = idp
        .sign(&with(
            idp.access_claims(),
            json!({"iss": idp.issuer.trim_end_matches('/')}),
        ))
        .await;

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
            defenseclaw_testkit::requests::skill("evil").unwrap(),
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
    let idp = Idp::start().await;
    let overrides = [
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", idp.issuer.as_str()),
        ("DEFENSECLAW_AUTH__AUDIENCE", idp.aud.as_str()),
    ];
    let d = defenseclaw_testkit::daemon::TestDaemon::start_with(&overrides)
        .await
        .unwrap();
    let mut c = d.client().await.unwrap();
    let cases = attack_tokens(&idp).await;
    for (name, token, expected) in &cases {
        let req = with_bearer(
            pb::SetEnforcementRequest {
                target: defenseclaw_testkit::requests::skill("evil"),
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
        .check_target(defenseclaw_testkit::requests::skill("evil").unwrap())
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
    d.stop().await.unwrap();
    let defenseclaw_testkit::daemon::TestDaemon { dir, .. } = d;
    let d = defenseclaw_testkit::daemon::TestDaemon::start_in(dir, &overrides)
        .await
        .unwrap();
    let mut c = d.client().await.unwrap();
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
