//! A listener run as another local user (via `setpriv`) that records every byte
//! it receives: the impostor in tests of whom the daemon and the CLI are willing
//! to talk to. Needs root (to switch uid), `setpriv` and `python3`; fails with a
//! clear message when one is missing.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// The listener: binds, writes its port (or `unix`) to `ready`, then accepts
/// one connection at a time, appends what it reads to `bytes` and one `x` to
/// `closed` when the peer closes.
const SCRIPT: &str = r#"
import os, socket, sys
kind, where, rec = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "tcp":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    ready = str(s.getsockname()[1])
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(where)
    ready = "unix"
s.listen(64)
with open(os.path.join(rec, "ready.tmp"), "w") as f:
    f.write(ready)
os.rename(os.path.join(rec, "ready.tmp"), os.path.join(rec, "ready"))
while True:
    c, _ = s.accept()
    c.settimeout(120)
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            with open(os.path.join(rec, "bytes"), "ab") as f:
                f.write(b)
    except Exception:
        pass
    c.close()
    with open(os.path.join(rec, "closed"), "a") as f:
        f.write("x")
"#;

/// A recording listener owned by another uid; killed on drop.
pub struct Impostor {
    child: Child,
    record: PathBuf,
    port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Impostor {
    /// Listens on `127.0.0.1:<ephemeral>` as `uid`.
    pub async fn tcp(uid: u32) -> anyhow::Result<Self> {
        Self::start(uid, "tcp", Path::new("-")).await
    }

    /// Listens on the Unix socket `path` as `uid` (its directory must let
    /// `uid` create the socket).
    pub async fn unix(uid: u32, path: &Path) -> anyhow::Result<Self> {
        Self::start(uid, "unix", path).await
    }

    async fn start(uid: u32, kind: &str, path: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let record = dir.path().join("record");
        std::fs::create_dir(&record)?;
        chown(&record, Some(uid), Some(uid))
            .context("chown of the impostor's record directory (tests must run as root)")?;
        let id = uid.to_string();
        // The system interpreter: a per-user one (pyenv shims under /root) is
        // not executable by the other uid.
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let child = Command::new("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups", python, "-c"])
            .arg(SCRIPT)
            .arg(kind)
            .arg(path)
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("running `setpriv … python3` for the impostor listener (util-linux and a system python3 are needed)")?;
        let mut me = Self {
            child,
            record,
            port: None,
            _dir: dir,
        };
        let ready = me.record.join("ready");
        let text = crate::wait_for(
            "the impostor listener to be ready",
            Duration::from_secs(20),
            || {
                let ready = ready.clone();
                async move { std::fs::read_to_string(ready).ok() }
            },
        )
        .await;
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let status = me.child.try_wait().ok().flatten();
                anyhow::bail!("{e} (listener exit status: {status:?})");
            }
        };
        me.port = text.trim().parse().ok();
        Ok(me)
    }

    /// The TCP port (for [`Impostor::tcp`]).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(0)
    }

    /// Every byte received so far, over all connections.
    pub fn received(&self) -> Vec<u8> {
        std::fs::read(self.record.join("bytes")).unwrap_or_default()
    }

    /// How many connections were accepted and have been closed by the peer.
    pub fn closed_connections(&self) -> usize {
        std::fs::read(self.record.join("closed")).map_or(0, |b| b.len())
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
