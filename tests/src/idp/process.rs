//! The provider's node process: installing its packages once, starting it on a
//! random loopback port with a bounded readiness wait, restarting it on the same
//! port, and stopping it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use tokio::process::{Child, ChildStdin};

use super::options::{IdpOptions, IdpUser};

struct Running {
    child: Child,
    // Kept open: the provider exits when it closes (IDP_EXIT_ON_STDIN_CLOSE=1).
    _stdin: Option<ChildStdin>,
}

/// A running test identity provider; killed on drop.
pub struct IdentityProvider {
    pub(super) opts: IdpOptions,
    pub(super) issuer: String,
    pub(super) port: u16,
    pub(super) kid: String,
    running: Option<Running>,
    pub(super) stderr: Arc<Mutex<String>>,
    pub(super) http: reqwest::Client,
    pub(super) created_users: Vec<IdpUser>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ReadyLine {
    issuer: String,
    port: u16,
    kid: String,
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
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        if let Some(r) = self.running.as_mut() {
            let _ = r.child.start_kill();
        }
    }
}
