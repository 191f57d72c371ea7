//! Typed daemon configuration: built-in defaults < TOML file < `DEFENSECLAW_*` env.
//!
//! Unknown keys are rejected. Secrets never live here; see [`crate::secrets`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths;

mod env;
use env::{check_env_names, check_log_level, config_env, name_env_variable};
mod error;
pub mod governance;
pub mod lists;
mod metrics;

pub use error::ConfigError;
pub use governance::{
    AdapterSettings, AdmissionSettings, ScannerSettings, StepUpSettings, TokenVaultSettings,
    Unconfirmed,
};
pub use metrics::{MetricsListen, MetricsSettings};

/// The system-wide config file read when `--config` is not given.
pub const SYSTEM_CONFIG_PATH: &str = defenseclaw_common::paths::SYSTEM_CONFIG;
/// Prefix of environment overrides; nested keys are joined with `__`, e.g.
/// `DEFENSECLAW_SERVER__SOCKET`. Variables without `__` (such as
/// `DEFENSECLAW_HOME`) are not config keys and are left alone.
pub use env::ENV_PREFIX;

/// The commented example configuration shipped as
/// `/etc/defenseclaw/defenseclawd.toml`, printed by `--print-example-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/config/defenseclawd.toml");

/// Everything the daemon can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The gRPC control plane.
    pub server: ServerSettings,
    /// The SQLite store.
    pub store: StoreSettings,
    /// Who may call mutating RPCs.
    pub access: AccessSettings,
    /// Log level and format (`[log]`); the level is reloaded on SIGHUP.
    pub log: LogSettings,
    /// The tamper-evident audit log.
    pub audit: AuditSettings,
    /// Operator identity: local peer credentials or verified OIDC tokens.
    pub auth: crate::oidc::AuthSettings,
    /// The OpenClaw gateway monitor and runtime enforcement.
    pub openclaw: crate::openclaw::OpenClawSettings,
    /// Scanners: extra rules, watched skill directories, adapters.
    pub scanner: ScannerSettings,
    /// What a scan decides.
    pub admission: AdmissionSettings,
    /// Human approval (CIBA) of changes on HIGH/CRITICAL targets.
    pub stepup: StepUpSettings,
    /// Token Vault: provider tokens for MCP servers, just in time.
    pub token_vault: TokenVaultSettings,
    /// Audit export sinks, `[export.<name>]`.
    pub export: std::collections::BTreeMap<String, crate::export::SinkSettings>,
    /// The Prometheus endpoint (`[metrics] listen`), off unless set.
    pub metrics: MetricsSettings,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Unix socket path. Default: `$RUNTIME_DIRECTORY/defenseclawd.sock` under
    /// systemd, else `$XDG_RUNTIME_DIR/defenseclaw/defenseclawd.sock`.
    pub socket: Option<PathBuf>,
    /// Socket file mode, octal (e.g. "0660"). Callers also need access to the directory.
    pub socket_mode: String,
    /// How long shutdown waits for in-flight calls and streams before aborting them.
    pub drain_timeout_secs: u64,
    /// Largest accepted request message, in bytes; a larger one is refused
    /// with `RESOURCE_EXHAUSTED` before it is read.
    pub max_message_bytes: usize,
    /// Most client connections open at once; one more is closed at accept.
    pub max_connections: usize,
    /// Most concurrent calls (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// Most streaming calls (FollowAudit, ExportAudit, WatchStepUp) open at
    /// once across all connections; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// Bytes of replies one stream may hold queued for a slow reader.
    pub stream_buffer_bytes: usize,
    /// How long a stream waits for its reader to make room before it is cut
    /// off with `RESOURCE_EXHAUSTED` ("consumer too slow") and its buffer freed.
    pub stream_stall_timeout_secs: u64,
    /// A connection that sends nothing (no HTTP/2 preface) this long is closed.
    pub handshake_timeout_secs: u64,
    /// A connection with no call in progress this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            socket: None,
            socket_mode: "0660".into(),
            drain_timeout_secs: 10,
            max_message_bytes: 4 * 1024 * 1024,
            max_connections: 128,
            max_streams_per_connection: 32,
            max_streams: 64,
            stream_buffer_bytes: 256 * 1024,
            stream_stall_timeout_secs: 30,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Database file. Default: `<state dir>/defenseclaw.db`.
    pub path: Option<PathBuf>,
}

/// `[access]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    /// Uids allowed to call mutating RPCs. Unset: the daemon's own uid and root.
    #[serde(default, deserialize_with = "opt_one_or_many")]
    pub mutate_uids: Option<Vec<u32>>,
    /// Groups (gids) whose members may call mutating RPCs, primary or supplementary.
    #[serde(default, deserialize_with = "one_or_many")]
    pub mutate_gids: Vec<u32>,
}

/// A list of numeric ids from TOML (`[0, 1000]`) or env (`"0,1000"` or `"0"`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    d.deserialize_any(IdListVisitor)
}

fn opt_one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u32>>, D::Error> {
    d.deserialize_any(OptIdListVisitor)
}

struct IdListVisitor;

fn parse_id<E: serde::de::Error>(s: &str) -> Result<u32, E> {
    s.trim()
        .parse()
        .map_err(|_| E::custom(format!("{s:?} is not a numeric id")))
}

impl<'de> serde::de::Visitor<'de> for IdListVisitor {
    type Value = Vec<u32>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of numeric ids")
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        u32::try_from(v)
            .map(|v| vec![v])
            .map_err(|_| E::custom("id out of range"))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u32::try_from(v)
            .map(|v| vec![v])
            .map_err(|_| E::custom("id out of range"))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(parse_id)
            .collect()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(part) = seq.next_element::<IdItem>()? {
            out.push(part.0);
        }
        Ok(out)
    }
}

struct OptIdListVisitor;

impl<'de> serde::de::Visitor<'de> for OptIdListVisitor {
    type Value = Option<Vec<u32>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of numeric ids")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        one_or_many(d).map(Some)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        IdListVisitor.visit_u64(v).map(Some)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        IdListVisitor.visit_i64(v).map(Some)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        IdListVisitor.visit_str(v).map(Some)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IdListVisitor.visit_seq(seq).map(Some)
    }
}

struct IdItem(u32);

impl<'de> Deserialize<'de> for IdItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IdItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a numeric id")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IdItem, E> {
                u32::try_from(v)
                    .map(IdItem)
                    .map_err(|_| E::custom("id out of range"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IdItem, E> {
                u32::try_from(v)
                    .map(IdItem)
                    .map_err(|_| E::custom("id out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdItem, E> {
                parse_id(v).map(IdItem)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, `defenseclawd=debug,info`, …
    /// `DEFENSECLAWD_LOG` overrides it. Reloaded on SIGHUP.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (no timestamps under journald).
    Text,
    /// One JSON object per line.
    Json,
}

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Log the chain head (`seq:hash`) every this many entries, so it lands in the
    /// journal or SIEM and truncation can be detected later. 0 disables.
    pub head_log_every: u64,
    /// Repeated refusals (per peer uid, call and reason) and cached provider
    /// tokens handed out (per peer uid, server, connection and credential) are
    /// written once per window of this many seconds, then as one entry with a
    /// count when the window ends. At least 1.
    pub coalesce_window_secs: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            head_log_every: 1000,
            coalesce_window_secs: 60,
        }
    }
}

/// Where the file layer comes from.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// `--config PATH`: must exist.
    Explicit(PathBuf),
    /// The system path: read when present.
    System,
    /// A user's own config file (`defenseclawctl init`), found without `--config`.
    User(PathBuf),
    /// No file at all (tests).
    None,
}

impl Settings {
    /// Loads defaults < file < env. `env` is the process environment in
    /// production and an explicit map in tests.
    pub fn load(file: &ConfigFile, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let defaults = Config::try_from(&Settings::default())
            .map_err(|e| ConfigError::Invalid(format!("built-in defaults: {e}")))?;
        let mut builder = Config::builder().add_source(defaults);
        match file {
            ConfigFile::Explicit(path) | ConfigFile::User(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist or is not a file",
                        path.display()
                    )));
                }
                builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            }
            ConfigFile::System => {
                builder = builder.add_source(
                    File::from(Path::new(SYSTEM_CONFIG_PATH))
                        .format(FileFormat::Toml)
                        .required(false),
                );
            }
            ConfigFile::None => {}
        }
        check_env_names(env)?;
        let overrides = config_env(env);
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(name_env_variable(&e.to_string())))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.socket_mode_bits()?;
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError::Value {
                field: "server.max_message_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        let server = &self.server;
        for (field, value) in [
            ("server.max_connections", server.max_connections as u64),
            (
                "server.max_streams_per_connection",
                u64::from(server.max_streams_per_connection),
            ),
            ("server.max_streams", server.max_streams as u64),
            (
                "server.stream_stall_timeout_secs",
                server.stream_stall_timeout_secs,
            ),
            (
                "server.handshake_timeout_secs",
                server.handshake_timeout_secs,
            ),
            ("server.idle_timeout_secs", server.idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::Value {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if server.stream_buffer_bytes < 64 * 1024 {
            return Err(ConfigError::Value {
                field: "server.stream_buffer_bytes",
                reason: "must be at least 65536".into(),
            });
        }
        if let Some(path) = &self.server.socket
            && path.as_os_str().is_empty()
        {
            return Err(ConfigError::Value {
                field: "server.socket",
                reason: "must not be empty".into(),
            });
        }
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.openclaw
            .validate()
            .and_then(|()| crate::openclaw::Policy::from_settings(&self.openclaw).map(drop))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.scanner
            .validate()
            .map_err(|(field, reason)| ConfigError::Value { field, reason })?;
        if self.stepup.enabled {
            let auth = &self.auth;
            if auth.mode != crate::oidc::AuthMode::Oidc || auth.daemon_client_id.is_none() {
                return Err(ConfigError::Value {
                    field: "stepup.enabled",
                    reason: "needs [auth] mode = \"oidc\" and daemon_client_id (the confidential CIBA client)".into(),
                });
            }
            if self.stepup.requested_expiry_secs == 0 || self.stepup.requested_expiry_secs > 3600 {
                return Err(ConfigError::Value {
                    field: "stepup.requested_expiry_secs",
                    reason: "must be between 1 and 3600 (≤ 300 keeps Auth0 on push)".into(),
                });
            }
            if self.stepup.approver.is_empty() {
                return Err(ConfigError::Value {
                    field: "stepup.approver",
                    reason: "must be \"requester\" or a list of approver subs".into(),
                });
            }
            // The daemon's own block proposals have no requester to ask: without a
            // listed approver every CRITICAL proposal would fail.
            if self.stepup.listed().is_empty() {
                return Err(ConfigError::Value {
                    field: "stepup.approver",
                    reason: "[stepup] approver names no approver sub for the daemon's own block proposals (\"requester\" alone cannot approve them); add one, e.g. approver = [\"requester\", \"auth0|...\"]".into(),
                });
            }
            if self.stepup.max_pending_per_requester == 0 {
                return Err(ConfigError::Value {
                    field: "stepup.max_pending_per_requester",
                    reason: "must be at least 1".into(),
                });
            }
            if self.stepup.max_pending_per_target == 0 {
                return Err(ConfigError::Value {
                    field: "stepup.max_pending_per_target",
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.stepup.auto_block_severity < self.stepup.min_severity {
            return Err(ConfigError::Value {
                field: "stepup.auto_block_severity",
                reason: format!(
                    "{} is below [stepup] min_severity {}: the daemon would propose blocks on targets whose changes need no approval",
                    self.stepup.auto_block_severity.as_str(),
                    self.stepup.min_severity.as_str()
                ),
            });
        }
        if self.audit.coalesce_window_secs == 0 {
            return Err(ConfigError::Value {
                field: "audit.coalesce_window_secs",
                reason: "must be at least 1 (every refusal would be its own audit entry)".into(),
            });
        }
        self.token_vault.server_uid_map()?;
        if self.token_vault.request_timeout_secs == 0 {
            return Err(ConfigError::Value {
                field: "token_vault.request_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(path) = &self.token_vault.key_file
            && !path.is_absolute()
        {
            return Err(ConfigError::Value {
                field: "token_vault.key_file",
                reason: "must be an absolute path".into(),
            });
        }
        for (name, sink) in &self.export {
            sink.validate(name)
                .map_err(|(field, reason)| ConfigError::Invalid(format!("{field}: {reason}")))?;
        }
        check_log_level(&self.log.level)?;
        self.metrics.endpoint()?;
        if let Some(path) = &self.server.socket
            && !path.is_absolute()
        {
            return Err(ConfigError::Value {
                field: "server.socket",
                reason: format!("{} is not an absolute path", path.display()),
            });
        }
        if let Some(dir) = self.scanner.watch_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(ConfigError::Value {
                field: "scanner.watch_dirs",
                reason: format!("{} is not an absolute path", dir.display()),
            });
        }
        Ok(())
    }

    /// The socket path in effect.
    pub fn socket_path(&self) -> PathBuf {
        self.server
            .socket
            .clone()
            .unwrap_or_else(defenseclaw_common::paths::default_socket_path)
    }

    /// The database path in effect.
    pub fn store_path(&self, state_dir: &Path) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| state_dir.join(paths::DB_FILE))
    }

    /// The effective config as TOML, for `--check-config`. Settings hold no
    /// secrets; the secret sources are reported separately.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

impl ServerSettings {
    /// `socket_mode` as permission bits.
    pub fn socket_mode_bits(&self) -> Result<u32, ConfigError> {
        let bits =
            u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).map_err(|_| {
                ConfigError::Value {
                    field: "server.socket_mode",
                    reason: format!(
                        "{:?} is not an octal mode such as \"0660\"",
                        self.socket_mode
                    ),
                }
            })?;
        if bits & !0o777 != 0 || bits & 0o007 != 0 {
            return Err(ConfigError::Value {
                field: "server.socket_mode",
                reason: format!("{:o} must not grant access to others", bits),
            });
        }
        Ok(bits)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_toml() {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "# unprintable config: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
