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
