//! The one way every crate's tests start a daemon: a temporary state directory,
//! the settings environment, a socket path, a bounded readiness wait, then
//! clients that connect to a daemon known to answer — in-process through `defenseclawd::daemon::start` (most tests), or the
//! real binary as a child process (crash and signal tests).
//!
//! In-process is the default because tests need what only the library gives:
//! the [`DaemonHandle`] (clean shutdown and restart on the same directory,
//! enforcement events) and start-up errors as values. The testkit depends on
//! `defenseclawd` for that; the daemon's own tests depend on the testkit as a
//! dev-dependency, a cycle Cargo allows, and both see one copy of the library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonHandle, DaemonOptions};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::idp::IdentityProvider;

/// How long a daemon may take to answer its first `GetStatus`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket inside a test daemon's directory.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run/defenseclawd.sock")
}

/// The settings environment of a test daemon in `dir` on `socket`: its home in
/// `dir/home`, the OpenClaw monitor off (tests that want it point it at a real
/// or fake gateway), then `overrides` in order.
pub fn daemon_env(
    dir: &Path,
    socket: &Path,
    overrides: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(
        "DEFENSECLAW_HOME".to_owned(),
        dir.join("home").display().to_string(),
    );
    env.insert(
        "DEFENSECLAW_SERVER__SOCKET".to_owned(),
        socket.display().to_string(),
    );
    env.insert(
        "DEFENSECLAW_OPENCLAW__ENABLED".to_owned(),
        "false".to_owned(),
    );
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// Polls `GetStatus` on `socket` until it answers (bounded by [`READY_TIMEOUT`])
/// and returns the client that got the answer.
pub async fn ready_client(socket: &Path) -> Result<ControlClient<Channel>> {
    crate::wait_for("the daemon to answer GetStatus", READY_TIMEOUT, || {
        let socket = socket.to_owned();
        async move {
            let mut c = crate::control_client(&socket).await.ok()?;
            c.get_status(pb::GetStatusRequest {}).await.ok()?;
            Some(c)
        }
    })
    .await
}

/// Builds a test daemon: which directory, which settings.
#[derive(Debug, Default)]
pub struct DaemonBuilder {
    dir: Option<TempDir>,
    overrides: Vec<(String, String)>,
}

impl DaemonBuilder {
    /// A daemon in a fresh temporary directory with the default test settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reuses `dir` (a restart on the state a stopped daemon left behind).
    pub fn in_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Adds `DEFENSECLAW_*` overrides; later ones win.
    pub fn envs(mut self, overrides: &[(&str, &str)]) -> Self {
        self.overrides.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// OIDC mode against `idp`, with the daemon's confidential client (CIBA,
    /// Token Vault) and the operator role on `skills:write`.
    pub fn oidc(mut self, idp: &IdentityProvider) -> Self {
        self.overrides.extend(idp.daemon_oidc_env());
        self
    }

    /// Starts the daemon in-process and waits until it answers.
    pub async fn start(self) -> Result<TestDaemon> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir().context("creating the daemon's directory")?,
        };
        let socket = socket_in(dir.path());
        let overrides: Vec<(&str, &str)> = self
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let env = daemon_env(dir.path(), &socket, &overrides);
        let settings = Settings::load(&ConfigFile::None, &env)
            .map_err(|e| anyhow!("loading the test daemon's settings: {e}"))?;
        let opts = DaemonOptions::new(settings, ConfigFile::None, env)
            .map_err(|e| anyhow!("the test daemon's options: {e}"))?;
        let handle = daemon::start(opts)
            .await
            .map_err(|e| anyhow!("starting the test daemon: {e}"))?;
        // The probe's connection is dropped: a harness that held one would take
        // a slot of the daemon's connection cap from the test.
        drop(ready_client(&socket).await?);
        Ok(TestDaemon {
            dir,
            socket,
            handle: Some(handle),
        })
    }
}

/// An in-process daemon on a temporary socket.
pub struct TestDaemon {
    /// Its state directory (`home/`, `run/`); kept when the daemon stops.
    pub dir: TempDir,
    /// Its control socket.
    pub socket: PathBuf,
    /// `None` once [`TestDaemon::stop`] ran.
    pub handle: Option<DaemonHandle>,
}

impl std::fmt::Debug for TestDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDaemon")
            .field("socket", &self.socket)
            .field("running", &self.handle.is_some())
            .finish()
    }
}

impl TestDaemon {
    /// A daemon with the default test settings.
    pub async fn start() -> Result<Self> {
        DaemonBuilder::new().start().await
    }

    /// A daemon with these `DEFENSECLAW_*` overrides.
    pub async fn start_with(overrides: &[(&str, &str)]) -> Result<Self> {
        DaemonBuilder::new().envs(overrides).start().await
    }

    /// A daemon on the state left in `dir`, with these overrides.
    pub async fn start_in(dir: TempDir, overrides: &[(&str, &str)]) -> Result<Self> {
        DaemonBuilder::new()
            .in_dir(dir)
            .envs(overrides)
            .start()
            .await
    }

    /// A daemon in OIDC mode against `idp` (see [`DaemonBuilder::oidc`]), plus `extra`.
    pub async fn start_oidc(idp: &IdentityProvider, extra: &[(&str, &str)]) -> Result<Self> {
        DaemonBuilder::new().oidc(idp).envs(extra).start().await
    }

    /// A client on a connection of its own; the daemon already answered
    /// before [`DaemonBuilder::start`] returned.
    pub async fn client(&self) -> Result<ControlClient<Channel>> {
        crate::control_client(&self.socket).await
    }

    /// The daemon's database.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("home/defenseclaw.db")
    }

    /// The refresh token sealed in `server`'s grant for `connection`, opened
    /// with the Token Vault `key` the daemon was started with.
    pub fn stored_refresh_token(
        &self,
        server: &str,
        connection: &str,
        key: &[u8; 32],
    ) -> Result<String> {
        use defenseclawd::governance::vault::seal::{KeySource, Sealer, subject_context};
        let db = rusqlite::Connection::open(self.db_path())?;
        let (sub, sealed): (String, Vec<u8>) = db.query_row(
            "SELECT subject_sub, subject_sealed FROM connection_grants WHERE server = ?1 AND connection = ?2",
            [server, connection],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let sealer = Sealer::from_key(key, KeySource::File("test".into()))?;
        let opened = sealer.open(&sealed, &subject_context(server, &sub))?;
        Ok(String::from_utf8(opened)?)
    }

    /// Stops the daemon and waits for the store to close; keeps the directory.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            tokio::time::timeout(READY_TIMEOUT, h.wait())
                .await
                .map_err(|_| anyhow!("the daemon did not stop within {READY_TIMEOUT:?}"))?
                .map_err(|e| anyhow!("the daemon stopped with an error: {e}"))?;
        }
        Ok(())
    }
}

/// A `defenseclawd` binary as a child process (killed when dropped).
#[derive(Debug)]
pub struct DaemonProcess {
    /// The child; [`DaemonProcess::wait_exit`] reaps it with a bound.
    pub child: Child,
    /// Its control socket.
    pub socket: PathBuf,
}

impl DaemonProcess {
    /// Spawns `binary` (the caller's `env!("CARGO_BIN_EXE_defenseclawd")`)
    /// with its state in `dir` and waits until it answers.
    pub async fn spawn(binary: &Path, dir: &Path) -> Result<Self> {
        Self::spawn_with(binary, dir, &[]).await
    }

    /// [`Self::spawn`] with extra environment variables (settings, secrets).
    pub async fn spawn_with(binary: &Path, dir: &Path, envs: &[(&str, &str)]) -> Result<Self> {
        let socket = socket_in(dir);
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .env("DEFENSECLAW_HOME", dir.join("home"))
            .env("DEFENSECLAW_OPENCLAW__ENABLED", "false")
            .envs(envs.iter().copied())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let process = Self { child, socket };
        ready_client(&process.socket).await?;
        Ok(process)
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("sending {sig} to the daemon"))
    }

    /// Waits (bounded by `timeout`) for the daemon to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        crate::wait_for("the daemon to exit", timeout, || {
            let status = self.child.try_wait();
            async move { status.ok().flatten() }
        })
        .await
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
