//! The daemon's checks of its own setup for `defenseclawctl doctor`: facts
//! fixed at start (where the configuration came from, which secrets are
//! present, whether a human guards protection) and what is live (the state
//! directory and the store's file system, the identity provider, the OpenClaw
//! gateway), each with the fix an operator should apply. Never a secret value.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::ConfigFile;
use crate::openclaw::{GatewayState, GatewayStatus};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    /// As it should be.
    Ok,
    /// Works, but not as a production host should be set up.
    Warn,
    /// Broken: something the daemon should do does not work.
    Fail,
}

/// One check with what was found and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable id (`config`, `state-dir`, `store-disk`, …).
    pub name: &'static str,
    /// The outcome.
    pub state: CheckState,
    /// What was found.
    pub detail: String,
    /// What to do about it; empty when nothing.
    pub fix: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            state: CheckState::Ok,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn bad(
        name: &'static str,
        state: CheckState,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            state,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Free space on the store's file system below which writes are about to fail.
const DISK_FAIL_BYTES: u64 = 64 * 1024 * 1024;
/// Free space below which the operator should act soon.
const DISK_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// What the daemon knew about its setup when it started.
#[derive(Debug, Clone)]
pub struct SetupFacts {
    /// Where the configuration came from, for people.
    pub config_source: String,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The database file.
    pub store_path: PathBuf,
    /// `[auth] mode = "oidc"`.
    pub oidc: bool,
    /// The daemon's client secret is present (CIBA and Token Vault need it).
    pub client_secret: bool,
    /// `[stepup] enabled`.
    pub stepup_enabled: bool,
    /// How many approvers `[stepup]` lists.
    pub approvers: usize,
    /// `[token_vault] enabled`.
    pub token_vault_enabled: bool,
    /// `[token_vault] unattended` with a sealing key loaded.
    pub unattended_ready: bool,
    /// `[token_vault] unattended` is asked for.
    pub unattended_wanted: bool,
    /// `[openclaw] enabled`.
    pub openclaw_enabled: bool,
    /// The `DEFENSECLAW_*` variables the daemon read (names only).
    pub env_names: Vec<String>,
}

/// Describes `file` for people: the file read, or the embedded defaults.
pub fn config_source(file: &ConfigFile) -> String {
    match file {
        ConfigFile::Explicit(path) => format!("{} (--config)", path.display()),
        ConfigFile::User(path) => format!("{} (the user's config file)", path.display()),
        ConfigFile::System if Path::new(crate::config::SYSTEM_CONFIG_PATH).exists() => {
            crate::config::SYSTEM_CONFIG_PATH.to_owned()
        }
        ConfigFile::System | ConfigFile::None => "embedded defaults (no config file)".to_owned(),
    }
}

impl SetupFacts {
    /// The checks that need no peer, in the order `doctor` prints them.
    pub fn local_checks(&self) -> Vec<Check> {
        let mut checks = vec![self.config_check(), self.state_dir_check()];
        checks.push(self.store_file_check());
        checks.push(self.disk_check());
        checks.push(self.auth_mode_check());
        checks.push(self.stepup_check());
        if self.oidc && (self.stepup_enabled || self.token_vault_enabled) {
            checks.push(self.client_secret_check());
        }
        if self.oidc && self.token_vault_enabled && self.unattended_wanted && !self.unattended_ready
        {
            checks.push(Check::bad(
                "token-vault-key",
                CheckState::Warn,
                "no sealing key: servers cannot start unattended with an approver's credential",
                "create a 32-byte key file (mode 0600, outside the state directory) and set [token_vault] key_file, or the systemd credential token-vault-key",
            ));
        }
        checks
    }

    fn config_check(&self) -> Check {
        let env = if self.env_names.is_empty() {
            String::new()
        } else {
            format!("; environment: {}", self.env_names.join(", "))
        };
        Check::ok("config", format!("valid, from {}{env}", self.config_source))
    }

    fn state_dir_check(&self) -> Check {
        private_path_check("state-dir", &self.state_dir, true)
    }

    fn store_file_check(&self) -> Check {
        private_path_check("store-file", &self.store_path, false)
    }

    fn disk_check(&self) -> Check {
        let dir = self.store_path.parent().unwrap_or(&self.state_dir);
        match nix::sys::statvfs::statvfs(dir) {
            Ok(fs) => {
                let free = fs.blocks_available().saturating_mul(fs.fragment_size());
                let detail = format!("{} free on the store's file system", human_bytes(free));
                let fix = format!("free space on the file system holding {}", dir.display());
                if free < DISK_FAIL_BYTES {
                    Check::bad("store-disk", CheckState::Fail, detail, fix)
                } else if free < DISK_WARN_BYTES {
                    Check::bad("store-disk", CheckState::Warn, detail, fix)
                } else {
                    Check::ok("store-disk", detail)
                }
            }
            Err(e) => Check::bad(
                "store-disk",
                CheckState::Warn,
                format!("cannot read the free space of {}: {e}", dir.display()),
                "",
            ),
        }
    }

    fn auth_mode_check(&self) -> Check {
        if self.oidc {
            Check::ok(
                "auth-mode",
                "oidc: operators log in and every change carries their identity",
            )
        } else {
            Check::bad(
                "auth-mode",
                CheckState::Warn,
                "local: changes are stamped with the caller's uid only, and no human can confirm them",
                "set [auth] mode = \"oidc\" with issuer, audience and client ids (README: Auth0 setup)",
            )
        }
    }

    fn stepup_check(&self) -> Check {
        match (self.stepup_enabled, self.approvers) {
            (true, n) if n > 0 => Check::ok(
                "stepup",
                format!("on: lowering HIGH/CRITICAL protection waits for one of {n} approver(s)"),
            ),
            (true, _) => Check::bad(
                "stepup",
                CheckState::Fail,
                "on, but no approver is listed",
                "list the approvers' subs in [stepup] approver",
            ),
            (false, _) => Check::bad(
                "stepup",
                CheckState::Warn,
                "off: anyone allowed to mutate can lower the protection of a HIGH/CRITICAL target",
                "set [stepup] enabled = true and approver = [\"<sub>\"] (needs oidc mode and the daemon's client secret)",
            ),
        }
    }

    fn client_secret_check(&self) -> Check {
        if self.client_secret {
            Check::ok(
                "client-secret",
                "the daemon's client secret is present (value not shown)",
            )
        } else {
            Check::bad(
                "client-secret",
                CheckState::Fail,
                "no client secret: CIBA step-up and Token Vault exchanges cannot authenticate",
                "set DEFENSECLAW_AUTH_CLIENT_SECRET, the systemd credential auth-client-secret, or <state dir>/.env (0600)",
            )
        }
    }
}

/// A directory (or file) that must be the daemon's own and private.
fn private_path_check(name: &'static str, path: &Path, dir: bool) -> Check {
    let what = if dir { "directory" } else { "file" };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Check::bad(
                name,
                CheckState::Fail,
                format!("cannot read {}: {e}", path.display()),
                "restart the daemon; it recreates what is missing",
            );
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Check::bad(
            name,
            CheckState::Fail,
            format!(
                "{} is owned by uid {}, not the daemon's uid {me}",
                path.display(),
                meta.uid()
            ),
            format!("chown {me} {}", path.display()),
        );
    }
    if mode & 0o077 != 0 {
        let want = if dir { "700" } else { "600" };
        return Check::bad(
            name,
            CheckState::Fail,
            format!("{} has mode {mode:o}: others can read it", path.display()),
            format!("chmod {want} {}", path.display()),
        );
    }
    Check::ok(
        name,
        format!("{what} {} is private (mode {mode:o})", path.display()),
    )
}

/// The OpenClaw gateway connection as a check.
pub fn openclaw_check(enabled: bool, status: &GatewayStatus) -> Check {
    if !enabled {
        return Check::ok(
            "openclaw",
            "monitoring off ([openclaw] enabled = false); agents are not governed at runtime on this host",
        );
    }
    let error = status.last_error.as_deref().unwrap_or("no answer yet");
    match status.state {
        GatewayState::Connected => Check::ok(
            "openclaw",
            format!(
                "connected to {} (OpenClaw {})",
                status.url,
                status
                    .server_version
                    .as_deref()
                    .unwrap_or("unknown version")
            ),
        ),
        GatewayState::AuthFailed => Check::bad(
            "openclaw",
            CheckState::Fail,
            format!("the gateway at {} refused the daemon: {error}", status.url),
            "give the daemon the gateway's token: OPENCLAW_GATEWAY_TOKEN or the credential openclaw-gateway-token",
        ),
        GatewayState::Connecting | GatewayState::Backoff | GatewayState::Disabled => Check::bad(
            "openclaw",
            CheckState::Fail,
            format!("not connected to {}: {error}", status.url),
            "start the OpenClaw gateway, or fix [openclaw] url, or set [openclaw] enabled = false on a host without OpenClaw",
        ),
    }
}

/// The gate plugin in OpenClaw as a check (only while the gateway is connected
/// and the daemon has read its plugin list).
pub fn gate_check(gate: &crate::openclaw::GateView) -> Check {
    let detail = format!(
        "plugin {}{}; exec approvals {}",
        gate.plugin,
        gate.version
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default(),
        gate.exec_policy
    );
    if gate.plugin == "active" {
        Check::ok("openclaw-gate", detail)
    } else {
        Check::bad(
            "openclaw-gate",
            CheckState::Fail,
            format!("{detail}: agents' tool calls are not decided by the daemon"),
            "defenseclawctl openclaw setup",
        )
    }
}

/// One audit exporter as a check, with its lag behind the chain head `head`.
pub fn exporter_check(sink: &crate::export::SinkStatus, head: u64) -> Check {
    use crate::export::SinkHealth;
    let lag = head.saturating_sub(sink.cursor);
    let error = sink.last_error.as_deref().unwrap_or("no error recorded");
    let fix = format!(
        "check that the [export.{}] receiver is up and reachable, and its url and secret",
        sink.name
    );
    match sink.state {
        SinkHealth::Ok => Check::ok(
            "exporter",
            format!(
                "{} ({}): delivering, {lag} entries behind",
                sink.name, sink.kind
            ),
        ),
        SinkHealth::Retrying => Check::bad(
            "exporter",
            CheckState::Warn,
            format!(
                "{} ({}): retrying, {lag} entries behind: {error}",
                sink.name, sink.kind
            ),
            fix,
        ),
        SinkHealth::Failing => Check::bad(
            "exporter",
            CheckState::Fail,
            format!(
                "{} ({}): failing, {lag} entries behind: {error}",
                sink.name, sink.kind
            ),
            fix,
        ),
    }
}

/// The key signing exported head records, for receivers to pin.
pub fn export_key_check(public_key: &str) -> Check {
    Check::ok(
        "export signing key",
        format!(
            "head records are signed with Ed25519 key {public_key}; pin it: audit verify --from-export FILE --public-key {public_key}"
        ),
    )
}

/// The identity provider as a check: `discovery` and `jwks` are the outcomes
/// of fetching its discovery document and key set (key count).
pub fn idp_check(
    issuer: &str,
    discovery: Result<(), String>,
    jwks: Result<usize, String>,
) -> Check {
    match (discovery, jwks) {
        (Ok(()), Ok(keys)) if keys > 0 => Check::ok(
            "identity-provider",
            format!("{issuer}: discovery and {keys} signing key(s) fetched"),
        ),
        (Ok(()), Ok(_)) => Check::bad(
            "identity-provider",
            CheckState::Fail,
            format!("{issuer}: the key set holds no signing key; no token can be verified"),
            "check the tenant's signing keys (RS256) and the jwks_uri of its discovery document",
        ),
        (Err(e), _) => Check::bad(
            "identity-provider",
            CheckState::Fail,
            format!("{issuer}: discovery failed: {e}"),
            "check [auth] issuer (exact, with its trailing slash) and that the daemon can reach it (proxy, firewall)",
        ),
        (Ok(()), Err(e)) => Check::bad(
            "identity-provider",
            CheckState::Fail,
            format!("{issuer}: the key set cannot be fetched: {e}"),
            "check that the daemon can reach the jwks_uri of the discovery document",
        ),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dir: &Path) -> SetupFacts {
        SetupFacts {
            config_source: "embedded defaults (no config file)".into(),
            state_dir: dir.to_owned(),
            store_path: dir.join("store.db"),
            oidc: true,
            client_secret: false,
            stepup_enabled: true,
            approvers: 0,
            token_vault_enabled: true,
            unattended_ready: false,
            unattended_wanted: true,
            openclaw_enabled: false,
            env_names: vec!["DEFENSECLAW_AUTH__MODE".into()],
        }
    }

    #[test]
    fn each_problem_fails_or_warns_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let checks = facts(dir.path()).local_checks();
        let state = |name: &str| {
            checks
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} missing: {checks:?}"))
        };
        assert_eq!(state("config").state, CheckState::Ok);
        assert!(state("config").detail.contains("DEFENSECLAW_AUTH__MODE"));
        assert_eq!(state("state-dir").state, CheckState::Fail);
        assert!(state("state-dir").fix.starts_with("chmod 700"));
        assert_eq!(state("store-file").state, CheckState::Fail);
        assert_eq!(state("stepup").state, CheckState::Fail);
        assert_eq!(state("client-secret").state, CheckState::Fail);
        assert_eq!(state("token-vault-key").state, CheckState::Warn);
        for c in &checks {
            assert!(
                c.state == CheckState::Ok || !c.fix.is_empty() || c.name == "store-disk",
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_private_state_directory_and_store_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = dir.path().join("store.db");
        std::fs::write(&store, b"").unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut f = facts(dir.path());
        f.client_secret = true;
        f.approvers = 1;
        f.unattended_ready = true;
        assert!(
            f.local_checks().iter().all(|c| c.state == CheckState::Ok),
            "{:?}",
            f.local_checks()
        );
    }

    #[test]
    fn idp_and_gateway_outcomes() {
        assert_eq!(idp_check("https://i/", Ok(()), Ok(2)).state, CheckState::Ok);
        assert_eq!(
            idp_check("https://i/", Ok(()), Ok(0)).state,
            CheckState::Fail
        );
        let c = idp_check("https://i/", Err("connection refused".into()), Ok(0));
        assert!(c.detail.contains("connection refused") && c.state == CheckState::Fail);
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        let gate = |plugin: &str| crate::openclaw::GateView {
            plugin: plugin.into(),
            version: Some("0.1.0".into()),
            exec_policy: "security=allowlist ask=on-miss askFallback=deny".into(),
        };
        assert_eq!(gate_check(&gate("active")).state, CheckState::Ok);
        let off = gate_check(&gate("disabled"));
        assert_eq!(
            (off.state, off.fix.as_str()),
            (CheckState::Fail, "defenseclawctl openclaw setup")
        );
    }
}
