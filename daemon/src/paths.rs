//! The state directory and the files in it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the database file inside the state directory.
pub const DB_FILE: &str = "defenseclaw.db";

/// `$DEFENSECLAW_HOME`, else `$STATE_DIRECTORY` (systemd's `StateDirectory=`,
/// i.e. `/var/lib/defenseclaw`), else `~/.defenseclaw`.
pub fn state_dir(env: &std::collections::HashMap<String, String>) -> Result<PathBuf, String> {
    if let Some(home) = env.get("DEFENSECLAW_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    if let Some(dir) = env.get("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        let first = dir.split(':').next().unwrap_or(dir);
        return Ok(PathBuf::from(first));
    }
    match env.get("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(Path::new(home).join(defenseclaw_common::paths::USER_DIR)),
        None => Err("cannot find the state directory: set DEFENSECLAW_HOME or HOME".into()),
    }
}

/// Creates `dir` (and parents) as 0700, or checks an existing one is a directory
/// owned by us and closed to group and others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(format!("{} exists and is not a directory", dir.display()));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                if Some(meta.uid()) == defenseclaw_common::paths::current_uid() {
                    // Our own directory with loose bits: tighten rather than refuse.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| format!("cannot restrict {} to 0700: {e}", dir.display()))?;
                } else {
                    return Err(format!(
                        "{} has mode {:o} and is owned by uid {}: it must be private (0700) to the daemon's user",
                        dir.display(),
                        mode,
                        meta.uid()
                    ));
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display())),
        Err(e) => Err(format!("cannot inspect {}: {e}", dir.display())),
    }
}

/// Name of the lock file that keeps a state directory to one daemon.
pub const LOCK_FILE: &str = "defenseclawd.lock";

/// Holds the state directory for one daemon: an exclusive `flock` on
/// [`LOCK_FILE`], released when this is dropped (or the process dies, so a crash
/// never leaves a stale lock behind).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the state directory's lock, or says which process holds it. Taken
/// before the socket is bound and the store opened: two daemons on one store
/// would fight over the audit chain.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, String> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;

    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // A symlink planted at the lock path is refused, not followed.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            // The holder wrote its pid; a short, bounded read of a file we own.
            let mut holder = String::new();
            let _ = (&file).take(32).read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() || !holder.bytes().all(|b| b.is_ascii_digit()) {
                "another defenseclawd".to_owned()
            } else {
                format!("another defenseclawd (pid {holder})")
            };
            return Err(format!(
                "{who} already uses the state directory {}: one daemon per store (stop it, or give this one its own DEFENSECLAW_HOME)",
                dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(|e| format!("cannot write the lock file {}: {e}", path.display()))?;
    Ok(StateLock { _file: file })
}
