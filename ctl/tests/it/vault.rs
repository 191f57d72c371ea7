//! Token Vault from the operator's seat: allow an MCP server with a GitHub
//! connection, start it through `mcp exec`, see the provider token arrive in
//! the server's environment and nowhere else (logs, audit, database, argv,
//! the CLI's output), revoke at the provider and see the next start fail; and
//! an unattended start on the approver's sealed credential.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
use serde_json::{Value, json};
use sha2::Digest;

use defenseclaw_testkit::daemon::TestDaemon;

use crate::cli::Bounded;

const OPERATOR: &str = "auth0|operator1";
/// Upper bound for readiness waits (never a timing assertion).
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything the in-process daemon logs, at debug level, for leak checks.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An operator access token for the daemon's API, signed by the provider.
async fn operator_token(idp: &IdentityProvider) -> String {
    idp.sign_token(
        json!({}),
        json!({"sub": OPERATOR, "aud": idp.audience(), "scope": "openid skills:write",
               "email": "operator1@example.com", "name": "Operator One",
               "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 3600}),
    )
    .await
    .unwrap()
}

async fn ctl(d: &TestDaemon, token: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .env("DEFENSECLAW_TOKEN", token)
        .env("HOME", d.dir.path())
        .output()
        .bounded()
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_exec_puts_the_token_in_the_environment_only() {
    let logs = captured_logs();
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)");
    let d = TestDaemon::start_oidc(&idp, &[("DEFENSECLAW_TOKEN_VAULT__CACHE_MAX_SECS", "0")])
        .await
        .unwrap();
    let token = operator_token(&idp).await;
    // The operator linked their GitHub account (the connect flow has its own tests).
    idp.link_account(OPERATOR, "github", "repo read:org")
        .await
        .unwrap();

    let out = ctl(
        &d,
        &token,
        &[
            "-o",
            "json",
            "mcp",
            "allow",
            "github-mcp",
            "--connection",
            "github",
            "--scopes",
            "repo",
            "--reason",
            "issue triage",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(
        &d,
        &token,
        &["skill", "allow", "x", "--connection", "github"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The "server" reports which variables it got, a digest of the token and its argv.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("server.out");
    let script = format!(
        "env | cut -d= -f1 | grep -E '_TOKEN$' | sort > {r}; \
         printf %s \"$GITHUB_TOKEN\" | sha256sum | cut -d' ' -f1 >> {r}; \
         tr '\\0' ' ' < /proc/$$/cmdline >> {r}",
        r = report.display()
    );
    let out = ctl(
        &d,
        &token,
        &["mcp", "exec", "github-mcp", "--", "sh", "-c", &script],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let issued = idp.provider_tokens().await.unwrap();
    assert_eq!(issued.len(), 1);
    let provider_token = issued[0].access_token.clone();
    let seen = std::fs::read_to_string(&report).unwrap();
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("GITHUB_TOKEN"), "{seen}");
    // The operator's own token is not passed on.
    let digest = lines.next().unwrap();
    assert_eq!(
        digest,
        hex::encode(sha2::Sha256::digest(provider_token.as_bytes())),
        "{seen}"
    );
    let argv = lines.next().unwrap_or_default();
    assert!(!argv.contains(&provider_token), "token in argv: {argv}");
    assert!(!text(&out).contains(&provider_token));

    // An explicit variable name works too; undeclared connections are refused.
    let out = ctl(
        &d,
        &token,
        &[
            "mcp",
            "exec",
            "github-mcp",
            "--env",
            "GH=github",
            "--",
            "sh",
            "-c",
            "test -n \"$GH\" && test -z \"$GITHUB_TOKEN\"",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(
        &d,
        &token,
        &[
            "mcp",
            "exec",
            "github-mcp",
            "--env",
            "SLACK=slack",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("did not declare"), "{}", text(&out));

    // The inventory.
    let out = ctl(&d, &token, &["-o", "json", "connections", "list"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let inventory: Value = serde_json::from_slice(&out.stdout).unwrap();
    let grant = &inventory["grants"][0];
    assert_eq!(grant["server"], "github-mcp");
    assert_eq!(grant["connection"], "github");
    assert_eq!(grant["declared_scopes"], json!(["repo"]));
    assert_eq!(grant["approved_by"], OPERATOR);
    assert_eq!(grant["status"], "active");
    assert!(grant["use_count"].as_u64().unwrap() >= 2, "{grant}");
    let out = ctl(&d, &token, &["connections", "list"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("github-mcp"));

    // Revoked at the provider: the next start fails and says what to do.
    idp.unlink_account(OPERATOR, "github").await.unwrap();
    let out = ctl(&d, &token, &["mcp", "exec", "github-mcp", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("connections connect github"),
        "{}",
        text(&out)
    );
    let out = ctl(&d, &token, &["-o", "json", "connections", "list"]).await;
    let inventory: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inventory["grants"][0]["status"], "broken");

    // Revoked here.
    let out = ctl(
        &d,
        &token,
        &[
            "connections",
            "revoke",
            "github-mcp",
            "github",
            "--reason",
            "done",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(&d, &token, &["mcp", "exec", "github-mcp", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("revoked"), "{}", text(&out));

    // The token appears in no log line, audit entry or database file.
    let exported = ctl(&d, &token, &["audit", "export"]).await;
    assert!(exported.status.success());
    let audit = String::from_utf8_lossy(&exported.stdout);
    assert!(audit.contains("token-exchange"));
    assert!(!audit.contains(&provider_token));
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("defenseclawd"),
        "the daemon's logs were not captured"
    );
    assert!(
        !logged.contains(&provider_token),
        "a provider token was logged"
    );
    for file in std::fs::read_dir(d.dir.path().join("home")).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap_or_default();
        assert!(
            !bytes
                .windows(provider_token.len())
                .any(|w| w == provider_token.as_bytes()),
            "a provider token reached the state directory"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unattended_start_uses_the_approvers_sealed_credential() {
    use std::os::unix::fs::PermissionsExt;
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .expect("starting the local identity provider (needs node and npm)");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("token-vault.key");
    std::fs::write(&key, hex::encode([9u8; 32])).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key.display().to_string();
    // The agent's uid (this process's) is the one listed for the server.
    let agent = format!(
        "github-mcp={}",
        defenseclaw_proto::paths::current_uid().unwrap()
    );
    let d = TestDaemon::start_oidc(
        &idp,
        &[
            ("DEFENSECLAW_STEPUP__ENABLED", "true"),
            ("DEFENSECLAW_STEPUP__APPROVER", "requester,auth0|operator2"),
            ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "120"),
            ("DEFENSECLAW_TOKEN_VAULT__KEY_FILE", &key),
            ("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", &agent),
        ],
    )
    .await
    .unwrap();
    let token = operator_token(&idp).await;
    idp.link_account(OPERATOR, "github", "repo").await.unwrap();

    // The grant waits for the operator's phone.
    let out = ctl(
        &d,
        &token,
        &[
            "--no-wait",
            "-o",
            "json",
            "mcp",
            "allow",
            "github-mcp",
            "--connection",
            "github",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("DC-"), "{}", text(&out));
    let pending = defenseclaw_testkit::wait_for("the CIBA request", WAIT, || async {
        idp.pending_ciba()
            .await
            .ok()
            .and_then(|p| p.into_iter().next())
    })
    .await
    .unwrap();
    idp.approve_ciba(&defenseclaw_testkit::idp::CibaSelector::AuthReqId(
        pending.auth_req_id,
    ))
    .await
    .unwrap();
    defenseclaw_testkit::wait_for("the unattended grant", WAIT, || async {
        let out = ctl(&d, &token, &["-o", "json", "connections", "list"]).await;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["grants"][0]["unattended"] == json!(true)).then_some(())
    })
    .await
    .unwrap();

    // Hours later, started by the agent with no operator session at all.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("server.out");
    let script = format!(
        "printf %s \"$GITHUB_TOKEN\" | sha256sum | cut -d' ' -f1 > {}",
        report.display()
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["mcp", "exec", "github-mcp", "--", "sh", "-c", &script])
        .env_remove("DEFENSECLAW_SOCKET")
        .env_remove("DEFENSECLAW_TOKEN")
        .env("HOME", dir.path())
        .output()
        .bounded()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let issued = idp.provider_tokens().await.unwrap();
    let last = issued.last().unwrap();
    assert!(
        last.subject_token_type.ends_with("refresh_token"),
        "{last:?}"
    );
    assert_eq!(last.sub, OPERATOR);
    assert_eq!(
        std::fs::read_to_string(&report).unwrap().trim(),
        hex::encode(sha2::Sha256::digest(last.access_token.as_bytes()))
    );
}
