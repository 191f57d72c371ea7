//! Redacting wrappers for secrets: their `Debug` never shows the value and they have
//! no `Display`.

use std::fmt;

/// The daemon's OAuth client secret (for CIBA). Load it from the environment or a
/// credential file, never from the TOML configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret; surrounding whitespace (e.g. a trailing newline from a file) is removed.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_owned())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// A CIBA `auth_req_id`: a bearer credential for the pending approval, so redacted too.
/// The daemon stores it to resume polling after a restart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AuthReqId(String);

impl AuthReqId {
    /// Wraps an `auth_req_id` (e.g. read back from the store).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id itself, for polling and for the store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthReqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthReqId(<redacted>)")
    }
}

/// Environment variable holding the daemon's client secret.
pub const CLIENT_SECRET_ENV: &str = "DEFENSECLAW_AUTH_CLIENT_SECRET";
/// systemd credential name (`LoadCredential=auth-client-secret:...`).
pub const CLIENT_SECRET_CREDENTIAL: &str = "auth-client-secret";

/// Why the client secret could not be loaded. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretLoadError {
    /// A file holding the secret could not be read.
    #[error("cannot read {path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A file holding the secret is readable by group or others.
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    LoosePermissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// Loads the daemon's client secret, first found wins:
/// 1. the environment variable `DEFENSECLAW_AUTH_CLIENT_SECRET` (looked up with `env`);
/// 2. the systemd credential `$CREDENTIALS_DIRECTORY/auth-client-secret`;
/// 3. the line `DEFENSECLAW_AUTH_CLIENT_SECRET=...` in `<home>/.defenseclaw/.env`, which
///    must not be readable by group or others.
///
/// Returns `Ok(None)` when none is set. The TOML configuration is never a source.
pub fn load_client_secret(
    env: impl Fn(&str) -> Option<String>,
    home: Option<&std::path::Path>,
) -> Result<Option<ClientSecret>, SecretLoadError> {
    if let Some(value) = env(CLIENT_SECRET_ENV).filter(|v| !v.trim().is_empty()) {
        return Ok(Some(ClientSecret::new(value)));
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let path = std::path::Path::new(&dir).join(CLIENT_SECRET_CREDENTIAL);
        if path.exists() {
            let value = read_file(&path, false)?;
            if !value.trim().is_empty() {
                return Ok(Some(ClientSecret::new(value)));
            }
        }
    }
    if let Some(home) = home {
        let path = home.join(".defenseclaw").join(".env");
        if path.exists() {
            let text = read_file(&path, true)?;
            for line in text.lines() {
                let line = line.trim();
                let line = line.strip_prefix("export ").unwrap_or(line);
                if let Some((key, value)) = line.split_once('=')
                    && key.trim() == CLIENT_SECRET_ENV
                {
                    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                    if !value.is_empty() {
                        return Ok(Some(ClientSecret::new(value)));
                    }
                }
            }
        }
    }
    Ok(None)
}

fn read_file(path: &std::path::Path, check_mode: bool) -> Result<String, SecretLoadError> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| SecretLoadError::Unreadable {
        path: shown.clone(),
        message: e.to_string(),
    };
    if check_mode {
        let mode = std::fs::metadata(path)
            .map_err(unreadable)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretLoadError::LoosePermissions { path: shown, mode });
        }
    }
    std::fs::read_to_string(path).map_err(unreadable)
}
