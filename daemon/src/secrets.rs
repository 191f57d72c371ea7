//! Secrets: from the environment, from systemd credentials
//! (`$CREDENTIALS_DIRECTORY/<name>`, i.e. `LoadCredential=`), or from
//! `<state dir>/.env`. Never from the TOML, never logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret the daemon reads: its environment variable and its systemd
/// credential name (`LoadCredential=<credential>:…`). The `.env` key is the
/// variable's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretName {
    /// Environment variable (and `.env` key).
    pub env: &'static str,
    /// File name under `$CREDENTIALS_DIRECTORY`.
    pub credential: &'static str,
}

/// The daemon's confidential client secret (CIBA step-up).
pub const AUTH_CLIENT_SECRET: SecretName = SecretName {
    env: "DEFENSECLAW_AUTH_CLIENT_SECRET",
    credential: "auth-client-secret",
};

/// The OpenClaw gateway token (OpenClaw's own variable).
pub const OPENCLAW_GATEWAY_TOKEN: SecretName = SecretName {
    env: "OPENCLAW_GATEWAY_TOKEN",
    credential: "openclaw-gateway-token",
};

/// The LLM analyzer's API key (`[scanner.llm]`, when no `key_file` is set).
pub const LLM_API_KEY: SecretName = SecretName {
    env: "DEFENSECLAW_LLM_API_KEY",
    credential: "llm-api-key",
};

/// Every secret the daemon reads, for `--check-config`.
pub const KNOWN_SECRETS: &[SecretName] = &[AUTH_CLIENT_SECRET, OPENCLAW_GATEWAY_TOKEN, LLM_API_KEY];

/// Where a secret was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretOrigin {
    /// A process environment variable.
    Env,
    /// `$CREDENTIALS_DIRECTORY/<name>`.
    Credential,
    /// `<state dir>/.env`.
    DotEnv,
}

/// Keys a `.env` file may not set: they steer the process rather than configure it.
fn is_process_control_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
        "IFS",
        "ENV",
        "BASH_ENV",
        "TMPDIR",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "RUST_LOG",
        "CREDENTIALS_DIRECTORY",
        "DEFENSECLAW_HOME",
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ];
    EXACT.contains(&key) || key.starts_with("LD_") || key.starts_with("DYLD_")
}

/// The secret sources, read once at start.
#[derive(Default)]
pub struct SecretSources {
    env: HashMap<String, String>,
    credentials_dir: Option<PathBuf>,
    dotenv: BTreeMap<String, String>,
}

impl fmt::Debug for SecretSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSources")
            .field("credentials_dir", &self.credentials_dir)
            .field("dotenv_keys", &self.dotenv.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a secret source could not be read. Messages name the file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// `.env` is readable by others than the daemon.
    #[error("{} has mode {mode:o}; it holds secrets and must be 0600: run `chmod 600 {}`", path.display(), path.display())]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read or inspected.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `inspect` or `read credential`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of `.env` is malformed or sets a forbidden key.
    #[error("{}: {reason}", path.display())]
    Dotenv {
        /// The file.
        path: PathBuf,
        /// Which line, and what is wrong with it (never its value).
        reason: String,
    },
}

impl SecretSources {
    /// Reads `<state_dir>/.env` if present (it must be 0600 or tighter and may not
    /// set process-control keys) and remembers the environment.
    pub fn load(env: &HashMap<String, String>, state_dir: &Path) -> Result<Self, SecretsError> {
        let dotenv_path = state_dir.join(".env");
        let dotenv = match std::fs::metadata(&dotenv_path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SecretsError::Mode {
                        path: dotenv_path,
                        mode,
                    });
                }
                let text =
                    std::fs::read_to_string(&dotenv_path).map_err(|source| SecretsError::Io {
                        action: "read",
                        path: dotenv_path.clone(),
                        source,
                    })?;
                parse_dotenv(&text).map_err(|reason| SecretsError::Dotenv {
                    path: dotenv_path.clone(),
                    reason,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SecretsError::Io {
                    action: "inspect",
                    path: dotenv_path,
                    source,
                });
            }
        };
        Ok(Self {
            env: env.clone(),
            credentials_dir: env
                .get("CREDENTIALS_DIRECTORY")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            dotenv,
        })
    }

    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential`), when set.
    pub fn credentials_dir(&self) -> Option<&Path> {
        self.credentials_dir.as_deref()
    }

    /// Looks a secret up by env variable, then systemd credential, then `.env` key.
    pub fn get(
        &self,
        name: SecretName,
    ) -> Result<Option<(SecretString, SecretOrigin)>, SecretsError> {
        self.get_named(name.env, name.credential)
    }

    /// [`Self::get`] for a name made at run time (an export sink's
    /// `DEFENSECLAW_EXPORT_<NAME>_TOKEN` / `export-<name>-token`).
    pub fn get_named(
        &self,
        env_name: &str,
        credential_name: &str,
    ) -> Result<Option<(SecretString, SecretOrigin)>, SecretsError> {
        if let Some(v) = self.env.get(env_name).filter(|v| !v.is_empty()) {
            return Ok(Some((SecretString::new(v.clone()), SecretOrigin::Env)));
        }
        if let Some(dir) = &self.credentials_dir {
            let path = dir.join(credential_name);
            match std::fs::read_to_string(&path) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\n', '\r']).to_owned();
                    if !v.is_empty() {
                        return Ok(Some((SecretString::new(v), SecretOrigin::Credential)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SecretsError::Io {
                        action: "read credential",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(self
            .dotenv
            .get(env_name)
            .filter(|v| !v.is_empty())
            .map(|v| (SecretString::new(v.clone()), SecretOrigin::DotEnv)))
    }
}

/// `KEY=VALUE` lines; `#` comments; optional `export `; optional matching quotes.
fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", idx + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: invalid key", idx + 1));
        }
        if is_process_control_key(key) {
            return Err(format!(
                "line {}: {key} controls the process and may not be set from .env",
                idx + 1
            ));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_refuses_process_keys() {
        assert!(parse_dotenv("PATH=/evil").unwrap_err().contains("PATH"));
        assert!(
            parse_dotenv("LD_PRELOAD=/x.so")
                .unwrap_err()
                .contains("LD_PRELOAD")
        );
        let ok = parse_dotenv("# c\nexport A=\"b c\"\nB='x'\n").unwrap();
        assert_eq!(ok["A"], "b c");
        assert_eq!(ok["B"], "x");
    }

    #[test]
    fn precedence_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("tok"), "from-cred\n").unwrap();
        let dotenv = dir.path().join(".env");
        std::fs::write(&dotenv, "TOK=from-dotenv\nOTHER=o\n").unwrap();
        std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut env = HashMap::new();
        env.insert(
            "CREDENTIALS_DIRECTORY".to_string(),
            creds.display().to_string(),
        );
        let s = SecretSources::load(&env, dir.path()).unwrap();
        let (v, origin) = s
            .get(SecretName {
                env: "TOK",
                credential: "tok",
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.expose(), origin),
            ("from-cred", SecretOrigin::Credential)
        );
        assert_eq!(format!("{v:?} {v}"), "SecretString(***) ***");
        let (v, origin) = s
            .get(SecretName {
                env: "OTHER",
                credential: "other",
            })
            .unwrap()
            .unwrap();
        assert_eq!((v.expose(), origin), ("o", SecretOrigin::DotEnv));
        std::fs::set_permissions(&dotenv, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            SecretSources::load(&env, dir.path())
                .unwrap_err()
                .to_string()
                .contains("0600")
        );
    }
}
