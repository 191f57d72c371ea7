//! An in-process daemon on a temporary socket, and a way to run the CLI binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonHandle, DaemonOptions};
use tempfile::TempDir;

pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    /// Keeps the daemon running for the test.
    pub _handle: Option<DaemonHandle>,
}

impl Daemon {
    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/defenseclawd.sock");
        let mut env = HashMap::new();
        env.insert(
            "DEFENSECLAW_HOME".to_owned(),
            dir.path().join("home").display().to_string(),
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
        let settings = Settings::load(&ConfigFile::None, &env).unwrap();
        let handle = daemon::start(DaemonOptions::new(settings, ConfigFile::None, env).unwrap())
            .await
            .unwrap();
        Self {
            dir,
            socket,
            _handle: Some(handle),
        }
    }

    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("home/defenseclaw.db")
    }

    pub async fn ctl(&self, args: &[&str]) -> Run {
        ctl_at(&self.socket, args).await
    }
}

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

pub async fn ctl_at(socket: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .output()
        .await
        .unwrap();
    Run::from(out)
}

/// A daemon in oidc mode against `idp`, with the daemon's confidential client
/// (CIBA, Token Vault) and the operator role on `skills:write`, plus `extra`.
pub async fn oidc_daemon(
    idp: &defenseclaw_testkit::idp::IdentityProvider,
    extra: &[(&str, &str)],
) -> Daemon {
    let env = idp.daemon_oidc_env();
    let mut overrides: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.extend_from_slice(extra);
    Daemon::start_with(&overrides).await
}
