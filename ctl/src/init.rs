//! `init`: a starting config for a user install (or root's system file), from
//! the commented example the daemon ships, with OpenClaw monitoring turned on
//! only when a gateway answers on this host.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::cli::Output;
use crate::exit::{FAILED_PRECONDITION, FAILURE, Failure};
use crate::render::{print_json, print_text};

/// The daemon's commented example configuration (every key, with its default).
const EXAMPLE: &str = include_str!("../../deploy/config/defenseclawd.toml");
/// Where OpenClaw's gateway listens by default.
const DEFAULT_GATEWAY: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 18789),
);
/// How long the gateway gets to accept a connection.
const GATEWAY_WAIT: Duration = Duration::from_millis(700);

/// Writes the config and explains what to do next.
pub async fn init(
    path: Option<PathBuf>,
    gateway: Option<std::net::SocketAddr>,
    force: bool,
    output: Output,
) -> Result<(), Failure> {
    let gateway = gateway.unwrap_or(DEFAULT_GATEWAY);
    let path = path.unwrap_or_else(defenseclaw_common::paths::default_config_path);
    if !path.is_absolute() {
        return Err(Failure::new(
            crate::exit::USAGE,
            format!("--config must be an absolute path, not {}", path.display()),
        ));
    }
    if path.exists() && !force {
        return Err(Failure::new(
            FAILED_PRECONDITION,
            format!(
                "{} exists; keep it, or pass --force to replace it with a fresh one",
                path.display()
            ),
        ));
    }
    let answered = tokio::time::timeout(GATEWAY_WAIT, tokio::net::TcpStream::connect(gateway))
        .await
        .is_ok_and(|r| r.is_ok());
    let text = if answered {
        let on = set_in_section(EXAMPLE, "openclaw", "enabled", "true");
        set_in_section(&on, "openclaw", "url", &format!("\"ws://{gateway}/\""))
    } else {
        EXAMPLE.to_owned()
    };
    write_private(&path, &text)?;
    let next = if path == Path::new(defenseclaw_common::paths::SYSTEM_CONFIG) {
        "systemctl restart defenseclawd".to_owned()
    } else if path == defenseclaw_common::paths::default_config_path() {
        "defenseclawd    (reads this file when started by you without --config)".to_owned()
    } else {
        format!("defenseclawd --config {}", path.display())
    };
    match output {
        Output::Json | Output::Sarif => print_json(&json!({
            "path": path.display().to_string(),
            "mode": "local",
            "openclaw": {"gateway": gateway.to_string(), "gateway_answered": answered, "enabled": answered},
            "next": next,
        })),
        Output::Table => print_text(&format!(
            "Wrote {path}\n\n\
             Modes ([auth] mode):\n  \
             local  the daemon knows callers by their uid (kernel peer credentials); no login.\n         \
             Good for one machine; nobody confirms risky changes.\n  \
             oidc   operators log in with the device flow (Auth0); every change carries their\n         \
             identity, and step-up sends HIGH/CRITICAL changes to an approver's phone.\n         \
             Fill in [auth] and [stepup] (README: \"Auth0 setup\").\n\n\
             OpenClaw: {openclaw}\n\n\
             Next:\n  {next}\n  defenseclawctl doctor\n",
            path = path.display(),
            openclaw = if answered {
                format!(
                    "a gateway answers on {gateway}: monitoring is on ([openclaw] enabled = true)"
                )
            } else {
                format!(
                    "no gateway answers on {gateway}: monitoring stays off; set [openclaw] enabled = true once OpenClaw runs"
                )
            },
        )),
    }
}

/// `text` with the first `key = …` line of `[section]` set to `key = value`
/// (unchanged when the section or key is absent).
fn set_in_section(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("\n[{section}]\n");
    let Some(start) = text.find(&header) else {
        return text.to_owned();
    };
    let body_start = start + header.len();
    let body_end = text[body_start..]
        .find("\n[")
        .map_or(text.len(), |i| body_start + i + 1);
    let prefix = format!("{key} = ");
    let mut offset = body_start;
    for line in text[body_start..body_end].split_inclusive('\n') {
        if line.starts_with(&prefix) {
            let end = offset + line.trim_end_matches('\n').len();
            return format!("{}{prefix}{value}{}", &text[..offset], &text[end..]);
        }
        offset += line.len();
    }
    text.to_owned()
}

/// Writes `text` to `path` (0600, its directory created 0700), through a
/// temporary file renamed into place so a failure leaves no half-written config.
fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    let fail = |what: &str, e: std::io::Error| {
        Failure::new(FAILURE, format!("cannot {what} {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("create the directory of", e))?;
    let tmp = dir.join(format!(".defenseclawd.toml.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_openclaws_enabled_flag_changes() {
        let on = set_in_section(EXAMPLE, "openclaw", "enabled", "true");
        assert_ne!(on, EXAMPLE);
        let section = &on[on.find("\n[openclaw]\n").unwrap()..];
        let next = section[1..].find("\n[").map_or(section.len(), |i| i + 1);
        assert!(section[..next].contains("\nenabled = true\n"));
        assert_eq!(
            on.matches("enabled = true").count(),
            EXAMPLE.matches("enabled = true").count() + 1
        );
    }
}
