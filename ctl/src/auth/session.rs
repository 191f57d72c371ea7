//! The session file: `~/.defenseclaw/session.json` or `$DEFENSECLAW_SESSION`.
//!
//! Directory 0700, file 0600, written atomically (temp file + rename). A file readable
//! or writable by group or others is refused, and so is a corrupted one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::AuthError;
use super::secret::Secret;

/// Environment variable overriding the session file path.
pub const SESSION_ENV: &str = "DEFENSECLAW_SESSION";

/// The stored login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Access token (a JWT for the daemon's API).
    pub access_token: Secret,
    /// Refresh token (`offline_access`), if the provider issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// Access token expiry, RFC 3339.
    pub expires_at: String,
    /// Issuer, exactly as discovered (trailing slash included).
    pub issuer: String,
    /// Subject from the validated ID token.
    pub sub: String,
    /// Email from the validated ID token.
    #[serde(default)]
    pub email: Option<String>,
    /// Name from the validated ID token.
    #[serde(default)]
    pub name: Option<String>,
    /// Granted API scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The CLI's client id (needed to refresh and revoke).
    #[serde(default)]
    pub client_id: String,
    /// The API audience.
    #[serde(default)]
    pub audience: Option<String>,
}

impl Session {
    /// `expires_at` parsed, to decide when to refresh.
    pub fn expires_at(&self) -> Result<OffsetDateTime, String> {
        OffsetDateTime::parse(&self.expires_at, &Rfc3339)
            .map_err(|e| format!("`expires_at` is not RFC 3339: {e}"))
    }

    /// Whether the access token expires within `margin`.
    pub fn expires_within(&self, margin: Duration) -> bool {
        match self.expires_at() {
            Ok(at) => at - OffsetDateTime::now_utc() <= margin,
            Err(_) => true,
        }
    }
}

/// Formats an expiry `expires_in` seconds from now as RFC 3339 (UTC, whole seconds).
pub(crate) fn expiry_from_now(expires_in: u64) -> Result<String, AuthError> {
    let secs = i64::try_from(expires_in).unwrap_or(i64::MAX / 2);
    let at = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| AuthError::Io(e.to_string()))?
        + time::Duration::seconds(secs);
    at.format(&Rfc3339)
        .map_err(|e| AuthError::Io(format!("formatting the expiry: {e}")))
}

/// The session file path: `$DEFENSECLAW_SESSION`, else `~/.defenseclaw/session.json`.
pub fn default_session_path() -> Result<PathBuf, AuthError> {
    if let Some(p) = std::env::var_os(SESSION_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            AuthError::Config(format!(
                "HOME is not set; set {SESSION_ENV} to the session file path"
            ))
        })?;
    Ok(PathBuf::from(home)
        .join(defenseclaw_common::paths::USER_DIR)
        .join("session.json"))
}

fn session_err(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::SessionFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Loads the session. `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<Session>, AuthError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(session_err(path, format!("cannot be read: {e}"))),
    };
    if !meta.is_file() {
        return Err(session_err(path, "is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(session_err(
            path,
            format!(
                "has permissions {mode:04o}, so group or others can access the tokens in it; \
                 it is not used. Fix with `chmod 600 {}` (and consider the tokens leaked: \
                 `defenseclawctl auth logout`, then log in again)",
                path.display()
            ),
        ));
    }
    let bytes = fs::read(path).map_err(|e| session_err(path, format!("cannot be read: {e}")))?;
    let session: Session = serde_json::from_slice(&bytes).map_err(|e| {
        session_err(
            path,
            format!(
                "is corrupted ({e}); delete it or run `defenseclawctl auth login` to replace it"
            ),
        )
    })?;
    if session.access_token.is_empty() || session.issuer.is_empty() || session.sub.is_empty() {
        return Err(session_err(
            path,
            "is corrupted (missing access_token, issuer or sub); run `defenseclawctl auth login`",
        ));
    }
    session.expires_at().map_err(|e| {
        session_err(
            path,
            format!("is corrupted ({e}); run `defenseclawctl auth login`"),
        )
    })?;
    Ok(Some(session))
}

/// Reads the raw file for logout, ignoring permissions; `None` if missing or unparsable.
pub(crate) fn load_for_logout(path: &Path) -> Option<Session> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn ensure_dir(dir: &Path) -> Result<(), AuthError> {
    let io = |e: std::io::Error| AuthError::Io(format!("creating {}: {e}", dir.display()));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let meta = fs::metadata(dir).map_err(io)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| AuthError::Io(format!("restricting {} to 0700: {e}", dir.display())))?;
    }
    Ok(())
}

/// Writes the session atomically with mode 0600 in a 0700 directory.
pub fn save(path: &Path, session: &Session) -> Result<(), AuthError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    ensure_dir(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session.json".into());
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let io =
        |what: &str, e: std::io::Error| AuthError::Io(format!("{what} {}: {e}", tmp.display()));
    let json = serde_json::to_vec_pretty(session)
        .map_err(|e| AuthError::Io(format!("serialising the session: {e}")))?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("creating", e))?;
        f.write_all(&json).map_err(|e| io("writing", e))?;
        f.write_all(b"\n").map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, path)
            .map_err(|e| AuthError::Io(format!("replacing {}: {e}", path.display())))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Deletes the session file. `Ok(false)` if there was none.
pub fn delete(path: &Path) -> Result<bool, AuthError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(AuthError::Io(format!("deleting {}: {e}", path.display()))),
    }
}

/// An exclusive lock beside the session file, held while refreshing so two processes
/// don't both spend a rotating refresh token.
pub(crate) struct RefreshLock {
    file: File,
}

impl RefreshLock {
    pub(crate) async fn acquire(path: &Path) -> Result<Self, AuthError> {
        let dir = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        ensure_dir(&dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "session.json".into());
        let lock_path = dir.join(format!(".{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| AuthError::Io(format!("opening {}: {e}", lock_path.display())))?;
        for _ in 0..300 {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(AuthError::Io(format!(
                        "locking {}: {e}",
                        lock_path.display()
                    )));
                }
            }
        }
        Err(AuthError::Io(format!(
            "timed out waiting for the lock {} (another defenseclawctl refreshing?)",
            lock_path.display()
        )))
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Session {
        Session {
            access_token: Secret::new("at"),
            refresh_token: Some(Secret::new("rt")),
            expires_at: "2030-01-01T00:00:00Z".into(),
            issuer: "https://t.auth0.com/".into(),
            sub: "auth0|x".into(),
            email: None,
            name: None,
            scopes: vec![],
            client_id: "cli".into(),
            audience: None,
        }
    }

    #[test]
    fn save_load_roundtrip_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("session.json");
        save(&path, &sample()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let s = load(&path).unwrap().unwrap();
        assert_eq!(s.sub, "auth0|x");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(
            err.exit_code(),
            super::super::error::exit_codes::SESSION_FILE
        );
        assert!(err.to_string().contains("0640"), "{err}");
    }
}
