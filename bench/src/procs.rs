//! The processes under test: the real `defenseclawd`, the echo baseline (this
//! executable re-run as `echo-server`), and short-lived CLI runs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Environment variables that would make a child behave differently from a
/// plain start (systemd hand-over, foreign config overrides, sessions).
const SCRUBBED_PREFIXES: &[&str] = &["DEFENSECLAW", "NOTIFY_SOCKET", "LISTEN_", "JOURNAL_STREAM"];

/// A child process that is killed when dropped, whatever path the benchmark
/// leaves by.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Guarded {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the tail of the child's log if it has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.what))?
        {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.what,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it to
    /// exit, so it can finish its shutdown work (the daemon writes its profile).
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed ({status})", self.pid());
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.what))?
                .is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not exit within {grace:?} of SIGTERM", self.what)
    }

    /// Resident set size and its peak, in MiB, from `/proc/<pid>/status`.
    pub fn memory_mib(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in {path}"))?;
            line.trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("parsing {line:?}"))
        };
        Ok(Memory {
            rss_mib: field("VmRSS:")? / 1024.0,
            hwm_mib: field("VmHWM:")? / 1024.0,
            threads: field("Threads:")?,
        })
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS in MiB.
    pub rss_mib: f64,
    /// VmHWM (peak RSS) in MiB.
    pub hwm_mib: f64,
    /// Thread count.
    pub threads: f64,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines[from..].join("\n")
}

fn scrubbed(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// Where a sibling binary of this executable lives (`target/release/NAME`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    Ok(dir.join(name))
}

/// Checks that `path` is an executable file, explaining how to build it if not.
pub fn require_binary(path: &Path, name: &str, flag: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => bail!("{} exists but is not an executable file", path.display()),
        Err(_) => bail!(
            "{name} not found at {}.\n\
             `cargo run -p defenseclaw-bench` builds only the benchmark; build every binary first:\n\
             \n    cargo build --release --workspace\n\n\
             or point {flag} at an existing {name}.",
            path.display()
        ),
    }
}

/// The daemon's files inside the benchmark directory.
#[derive(Debug, Clone)]
pub struct DaemonLayout {
    /// `DEFENSECLAW_HOME` (the database lives here).
    pub home: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// An empty config file, so `/etc/defenseclaw` is never read.
    pub config: PathBuf,
    /// stderr of the daemon.
    pub log: PathBuf,
}

impl DaemonLayout {
    /// Paths under `dir`.
    pub fn under(dir: &Path) -> Self {
        Self {
            home: dir.join("home"),
            socket: dir.join("run").join("defenseclawd.sock"),
            config: dir.join("defenseclawd.toml"),
            log: dir.join("defenseclawd.log"),
        }
    }

    /// The database file the daemon opens.
    pub fn db(&self) -> PathBuf {
        self.home.join(defenseclawd::paths::DB_FILE)
    }
}

/// Starts `defenseclawd` with a private home, socket and empty config, plus
/// `extra_env` (the `--daemon-env` entries).
pub fn spawn_daemon(
    bin: &Path,
    layout: &DaemonLayout,
    extra_env: &[(String, String)],
) -> anyhow::Result<Guarded> {
    std::fs::write(&layout.config, "# defenseclaw-bench: built-in defaults\n")
        .with_context(|| format!("writing {}", layout.config.display()))?;
    let log =
        File::create(&layout.log).with_context(|| format!("creating {}", layout.log.display()))?;
    let mut cmd = Command::new(bin);
    scrubbed(&mut cmd);
    cmd.arg("--config")
        .arg(&layout.config)
        .arg("--socket")
        .arg(&layout.socket)
        .env("DEFENSECLAW_HOME", &layout.home)
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Guarded {
        child,
        what: "defenseclawd",
        log: layout.log.clone(),
    })
}

/// Starts this executable as `echo-server --socket SOCKET`.
pub fn spawn_echo(socket: &Path, log: &Path) -> anyhow::Result<Guarded> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&exe);
    scrubbed(&mut cmd);
    let child = cmd
        .arg("echo-server")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {} echo-server", exe.display()))?;
    Ok(Guarded {
        child,
        what: "echo server",
        log: log.to_owned(),
    })
}

/// Polls `probe` every 20 ms until it succeeds, the process dies, or 30 s pass.
pub async fn wait_ready<F, Fut>(proc: &mut Guarded, mut probe: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let deadline = Duration::from_secs(30);
    loop {
        proc.ensure_running()?;
        let last = match probe().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() > deadline {
            bail!(
                "{} did not answer within {deadline:?}: {last:#}\nlast log lines:\n{}",
                proc.what,
                log_tail(&proc.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `cmd` to completion with stdout and stderr captured (as a script's
/// `$(...)` would) and returns its wall time; fails if it exits non-zero.
pub fn time_process(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// A `defenseclawctl --socket SOCKET status` command with an isolated home
/// (no session, no token: the figure is the CLI's own cost).
pub fn ctl_status_command(ctl: &Path, socket: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(ctl);
    scrubbed(&mut cmd);
    cmd.env("HOME", home)
        .arg("--socket")
        .arg(socket)
        .arg("status");
    cmd
}

/// A `defenseclawctl --socket SOCKET ARGS…` command with an isolated home.
pub fn ctl_command(ctl: &Path, socket: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ctl);
    scrubbed(&mut cmd);
    cmd.env("HOME", home).arg("--socket").arg(socket).args(args);
    cmd
}

/// A fresh benchmark directory (`PREFIX…`), inside `parent` when given.
pub fn bench_dir(
    parent: Option<&std::path::Path>,
    prefix: &str,
) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context as _;
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match parent {
        Some(parent) => builder
            .tempdir_in(parent)
            .with_context(|| format!("creating a directory in {}", parent.display())),
        None => builder.tempdir().context("creating a temporary directory"),
    }
}

/// The multi-threaded runtime the benchmark clients run on.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .context("starting the client runtime")
}
