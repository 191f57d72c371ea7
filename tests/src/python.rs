//! The Python gRPC client peer: a virtual environment under the build
//! directory with the pinned `grpcio` packages, stubs generated from the
//! shipped `proto/`, and a runner for `tests/clients/python/client.py`.
//!
//! [`install`] creates `<target dir>/test-peers/python` with `python3 -m venv`
//! (Debian's `python3-venv`), installs `tests/clients/python/requirements.txt`
//! from PyPI with that venv's `pip`, and runs `grpc_tools.protoc` on
//! `proto/proto/defenseclaw/v1/control.proto` into `<venv>/gen`. It runs once
//! per content of the requirements and the proto (a stamp file), guarded by a
//! process-wide `OnceLock` and a `flock`, like the other peers. A missing
//! `python3`, venv module or `pip` fails with a message saying what to install.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

/// Where the peer is installed.
#[derive(Debug, Clone)]
pub struct Install {
    /// The venv (`<target>/test-peers/python`).
    pub dir: PathBuf,
    /// The venv's interpreter.
    pub python: PathBuf,
    /// The generated `defenseclaw/v1/control_pb2*.py` live below this folder.
    pub gen_dir: PathBuf,
    /// `tests/clients/python/client.py`.
    pub client: PathBuf,
}

/// `<target>/test-peers/python` (beside the OpenClaw peer's cache).
pub fn cache_dir() -> PathBuf {
    crate::openclaw::cache_dir()
        .parent()
        .map(|p| p.join("python"))
        .unwrap_or_else(|| crate::openclaw::workspace_dir().join("target/test-peers/python"))
}

/// The system interpreter the venv is made from: Debian's, where present.
fn system_python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("python3")
    }
}

static INSTALL: OnceLock<Result<Install, String>> = OnceLock::new();

/// Installs (once) and returns the peer; fails with a clear message when
/// Python, its venv module or the PyPI install is missing.
pub fn install() -> anyhow::Result<Install> {
    INSTALL
        .get_or_init(|| install_locked().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn install_locked() -> anyhow::Result<Install> {
    let ws = crate::openclaw::workspace_dir();
    let src = ws.join("tests/clients/python");
    let proto_root = ws.join("proto/proto");
    let proto = "defenseclaw/v1/control.proto";
    let requirements = src.join("requirements.txt");
    let reqs =
        std::fs::read(&requirements).context("reading tests/clients/python/requirements.txt")?;
    let proto_text = std::fs::read(proto_root.join(proto)).context("reading the shipped proto")?;
    let stamp_value = hex::encode(Sha256::digest(
        [reqs.as_slice(), proto_text.as_slice()].concat(),
    ));

    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_file =
        File::create(dir.join(".install.lock")).context("creating install lock file")?;
    let _guard = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", dir.display()))?;

    let install = Install {
        python: dir.join("bin/python"),
        gen_dir: dir.join("gen"),
        client: src.join("client.py"),
        dir: dir.clone(),
    };
    let stamp = dir.join(".installed");
    let done = std::fs::read_to_string(&stamp)
        .map(|s| s.trim() == stamp_value)
        .unwrap_or(false);
    if done && install.python.is_file() {
        return Ok(install);
    }
    let _ = std::fs::remove_file(&stamp);
    let system = system_python();
    let has_python = Command::new(&system)
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_python {
        bail!(
            "the Python client test needs python3 with its venv module and pip ({} -m venv); \
             install Debian's python3-venv (`apt-get install python3-venv`; `.ci/run` does) and re-run",
            system.display()
        );
    }
    let started = Instant::now();
    eprintln!(
        "python client peer: venv and pip install into {} (one time) ...",
        dir.display()
    );
    if !install.python.is_file() {
        run(
            Command::new(&system).args(["-m", "venv"]).arg(&dir),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        )?;
    }
    run(
        Command::new(&install.python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/clients/python/requirements.txt (PyPI)",
    )?;
    let _ = std::fs::remove_dir_all(&install.gen_dir);
    std::fs::create_dir_all(&install.gen_dir)?;
    run(
        Command::new(&install.python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto_root)
            .arg(format!("--python_out={}", install.gen_dir.display()))
            .arg(format!("--grpc_python_out={}", install.gen_dir.display()))
            .arg(proto),
        "grpc_tools.protoc on the shipped proto",
    )?;
    eprintln!(
        "python client peer: installed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&stamp, &stamp_value)?;
    Ok(install)
}

/// Runs `client.py SOCKET ARG` in the venv with the generated stubs on its
/// path, without a proxy (the socket is local), and returns what it did.
pub fn run_client(install: &Install, socket: &Path, arg: &str) -> anyhow::Result<Output> {
    Command::new(&install.python)
        .arg(&install.client)
        .arg(socket)
        .arg(arg)
        .env("PYTHONPATH", &install.gen_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("grpc_proxy")
        .stdin(Stdio::null())
        .output()
        .context("running tests/clients/python/client.py")
}
