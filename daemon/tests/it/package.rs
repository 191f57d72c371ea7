//! The Debian package: built from the test build's binaries by
//! `deploy/debian/build-deb.sh`, installed with dpkg into a clean root (its
//! maintainer scripts see DPKG_ROOT and leave the host alone), then checked:
//! files, owners and modes, the conffile, and the shipped config passing
//! `--check-config`. Removal and purge leave nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run ({e}); .ci/run installs dpkg and binutils"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_deb_installs_into_a_clean_root_with_its_files_modes_and_a_valid_config() {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_defenseclawd"));
    let bin_dir = daemon.parent().unwrap().to_owned();
    assert!(
        bin_dir.join("defenseclawctl").is_file(),
        "{} is missing: build the CLI too (`cargo test --workspace` does)",
        bin_dir.join("defenseclawctl").display()
    );
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let built = run(Command::new("bash")
        .arg(repo().join("deploy/debian/build-deb.sh"))
        .arg(&bin_dir)
        .arg(&out));
    let deb = PathBuf::from(built.trim());
    assert!(deb.is_file(), "{built}");

    let root = work.path().join("root");
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args))
    };
    dpkg(&["-i", deb.to_str().unwrap()]);

    for (path, want) in [
        ("usr/bin/defenseclawd", 0o755),
        ("usr/bin/defenseclawctl", 0o755),
        ("etc/defenseclaw/defenseclawd.toml", 0o644),
        ("lib/systemd/system/defenseclawd.service", 0o644),
        ("lib/systemd/system/defenseclawd.socket", 0o644),
        ("usr/lib/sysusers.d/defenseclaw.conf", 0o644),
        ("usr/lib/tmpfiles.d/defenseclaw.conf", 0o644),
        (
            "usr/share/defenseclaw/openclaw-plugin/openclaw.plugin.json",
            0o644,
        ),
        ("usr/share/defenseclaw/openclaw-plugin/index.mjs", 0o644),
        ("usr/share/man/man1/defenseclawctl.1.gz", 0o644),
        (
            "usr/share/man/man1/defenseclawctl-skill-install.1.gz",
            0o644,
        ),
        (
            "usr/share/bash-completion/completions/defenseclawctl",
            0o644,
        ),
        ("usr/share/zsh/vendor-completions/_defenseclawctl", 0o644),
        (
            "usr/share/fish/vendor_completions.d/defenseclawctl.fish",
            0o644,
        ),
    ] {
        let file = root.join(path);
        assert_eq!(mode(&file), want, "{path}");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is not root's");
    }
    // Stripped: no symbol table left.
    let symbols = Command::new("objdump")
        .arg("--syms")
        .arg(root.join("usr/bin/defenseclawd"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&symbols.stdout).contains("no symbols"),
        "defenseclawd is not stripped"
    );
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "defenseclaw"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("/etc/defenseclaw/defenseclawd.toml"),
        "not a conffile: {status}"
    );
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/defenseclawd.service")).unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/bin/defenseclawd --config /etc/defenseclaw/defenseclawd.toml"
        )
    );

    // The installed daemon accepts the installed config as systemd would run it.
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let checked = run(Command::new(root.join("usr/bin/defenseclawd"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("STATE_DIRECTORY", state.join("lib"))
        .env("RUNTIME_DIRECTORY", state.join("run"))
        .arg("--check-config")
        .arg("--config")
        .arg(root.join("etc/defenseclaw/defenseclawd.toml")));
    assert!(checked.contains("# effective configuration"), "{checked}");
    let help = run(Command::new(root.join("usr/bin/defenseclawctl")).arg("--help"));
    assert!(help.contains("doctor"), "{help}");

    dpkg(&["--purge", "defenseclaw"]);
    assert!(!root.join("usr/bin/defenseclawd").exists());
    assert!(!root.join("etc/defenseclaw/defenseclawd.toml").exists());
}
