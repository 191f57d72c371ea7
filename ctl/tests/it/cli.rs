//! Running the real `defenseclawctl` binary against a test daemon (the daemon
//! itself comes from the testkit's builder) and reading what it printed.

use std::path::Path;
use std::time::Duration;

use defenseclaw_testkit::daemon::TestDaemon;

/// How long one CLI run may take before the test fails instead of hanging.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// What one CLI run printed and its exit code.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the CLI with `args` against the daemon on `socket` (bounded by [`CLI_TIMEOUT`]).
pub async fn ctl_at(socket: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLI_TIMEOUT, out)
        .await
        .unwrap_or_else(|_| panic!("defenseclawctl {args:?} did not finish within {CLI_TIMEOUT:?}"))
        .unwrap();
    Run::from(out)
}

/// `d.ctl(args)`: the CLI against this test daemon.
pub trait Ctl {
    async fn ctl(&self, args: &[&str]) -> Run;
}

impl Ctl for TestDaemon {
    async fn ctl(&self, args: &[&str]) -> Run {
        ctl_at(&self.socket, args).await
    }
}

/// `.bounded()` on any future: the test fails after [`CLI_TIMEOUT`] instead of
/// hanging on a child that never exits or a line that never comes.
pub trait Bounded: std::future::Future + Sized {
    async fn bounded(self) -> Self::Output {
        tokio::time::timeout(CLI_TIMEOUT, self)
            .await
            .unwrap_or_else(|_| panic!("not done within {CLI_TIMEOUT:?}"))
    }
}

impl<F: std::future::Future> Bounded for F {}
