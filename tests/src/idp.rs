//! A real OpenID provider for tests: `tests/idp/server.mjs` (oidc-provider 9.13.3 configured
//! like an Auth0 tenant) started on a random loopback port.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions};
//! let idp = IdentityProvider::start(IdpOptions::default()).await?;
//! let issuer = idp.issuer(); // "http://127.0.0.1:PORT/" (trailing slash, like Auth0)
//! let code = idp.wait_for_device_code(std::time::Duration::from_secs(10)).await?;
//! idp.approve_device(&code.user_code, "auth0|operator1").await?;
//! # let _ = issuer; Ok(()) }
//! ```
//!
//! Token Vault (the federated connection access token exchange) and Connected Accounts are
//! emulated too: link accounts with [`IdentityProvider::link_account`] (or through the My
//! Account API at [`IdentityProvider::my_account_url`]), then exchange at `oauth/token` with
//! [`TOKEN_VAULT_GRANT`]; [`IdentityProvider::provider_tokens`] lists the fake third-party
//! tokens handed out.
//!
//! The first start runs `npm ci` in `tests/idp` (once, guarded by a file lock so parallel
//! test binaries don't race). Without `node`/`npm` on `PATH`, [`IdentityProvider::start`]
//! returns an error that says so: tests fail loudly instead of skipping.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The default API audience (an absolute URI, as oidc-provider requires).
pub const DEFAULT_AUDIENCE: &str = "https://defenseclaw.local/api";
/// The public Native client used by `defenseclawctl` (device code grant).
pub const DEFAULT_CLI_CLIENT_ID: &str = "defenseclaw-cli";
/// The confidential client used by `defenseclawd` (CIBA).
pub const DEFAULT_DAEMON_CLIENT_ID: &str = "defenseclawd";
/// The daemon client's secret in the test provider.
pub const DEFAULT_DAEMON_CLIENT_SECRET: &str = "defenseclawd-test-secret";
/// Device authorization grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// CIBA grant type.
pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// Auth0's Token Vault grant type (exchange for a connected account's provider token).
pub const TOKEN_VAULT_GRANT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
/// Token Vault `subject_token_type` for an Auth0 refresh token (of the calling client).
pub const SUBJECT_TOKEN_TYPE_REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// Token Vault `subject_token_type` for an Auth0 access token (for the client's API).
pub const SUBJECT_TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token Vault `requested_token_type` and `issued_token_type`.
pub const FEDERATED_CONNECTION_ACCESS_TOKEN_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
/// Scopes of the My Account API (`<issuer>me/`) for Connected Accounts.
pub const MY_ACCOUNT_SCOPES: [&str; 3] = [
    "create:me:connected_accounts",
    "read:me:connected_accounts",
    "delete:me:connected_accounts",
];
/// Connections that can be linked by default.
pub const DEFAULT_CONNECTIONS: [&str; 3] = ["github", "slack", "google-oauth2"];

/// A user known to the provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdpUser {
    /// Subject, e.g. `auth0|operator1`.
    pub sub: String,
    /// `email` claim (`None`: no email claim).
    pub email: Option<String>,
    /// `name` claim (`None`: no name claim).
    pub name: Option<String>,
    /// Enrolled in Guardian push: CIBA requests for a user without it get `invalid_request`.
    pub push_enrolled: bool,
}

impl IdpUser {
    /// A push-enrolled user.
    pub fn new(sub: &str, email: &str, name: &str) -> Self {
        Self {
            sub: sub.to_owned(),
            email: Some(email.to_owned()),
            name: Some(name.to_owned()),
            push_enrolled: true,
        }
    }
}

/// Provider configuration. `Default` gives short intervals suitable for tests.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// API identifier (`audience`); access tokens for it are RS256 JWTs.
    pub audience: String,
    /// Scopes the API defines.
    pub api_scopes: Vec<String>,
    /// Public Native client id (device grant + refresh).
    pub cli_client_id: String,
    /// Confidential daemon client id (CIBA + refresh + client credentials).
    pub daemon_client_id: String,
    /// Daemon client secret.
    pub daemon_client_secret: String,
    /// Users; default `auth0|operator1`, `auth0|operator2` (push) and `auth0|nopush`.
    pub users: Vec<IdpUser>,
    /// Device flow `interval` (s). Default 1.
    pub device_interval: u64,
    /// Device code lifetime (s). Default 60.
    pub device_ttl: u64,
    /// CIBA `interval` (s). Default 1.
    pub ciba_interval: u64,
    /// Upper bound for `requested_expiry` (s). Default 300.
    pub ciba_max_expiry: u64,
    /// Access token lifetime (s). Default 3600.
    pub access_token_ttl: u64,
    /// Refresh token lifetime (s). Default 30 days.
    pub refresh_token_ttl: u64,
    /// Auth0 status codes (403/429) instead of RFC 400s. Default true.
    pub auth0_status: bool,
    /// Answer `slow_down` to polls faster than the interval. Default true.
    pub enforce_interval: bool,
    /// Seconds added to the interval on each `slow_down`. Default 5 (Auth0, RFC 8628).
    pub slow_down_step: u64,
    /// `access_denied` (Auth0, default) or `expired_token` for an expired CIBA request.
    pub ciba_expired_error: String,
    /// Connections that can be linked; `"*"` allows any name of 1-128 `[A-Za-z0-9_-]`.
    /// Default [`DEFAULT_CONNECTIONS`].
    pub connections: Vec<String>,
    /// Multi-Resource Refresh Tokens: a refresh token with `audience=<issuer>me/` (or another
    /// configured API) gets a token for that API. Default true. Off, the provider does what
    /// Auth0 does for an audience outside the client's refresh-token policies: it ignores the
    /// audience and scope and answers with a token for the original audience.
    pub mrrt: bool,
    /// With `mrrt` off: refuse such a refresh with 403 `access_denied` instead. Default false.
    pub mrrt_off_error: bool,
    /// The Connected Accounts browser step returns `connect_code` and `state` in the URL
    /// fragment (as Auth0's docs say) instead of the query. Default false.
    pub connect_code_in_fragment: bool,
    /// Extra raw config keys merged last (see `tests/idp/server.mjs`).
    pub extra: serde_json::Map<String, Value>,
}

impl Default for IdpOptions {
    fn default() -> Self {
        Self {
            audience: DEFAULT_AUDIENCE.to_owned(),
            api_scopes: [
                "read:status",
                "skills:write",
                "audit:read",
                "admin",
                "block:approve",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            cli_client_id: DEFAULT_CLI_CLIENT_ID.to_owned(),
            daemon_client_id: DEFAULT_DAEMON_CLIENT_ID.to_owned(),
            daemon_client_secret: DEFAULT_DAEMON_CLIENT_SECRET.to_owned(),
            users: vec![
                IdpUser::new("auth0|operator1", "operator1@example.com", "Operator One"),
                IdpUser::new("auth0|operator2", "operator2@example.com", "Operator Two"),
                IdpUser {
                    push_enrolled: false,
                    ..IdpUser::new("auth0|nopush", "nopush@example.com", "No Push")
                },
            ],
            device_interval: 1,
            device_ttl: 60,
            ciba_interval: 1,
            ciba_max_expiry: 300,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            auth0_status: true,
            enforce_interval: true,
            slow_down_step: 5,
            ciba_expired_error: "access_denied".to_owned(),
            connections: DEFAULT_CONNECTIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            mrrt: true,
            mrrt_off_error: false,
            connect_code_in_fragment: false,
            extra: serde_json::Map::new(),
        }
    }
}

impl IdpOptions {
    /// The JSON config passed to `server.mjs --config`.
    pub fn to_config(&self) -> Value {
        let mut cfg = json!({
            "audience": self.audience,
            "api_scopes": self.api_scopes,
            "clients": [
                { "client_id": self.cli_client_id, "type": "native" },
                {
                    "client_id": self.daemon_client_id,
                    "type": "confidential",
                    "client_secret": self.daemon_client_secret,
                    "token_endpoint_auth_method": "client_secret_post",
                },
            ],
            "users": self.users,
            "device_interval": self.device_interval,
            "device_ttl": self.device_ttl,
            "ciba_interval": self.ciba_interval,
            "ciba_max_expiry": self.ciba_max_expiry,
            "access_token_ttl": self.access_token_ttl,
            "refresh_token_ttl": self.refresh_token_ttl,
            "auth0_status": self.auth0_status,
            "enforce_interval": self.enforce_interval,
            "slow_down_step": self.slow_down_step,
            "ciba_expired_error": self.ciba_expired_error,
            "connections": self.connections,
            "mrrt": self.mrrt,
            "mrrt_off_error": self.mrrt_off_error,
            "connect_code_in_fragment": self.connect_code_in_fragment,
        });
        if let Some(obj) = cfg.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        cfg
    }
}

/// A device code waiting for the user (what `/activate` would show).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PendingDeviceCode {
    /// The code the user types, e.g. `WFHN-NXCW`.
    pub user_code: String,
    /// Requesting client.
    pub client_id: Option<String>,
    /// Requested scope string.
    pub scope: Option<String>,
    /// Requested `audience`.
    pub audience: Option<String>,
    /// Epoch seconds.
    pub created_at: i64,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// A CIBA request waiting on the user's phone.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PendingCiba {
    /// `auth_req_id` as returned by `/bc-authorize`.
    pub auth_req_id: String,
    /// The user asked to approve.
    pub sub: String,
    /// That user's email.
    pub email: Option<String>,
    /// That user's name.
    pub name: Option<String>,
    /// Requesting client.
    pub client_id: String,
    /// The message the phone shows.
    pub binding_message: Option<String>,
    /// Requested scope string.
    pub scope: Option<String>,
    /// Requested audience, if any.
    pub resource: Option<String>,
    /// `requested_expiry` as sent.
    pub requested_expiry: Option<u64>,
    /// Epoch seconds.
    pub created_at: i64,
    /// Epoch seconds.
    pub expires_at: i64,
}

/// Which pending CIBA request an admin call acts on.
#[derive(Debug, Clone)]
pub enum CibaSelector {
    /// By `auth_req_id`.
    AuthReqId(String),
    /// The single pending request with this binding message.
    BindingMessage(String),
    /// The single pending request for this user.
    Sub(String),
    /// The single pending request.
    Only,
}

impl CibaSelector {
    fn to_body(&self) -> Value {
        match self {
            Self::AuthReqId(id) => json!({ "auth_req_id": id }),
            Self::BindingMessage(m) => json!({ "binding_message": m }),
            Self::Sub(s) => json!({ "sub": s }),
            Self::Only => json!({}),
        }
    }
}

/// Failure injection; `None` fields are left unchanged. See `POST /__admin/failures`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureMode {
    /// Answer the next N device/CIBA polls with `slow_down` (interval += step, `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_down: Option<u32>,
    /// Status of injected errors (default 503).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// The next N matching requests fail with `error_status`; -1: until reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_count: Option<i64>,
    /// Paths that get injected errors (default `["/oauth/token"]`; `["*"]`: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_paths: Option<Vec<String>>,
    /// Delay every non-admin request (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Destroy non-admin connections without answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_connections: Option<bool>,
    /// Read matching requests and never answer them (the client times out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    /// Non-empty: errors, delay, drop and hang only hit `/oauth/token` requests with these
    /// `grant_type`s (e.g. `[TOKEN_VAULT_GRANT]`); empty: every matching request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<String>>,
}

/// One non-admin request the provider saw (no bodies, no secrets).
#[derive(Debug, Clone, Deserialize)]
pub struct RequestLogEntry {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Arrival, epoch milliseconds.
    pub at_ms: i64,
    /// Response status (a number), `"dropped"`, or null while in flight.
    pub status: Value,
    /// `grant_type` for `/oauth/token`.
    #[serde(default)]
    pub grant_type: Option<String>,
}

/// A connected account to create or update (`POST /__admin/connections`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountLink {
    /// The Auth0 user.
    pub sub: String,
    /// Connection name, e.g. `github`.
    pub connection: String,
    /// Provider scopes the account was linked with (the exchange's `scope`).
    pub scopes: Vec<String>,
    /// Provider-side user id; an exchange whose `login_hint` differs finds no account.
    pub login_hint: Option<String>,
    /// The provider refresh fails: exchanges answer `federated_connection_refresh_token_flow_failed`.
    pub broken: bool,
    /// `expires_in` of the provider tokens (`None`: 3600).
    pub expires_in: Option<u64>,
}

impl AccountLink {
    /// A working link with these scopes.
    pub fn new(sub: &str, connection: &str, scopes: &[&str]) -> Self {
        Self {
            sub: sub.to_owned(),
            connection: connection.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            login_hint: None,
            broken: false,
            expires_in: None,
        }
    }
}

/// A connected account in the provider (keyed by `sub` and `connection`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LinkedAccount {
    /// `cac_…`, the My Account API id.
    pub id: String,
    /// The Auth0 user.
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// Provider scopes.
    pub scopes: Vec<String>,
    /// Provider-side user id, if set.
    pub login_hint: Option<String>,
    /// Whether the provider refresh is made to fail.
    pub broken: bool,
    /// `expires_in` of provider tokens, if set (else 3600).
    pub expires_in: Option<u64>,
    /// RFC 3339 time of linking.
    pub created_at: String,
}

/// A fake third-party token issued by the Token Vault grant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProviderToken {
    /// `fake-<connection>-<hex>`.
    pub access_token: String,
    /// The user it was issued for.
    pub sub: String,
    /// Connection name.
    pub connection: String,
    /// The client that exchanged.
    pub client_id: String,
    /// [`SUBJECT_TOKEN_TYPE_REFRESH_TOKEN`] or [`SUBJECT_TOKEN_TYPE_ACCESS_TOKEN`].
    pub subject_token_type: String,
    /// Space-separated provider scopes.
    pub scope: String,
    /// Lifetime (s).
    pub expires_in: u64,
    /// Issue time, epoch milliseconds.
    pub at: i64,
}

/// Token Vault counters (`GET /__admin/token-vault`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct TokenVaultStats {
    /// Exchanges answered 200.
    pub exchanges: u64,
    /// Exchanges answered with an error by the provider (not injected failures).
    pub failures: u64,
    /// Token Vault requests hit by failure injection.
    pub injected: u64,
    /// Exchanges inside the grant handler right now (e.g. held by the delay).
    pub in_flight: u64,
    /// Delay before each exchange answers (ms).
    pub delay_ms: u64,
}

/// A successful token endpoint answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TokenSet {
    /// The access token (a JWT when an audience was requested).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Lifetime (s).
    pub expires_in: u64,
    /// Granted scope, if sent.
    #[serde(default)]
    pub scope: Option<String>,
    /// Refresh token (with `offline_access`).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// ID token (with `openid`).
    #[serde(default)]
    pub id_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReadyLine {
    issuer: String,
    port: u16,
    kid: String,
}

struct Running {
    child: Child,
    // Kept open: the provider exits when it closes (IDP_EXIT_ON_STDIN_CLOSE=1).
    _stdin: Option<ChildStdin>,
}

/// A running test identity provider; killed on drop.
pub struct IdentityProvider {
    opts: IdpOptions,
    issuer: String,
    port: u16,
    kid: String,
    running: Option<Running>,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
    created_users: Vec<IdpUser>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(45);

/// Node's start-up (loading oidc-provider, generating the RSA key) is CPU-heavy: on a
/// small machine, many tests starting providers at once slow each other down badly, so
/// at most two start at a time per process.
static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
const STDERR_KEEP: usize = 16 * 1024;

/// `tests/idp` in the source tree.
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

fn check_tool(tool: &str) -> Result<String> {
    let out = std::process::Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow!(
                "`{tool}` not found on PATH ({e}): the identity-provider tests need Node.js >= 20.18 \
                 (22 LTS recommended) and npm to run tests/idp (oidc-provider); install them, \
                 e.g. `apt-get install nodejs npm`"
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{tool} --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `npm ci` in `tests/idp` unless `node_modules` matches `package-lock.json` already.
/// Blocking; serialised across processes with a file lock.
pub fn ensure_installed() -> Result<()> {
    check_tool("node")?;
    let dir = idp_dir();
    let lock_path = dir.join(".install.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let result = install_locked(&dir);
    let _ = lock.unlock();
    result
}

fn install_locked(dir: &Path) -> Result<()> {
    let lockfile = fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("reading {}/package-lock.json", dir.display()))?;
    let stamp_path = dir.join("node_modules").join(".defenseclaw-installed");
    let installed = fs::read(&stamp_path).ok();
    let entry = dir.join("node_modules/oidc-provider/package.json");
    if installed.as_deref() == Some(lockfile.as_slice()) && entry.exists() {
        return Ok(());
    }
    check_tool("npm")?;
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running npm ci in {}", dir.display()))?;
    if !out.status.success() {
        bail!(
            "`npm ci` in {} failed ({}):\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(&stamp_path, &lockfile)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(())
}

impl IdentityProvider {
    /// Installs (once) and starts the provider on a random loopback port.
    pub async fn start(opts: IdpOptions) -> Result<Self> {
        tokio::task::spawn_blocking(ensure_installed)
            .await
            .context("npm install task")??;
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the admin HTTP client")?;
        let mut idp = Self {
            opts,
            issuer: String::new(),
            port: 0,
            kid: String::new(),
            running: None,
            stderr: Arc::new(Mutex::new(String::new())),
            http,
            created_users: Vec::new(),
        };
        // A start that stalls (seen rarely on an overloaded machine: node sits before
        // listening) is killed and tried again, up to three attempts in all.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match idp.spawn(0).await {
                Ok(()) => return Ok(idp),
                Err(e) if format!("{e:#}").contains("not ready within") => failures.push(e),
                Err(e) => return Err(e),
            }
        }
        bail!(
            "identity provider did not start in 3 attempts: {}",
            failures
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("\n---\n")
        )
    }

    async fn spawn(&mut self, port: u16) -> Result<()> {
        let _permit = STARTING
            .acquire()
            .await
            .map_err(|e| anyhow!("start semaphore: {e}"))?;
        if let Ok(mut s) = self.stderr.lock() {
            s.clear();
        }
        let config = self.opts.to_config().to_string();
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .arg("--port")
            .arg(port.to_string())
            .arg("--config")
            .arg(config)
            .current_dir(idp_dir())
            .env("IDP_EXIT_ON_STDIN_CLOSE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context("starting `node server.mjs` in tests/idp (is Node.js installed?)")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("provider stdout not captured"))?;
        if let Some(mut err) = child.stderr.take() {
            let buf = Arc::clone(&self.stderr);
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 4096];
                while let Ok(n) = err.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = buf.lock() {
                        s.push_str(&String::from_utf8_lossy(&chunk[..n]));
                        if s.len() > STDERR_KEEP {
                            let cut = s.len() - STDERR_KEEP;
                            let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                            s.drain(..cut);
                        }
                    }
                }
            });
        }
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(ready) = serde_json::from_str::<ReadyLine>(&line) {
                    return Ok::<_, anyhow::Error>(Some(ready));
                }
            }
            Ok(None)
        })
        .await;
        let ready = match ready {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let _ = child.kill().await;
                bail!(
                    "identity provider exited before it was ready; stderr:\n{}",
                    self.stderr_tail()
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "identity provider not ready within {START_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_tail()
                );
            }
        };
        // Drain further stdout so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.issuer = ready.issuer;
        self.port = ready.port;
        self.kid = ready.kid;
        self.running = Some(Running {
            child,
            _stdin: stdin,
        });
        Ok(())
    }

    /// `http://127.0.0.1:PORT/`, with the trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `kid` of the current signing key (new on every start).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The options it was started with.
    pub fn options(&self) -> &IdpOptions {
        &self.opts
    }

    /// API audience.
    pub fn audience(&self) -> &str {
        &self.opts.audience
    }

    /// CLI (public Native) client id.
    pub fn cli_client_id(&self) -> &str {
        &self.opts.cli_client_id
    }

    /// Daemon (confidential, CIBA) client id.
    pub fn daemon_client_id(&self) -> &str {
        &self.opts.daemon_client_id
    }

    /// Daemon client secret.
    pub fn daemon_client_secret(&self) -> &str {
        &self.opts.daemon_client_secret
    }

    /// The daemon's environment for oidc mode against this provider: issuer,
    /// audience, its confidential client (CIBA, Token Vault) and its secret, and
    /// the operator role on `skills:write`.
    pub fn daemon_oidc_env(&self) -> Vec<(String, String)> {
        [
            ("DEFENSECLAW_AUTH__MODE", "oidc"),
            ("DEFENSECLAW_AUTH__ISSUER", self.issuer()),
            ("DEFENSECLAW_AUTH__AUDIENCE", self.audience()),
            (
                "DEFENSECLAW_AUTH__DAEMON_CLIENT_ID",
                self.daemon_client_id(),
            ),
            ("DEFENSECLAW_AUTH__ROLES__OPERATOR", "skills:write"),
            (
                "DEFENSECLAW_AUTH_CLIENT_SECRET",
                self.daemon_client_secret(),
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// A URL under the issuer, e.g. `url("oauth/token")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path.trim_start_matches('/'))
    }

    /// The My Account API audience, `<issuer>me/`.
    pub fn my_account_audience(&self) -> String {
        self.url("me/")
    }

    /// A My Account API URL, e.g. `my_account_url("connected-accounts/connect")` is
    /// `<issuer>me/v1/connected-accounts/connect`.
    pub fn my_account_url(&self, path: &str) -> String {
        self.url(&format!("me/v1/{}", path.trim_start_matches('/')))
    }

    /// The last part of the provider's stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the process is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Kills the provider: connections are refused until [`Self::restart`].
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill().await;
            let _ = r.child.wait().await;
        }
        Ok(())
    }

    /// Starts it again on the same port and issuer. In-memory state (codes, grants,
    /// refresh tokens) is lost and the signing key is new, like a real restart; users created
    /// with [`Self::create_user`] are created again.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let port = self.port;
        let issuer = self.issuer.clone();
        let mut last = None;
        for _ in 0..50 {
            match self.spawn(port).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Some(e) = last {
            return Err(e.context(format!("restarting the identity provider on port {port}")));
        }
        if self.issuer != issuer {
            bail!(
                "restarted provider has issuer {} instead of {issuer}",
                self.issuer
            );
        }
        for user in self.created_users.clone() {
            self.post_admin("users", &serde_json::to_value(&user)?)
                .await?;
        }
        Ok(())
    }

    async fn get_admin<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(&format!("__admin/{path}"));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {url}: bad JSON {text}"))
    }

    async fn post_admin(&self, path: &str, body: &Value) -> Result<Value> {
        self.send_admin(reqwest::Method::POST, path, body).await
    }

    async fn send_admin(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        let url = self.url(&format!("__admin/{path}"));
        let resp = self
            .http
            .request(method.clone(), &url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: bad JSON {text}"))
    }

    async fn token_request(&self, path: &str, form: &[(&str, &str)]) -> Result<Value> {
        let url = self.url(path);
        let resp = self
            .http
            .post(&url)
            .form(form)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: bad JSON {text}"))
    }

    /// Device codes not yet approved, denied, consumed or expired.
    pub async fn pending_device_codes(&self) -> Result<Vec<PendingDeviceCode>> {
        self.get_admin("device/pending").await
    }

    /// Waits until at least one device code is pending and returns the newest.
    pub async fn wait_for_device_code(&self, timeout: Duration) -> Result<PendingDeviceCode> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut pending = self.pending_device_codes().await?;
            if let Some(code) = pending.pop() {
                return Ok(code);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no device code became pending within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approves a device code as `sub` (the user "typed the code and clicked Accept").
    pub async fn approve_device(&self, user_code: &str, sub: &str) -> Result<()> {
        self.post_admin(
            "device/approve",
            &json!({ "user_code": user_code, "sub": sub }),
        )
        .await
        .map(|_| ())
    }

    /// Denies a device code (the user clicked Cancel).
    pub async fn deny_device(&self, user_code: &str) -> Result<()> {
        self.post_admin("device/deny", &json!({ "user_code": user_code }))
            .await
            .map(|_| ())
    }

    /// CIBA requests waiting on a phone.
    pub async fn pending_ciba(&self) -> Result<Vec<PendingCiba>> {
        self.get_admin("ciba/pending").await
    }

    /// Waits until a CIBA request matching `pred` is pending.
    pub async fn wait_for_ciba<F>(&self, timeout: Duration, pred: F) -> Result<PendingCiba>
    where
        F: Fn(&PendingCiba) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.pending_ciba().await?.into_iter().find(|c| pred(c)) {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no matching CIBA request became pending within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approves a pending CIBA request (the user tapped Approve).
    pub async fn approve_ciba(&self, which: &CibaSelector) -> Result<PendingCibaOutcome> {
        let v = self.post_admin("ciba/approve", &which.to_body()).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Denies a pending CIBA request (the user tapped Deny).
    pub async fn deny_ciba(&self, which: &CibaSelector) -> Result<PendingCibaOutcome> {
        let v = self.post_admin("ciba/deny", &which.to_body()).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Creates (or replaces) a user.
    pub async fn create_user(&mut self, user: IdpUser) -> Result<()> {
        self.post_admin("users", &serde_json::to_value(&user)?)
            .await?;
        self.created_users.retain(|u| u.sub != user.sub);
        self.created_users.push(user);
        Ok(())
    }

    /// Sets failure injection knobs (unset fields unchanged).
    pub async fn set_failures(&self, mode: &FailureMode) -> Result<()> {
        self.post_admin("failures", &serde_json::to_value(mode)?)
            .await
            .map(|_| ())
    }

    /// Clears all failure injection.
    pub async fn reset_failures(&self) -> Result<()> {
        self.post_admin("failures/reset", &json!({}))
            .await
            .map(|_| ())
    }

    /// Recent non-admin requests, oldest first.
    pub async fn requests(&self) -> Result<Vec<RequestLogEntry>> {
        self.get_admin("requests").await
    }

    /// Signs arbitrary claims with the provider's current key (RS256, its `kid`).
    /// Defaults `iss`, `aud` (the API), `iat`, `exp` (+300 s); a `null` claim removes it.
    pub async fn sign_token(&self, header: Value, claims: Value) -> Result<String> {
        let v = self
            .post_admin("sign", &json!({ "header": header, "claims": claims }))
            .await?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("sign: no token in {v}"))
    }

    /// The current signing key's public half as an SPKI PEM (what an attacker
    /// can fetch from the JWKS), for forgeries such as HS256 keyed with it.
    pub async fn public_key_pem(&self) -> Result<String> {
        let v: Value = self.get_admin("key").await?;
        v.get("public_pem")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("key: no public_pem in {v}"))
    }

    /// Links `connection` for `sub` with these space-separated provider scopes (a working link:
    /// no `login_hint`, not broken, default lifetime). Replaces an existing link's fields.
    pub async fn link_account(
        &self,
        sub: &str,
        connection: &str,
        scope: &str,
    ) -> Result<LinkedAccount> {
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        self.link_account_with(&AccountLink::new(sub, connection, &scopes))
            .await
    }

    /// Creates or updates a connected account (what a completed Connected Accounts flow
    /// leaves behind).
    pub async fn link_account_with(&self, link: &AccountLink) -> Result<LinkedAccount> {
        let v = self
            .post_admin("connections", &serde_json::to_value(link)?)
            .await?;
        account_of(v)
    }

    /// Makes the provider refresh of an existing link fail (the user revoked the app at the
    /// provider): exchanges answer 401 `federated_connection_refresh_token_flow_failed`.
    /// Linking again repairs it.
    pub async fn break_account(&self, sub: &str, connection: &str) -> Result<LinkedAccount> {
        let v = self
            .post_admin(
                "connections",
                &json!({ "sub": sub, "connection": connection, "broken": true }),
            )
            .await?;
        account_of(v)
    }

    /// Removes a link (the connected account was deleted in Auth0): exchanges answer 401
    /// `federated_connection_refresh_token_not_found`. Fails if there is no such link.
    pub async fn unlink_account(&self, sub: &str, connection: &str) -> Result<()> {
        self.send_admin(
            reqwest::Method::DELETE,
            "connections",
            &json!({ "sub": sub, "connection": connection }),
        )
        .await
        .map(|_| ())
    }

    /// All connected accounts, of every user.
    pub async fn linked_accounts(&self) -> Result<Vec<LinkedAccount>> {
        self.get_admin("connections").await
    }

    /// Every fake provider token the Token Vault grant issued, oldest first.
    pub async fn provider_tokens(&self) -> Result<Vec<ProviderToken>> {
        self.get_admin("provider-tokens").await
    }

    /// Token Vault counters and the current delay.
    pub async fn token_vault_stats(&self) -> Result<TokenVaultStats> {
        self.get_admin("token-vault").await
    }

    /// Holds every Token Vault exchange for `delay` inside the grant (counted in
    /// [`TokenVaultStats::in_flight`]) before it answers. Exchanges already held are measured
    /// against the new delay, so `Duration::ZERO` releases them at once.
    pub async fn set_token_vault_delay(&self, delay: Duration) -> Result<()> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post_admin("token-vault", &json!({ "delay_ms": ms }))
            .await
            .map(|_| ())
    }

    /// A whole device-flow login by the CLI client for `sub`: requests a code with `scope` and
    /// `audience`, approves it and redeems it once. `offline_access` in `scope` yields a
    /// refresh token; `audience` may be the API or [`Self::my_account_audience`].
    pub async fn device_login(&self, sub: &str, scope: &str, audience: &str) -> Result<TokenSet> {
        let code = self
            .token_request(
                "oauth/device/code",
                &[
                    ("client_id", self.cli_client_id()),
                    ("scope", scope),
                    ("audience", audience),
                ],
            )
            .await?;
        let field = |name: &str| {
            code.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("device code answer without {name}: {code}"))
        };
        let (user_code, device_code) = (field("user_code")?, field("device_code")?);
        self.approve_device(&user_code, sub).await?;
        let tokens = self
            .token_request(
                "oauth/token",
                &[
                    ("grant_type", DEVICE_CODE_GRANT),
                    ("device_code", &device_code),
                    ("client_id", self.cli_client_id()),
                ],
            )
            .await?;
        Ok(serde_json::from_value(tokens)?)
    }

    /// A whole CIBA round by the daemon client for `sub`: `/bc-authorize` with `scope` (which
    /// must hold `openid`; add `offline_access` for a refresh token) and `audience`, approval
    /// on the "phone", one poll.
    pub async fn ciba_login(&self, sub: &str, scope: &str, audience: &str) -> Result<TokenSet> {
        let hint = json!({ "format": "iss_sub", "iss": self.issuer(), "sub": sub }).to_string();
        let started = self
            .token_request(
                "bc-authorize",
                &[
                    ("client_id", self.daemon_client_id()),
                    ("client_secret", self.daemon_client_secret()),
                    ("login_hint", &hint),
                    ("scope", scope),
                    ("audience", audience),
                    ("binding_message", "DC-TEST testkit login"),
                ],
            )
            .await?;
        let id = started
            .get("auth_req_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("bc-authorize answer without auth_req_id: {started}"))?;
        self.approve_ciba(&CibaSelector::AuthReqId(id.clone()))
            .await?;
        let tokens = self
            .token_request(
                "oauth/token",
                &[
                    ("grant_type", CIBA_GRANT),
                    ("auth_req_id", &id),
                    ("client_id", self.daemon_client_id()),
                    ("client_secret", self.daemon_client_secret()),
                ],
            )
            .await?;
        Ok(serde_json::from_value(tokens)?)
    }
}

fn account_of(answer: Value) -> Result<LinkedAccount> {
    let account = answer
        .get("account")
        .cloned()
        .ok_or_else(|| anyhow!("no account in {answer}"))?;
    Ok(serde_json::from_value(account)?)
}

/// Result of an admin CIBA approve/deny.
#[derive(Debug, Clone, Deserialize)]
pub struct PendingCibaOutcome {
    /// The request acted on.
    pub auth_req_id: String,
    /// Its user.
    pub sub: String,
    /// Its binding message.
    pub binding_message: Option<String>,
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        if let Some(r) = self.running.as_mut() {
            let _ = r.child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The provider's CIBA and device behaviour, as the daemon and CLI see it on the wire.

    use super::*;

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

    async fn bc_authorize(
        idp: &IdentityProvider,
        sub: &str,
        msg: &str,
        expiry: &str,
    ) -> (u16, Value) {
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
        tokio::time::sleep(Duration::from_millis(2100)).await;
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
}
