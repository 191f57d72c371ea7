//! A real rsyslog receiver for the syslog exporter's tests: `rsyslogd -n` with
//! a private configuration (imtcp on a loopback port, omfile into a temporary
//! directory, no system paths), started, killed and restarted on the same port;
//! optionally TLS through rsyslog's GnuTLS driver (Debian's `rsyslog-gnutls`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// Where Debian's `rsyslog` package puts the daemon.
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// One received message: when rsyslog took it, the structured data and the
/// MSG parsed as JSON.
#[derive(Debug, Clone)]
pub struct Received {
    /// rsyslog's reception time (`timegenerated`, RFC 3339 with microseconds).
    pub received_at: String,
    /// The SD-ELEMENTs as rsyslog printed them.
    pub structured_data: String,
    /// The MSG.
    pub msg: serde_json::Value,
}

/// An rsyslogd on a loopback TCP port, writing what it receives to a file.
#[derive(Debug)]
pub struct Rsyslog {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    /// Prepares a receiver on a free loopback port without starting it.
    /// Fails clearly when rsyslogd is not installed.
    pub fn new() -> Result<Self> {
        Self::prepare(None)
    }

    /// A TLS receiver (RFC 5425) presenting `cert_pem` with `key_pem`.
    pub fn new_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::prepare(Some((cert_pem, key_pem)))
    }

    fn prepare(tls: Option<(&str, &str)>) -> Result<Self> {
        if !Path::new(RSYSLOGD).is_file() {
            bail!(
                "{RSYSLOGD} is missing: install Debian's rsyslog package (apt-get install rsyslog; .ci/run does)"
            );
        }
        let dir = tempfile::tempdir().context("creating rsyslog's directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("picking a free port")?
            .port();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).context("creating rsyslog's work directory")?;
        let (global_tls, module_tls) = match tls {
            None => (String::new(), String::new()),
            Some((cert, key)) => {
                let has_gtls = std::fs::read_dir("/usr/lib")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|d| d.path().join("rsyslog/lmnsd_gtls.so").exists());
                if !has_gtls {
                    bail!(
                        "rsyslog's GnuTLS driver is missing: install Debian's rsyslog-gnutls package (.ci/run does)"
                    );
                }
                let cert_path = dir.path().join("cert.pem");
                let key_path = dir.path().join("key.pem");
                std::fs::write(&cert_path, cert).context("writing the receiver's certificate")?;
                std::fs::write(&key_path, key).context("writing the receiver's key")?;
                (
                    format!(
                        r#" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{c}" DefaultNetstreamDriverCertFile="{c}" DefaultNetstreamDriverKeyFile="{k}""#,
                        c = cert_path.display(),
                        k = key_path.display()
                    ),
                    r#" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon""#
                        .to_owned(),
                )
            }
        };
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="128k"{global_tls})
module(load="imtcp"{module_tls})
template(name="sdmsg" type="string" string="%timegenerated:::date-rfc3339% %structured-data% %msg%\n")
ruleset(name="export") {{
  action(type="omfile" file="{out}" template="sdmsg" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="export")
"#,
            work = work.display(),
            out = dir.path().join("received.log").display(),
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).context("writing rsyslog.conf")?;
        Ok(Self {
            dir,
            port,
            child: None,
        })
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Starts rsyslogd and waits until its port accepts connections.
    pub async fn start(&mut self) -> Result<()> {
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rsyslogd")?;
        self.child = Some(child);
        let port = self.port;
        crate::wait_for(
            "rsyslogd to listen",
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await
    }

    /// SIGKILL and reap (a receiver pulled out mid-run).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("rsyslogd.pid"));
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Result<Vec<Received>> {
        let path = self.dir.path().join("received.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let (received_at, line) = line
                    .split_once(' ')
                    .with_context(|| format!("no reception time: {line}"))?;
                let start = line
                    .find("] {")
                    .with_context(|| format!("no structured data before the MSG: {line}"))?;
                Ok(Received {
                    received_at: received_at.to_owned(),
                    structured_data: line[..=start].to_owned(),
                    msg: serde_json::from_str(line[start + 2..].trim())
                        .with_context(|| format!("MSG is not JSON: {line}"))?,
                })
            })
            .collect()
    }

    /// The receiver's output file.
    pub fn output_path(&self) -> PathBuf {
        self.dir.path().join("received.log")
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}
