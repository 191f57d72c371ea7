//! Starting daemons for tests: in-process (fast, most tests) or as the real
//! binary (crash and signal tests).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonHandle, DaemonOptions};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct TestDaemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub handle: Option<DaemonHandle>,
}

impl TestDaemon {
    /// Starts an in-process daemon with extra `DEFENSECLAW_*` env overrides.
    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, overrides).await
    }

    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_in(dir: TempDir, overrides: &[(&str, &str)]) -> Self {
        let socket = dir.path().join("run/defenseclawd.sock");
        let env = env_for(dir.path(), &socket, overrides);
        let settings = Settings::load(&ConfigFile::None, &env).unwrap();
        let opts = DaemonOptions::new(settings, ConfigFile::None, env).unwrap();
        let handle = daemon::start(opts).await.unwrap();
        Self {
            dir,
            socket,
            handle: Some(handle),
        }
    }

    pub async fn client(&self) -> ControlClient<Channel> {
        defenseclaw_testkit::control_client(&self.socket)
            .await
            .unwrap()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("home/defenseclaw.db")
    }

    /// Stops the daemon and waits for the store to close; keeps the directory.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.wait().await.unwrap();
        }
    }
}

pub fn env_for(dir: &Path, socket: &Path, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(
        "DEFENSECLAW_HOME".to_owned(),
        dir.join("home").display().to_string(),
    );
    env.insert(
        "DEFENSECLAW_SERVER__SOCKET".to_owned(),
        socket.display().to_string(),
    );
    // Tests that want the OpenClaw monitor point it at a real or fake gateway.
    env.insert(
        "DEFENSECLAW_OPENCLAW__ENABLED".to_owned(),
        "false".to_owned(),
    );
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// The real `defenseclawd` binary as a child process.
pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl DaemonProcess {
    pub async fn spawn(dir: &Path) -> Self {
        let socket = dir.join("run/defenseclawd.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_defenseclawd"))
            .arg("--socket")
            .arg(&socket)
            .env("DEFENSECLAW_HOME", dir.join("home"))
            .env("DEFENSECLAW_OPENCLAW__ENABLED", "false")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let probe_socket = socket.clone();
        defenseclaw_testkit::wait_for("the daemon's socket", Duration::from_secs(30), || {
            let socket = probe_socket.clone();
            async move {
                let mut c = defenseclaw_testkit::control_client(&socket).await.ok()?;
                c.get_status(pb::GetStatusRequest {}).await.ok().map(|_| ())
            }
        })
        .await
        .unwrap();
        Self { child, socket }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn skill(name: &str) -> Option<pb::TargetRef> {
    Some(pb::TargetRef {
        kind: pb::TargetKind::Skill as i32,
        name: name.to_owned(),
    })
}

pub fn mcp(name: &str) -> Option<pb::TargetRef> {
    Some(pb::TargetRef {
        kind: pb::TargetKind::Mcp as i32,
        name: name.to_owned(),
    })
}

pub fn set(
    target: Option<pb::TargetRef>,
    action: pb::EnforcementAction,
    reason: &str,
) -> pb::SetEnforcementRequest {
    pb::SetEnforcementRequest {
        target,
        action: action as i32,
        reason: reason.to_owned(),
        connections: Vec::new(),
    }
}

pub async fn verify(client: &mut ControlClient<Channel>, head: &str) -> pb::VerifyAuditReply {
    client
        .verify_audit(pb::VerifyAuditRequest {
            head: head.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}
