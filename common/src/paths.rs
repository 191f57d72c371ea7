//! Where the daemon's socket lives when nothing overrides it, and the one rule
//! both sides apply before trusting a socket's directory. The daemon checks it
//! before binding and the CLI before connecting, so both agree without
//! configuration.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Socket path of the system-wide daemon (the shipped systemd unit).
pub const SYSTEM_SOCKET: &str = "/run/defenseclaw/defenseclawd.sock";
/// The system daemon's config file (the shipped systemd unit's `--config`).
pub const SYSTEM_CONFIG: &str = "/etc/defenseclaw/defenseclawd.toml";
/// File name of the socket inside its runtime directory.
pub const SOCKET_NAME: &str = "defenseclawd.sock";
/// The system daemon's service user (the shipped systemd unit's `User=`).
pub const SERVICE_USER: &str = "defenseclaw";
/// The per-user directory under a home directory: the daemon's state and socket
/// (`run/`) when it runs as a user, and the CLI's login session.
pub const USER_DIR: &str = ".defenseclaw";
/// Overrides the uid of the daemon's service user (when it is not called
/// `defenseclaw`): a socket owned by that uid is trusted like root's.
pub const DAEMON_UID_ENV: &str = "DEFENSECLAW_DAEMON_UID";

/// The effective uid of this process, read without `unsafe`: `/proc/self` is
/// owned by it.
pub fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The daemon's service user: `$DEFENSECLAW_DAEMON_UID` when set, else the
/// uid of the `defenseclaw` user if it exists.
pub fn service_uid() -> Option<u32> {
    if let Some(v) = std::env::var_os(DAEMON_UID_ENV).filter(|v| !v.is_empty()) {
        return v.to_str().and_then(|v| v.trim().parse().ok());
    }
    nix::unistd::User::from_name(SERVICE_USER)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// `uid N (name)`, or `uid N` when the password database has no entry.
pub fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Uids trusted to own the socket, its directory chain, and the listening
/// process: root, the caller, and the daemon's service user.
pub fn trusted_uids() -> Vec<u32> {
    let mut uids = vec![0];
    uids.extend(current_uid());
    uids.extend(service_uid());
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// The default socket, first match wins:
/// The config file a daemon without `--config` reads: [`SYSTEM_CONFIG`] for
/// root; for anyone else `$XDG_CONFIG_HOME/defenseclaw/defenseclawd.toml`, else
/// `<home>/.config/defenseclaw/defenseclawd.toml` (what `defenseclawctl init` writes).
pub fn default_config_path() -> PathBuf {
    let uid = match current_uid() {
        Some(0) | None => return PathBuf::from(SYSTEM_CONFIG),
        Some(uid) => uid,
    };
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| home_of(uid).map(|home| home.join(".config")));
    match config_home {
        Some(dir) => dir.join("defenseclaw").join("defenseclawd.toml"),
        None => PathBuf::from(SYSTEM_CONFIG),
    }
}

/// `uid`'s home from the password database (not `$HOME`, which `su`/`sudo`
/// may keep from another user), else `$HOME`.
fn home_of(uid: u32) -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| d.is_absolute() && d != Path::new("/"))
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        })
}

/// 1. `$RUNTIME_DIRECTORY/` (set by systemd; the first of several),
/// 2. `$XDG_RUNTIME_DIR/defenseclaw/`,
/// 3. `/run/defenseclaw/` for root,
/// 4. `/run/user/<uid>/defenseclaw/` when logind's per-user directory exists
///    and is private to the caller (it is what `XDG_RUNTIME_DIR` would be in
///    a login session, so `su`/cron/ssh agree with the session's daemon),
/// 5. `<home>/.defenseclaw/run/`, home taken from the password database
///    (not `$HOME`, which `su`/`sudo` may keep from another user), else `$HOME`.
///
/// Never a shared temporary directory: another user could create it first.
pub fn default_socket_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several directories separated by ':'; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first).join(SOCKET_NAME);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("defenseclaw").join(SOCKET_NAME);
    }
    let uid = match current_uid() {
        Some(0) | None => return PathBuf::from(SYSTEM_SOCKET),
        Some(uid) => uid,
    };
    let user_runtime = PathBuf::from(format!("/run/user/{uid}"));
    if let Ok(meta) = std::fs::symlink_metadata(&user_runtime)
        && meta.is_dir()
        && meta.uid() == uid
        && meta.permissions().mode() & 0o022 == 0
    {
        return user_runtime.join("defenseclaw").join(SOCKET_NAME);
    }
    match home_of(uid) {
        Some(home) => home.join(USER_DIR).join("run").join(SOCKET_NAME),
        None => PathBuf::from(SYSTEM_SOCKET),
    }
}

/// Why a socket directory is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeDir {
    /// The directory at fault.
    pub dir: PathBuf,
    /// Its owner.
    pub owner: u32,
    /// Its permission bits.
    pub mode: u32,
    /// What is wrong.
    pub problem: &'static str,
}

impl std::fmt::Display for UnsafeDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (owner uid {}, mode {:o}) {}",
            self.dir.display(),
            self.owner,
            self.mode,
            self.problem
        )
    }
}

/// Checks the directory chain of `socket` before binding or connecting.
///
/// The socket's own directory must be owned by a trusted uid (root, the
/// caller, the service user) and not writable by group or others: nobody
/// else can then put a socket there or swap the one that is there. Every
/// ancestor must be owned by a trusted uid and either closed to group/other
/// writes or sticky (like `/tmp`): a sticky directory lets others create
/// entries but not rename or remove ours. Symlinks are resolved first, so the
/// chain checked is the one the kernel walks.
pub fn check_socket_dir(socket: &Path, trusted: &[u32]) -> Result<(), CheckError> {
    let parent = match socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_owned(),
        None => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&parent).map_err(|e| CheckError::Io(parent.clone(), e))?;
    let mut current = Some(dir.as_path());
    let mut first = true;
    while let Some(d) = current {
        let meta = std::fs::metadata(d).map_err(|e| CheckError::Io(d.to_owned(), e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let refuse = |problem| {
            CheckError::Unsafe(UnsafeDir {
                dir: d.to_owned(),
                owner: meta.uid(),
                mode,
                problem,
            })
        };
        if !trusted.contains(&meta.uid()) {
            return Err(refuse(
                "is owned by another user: only root, you or the daemon's service user may own the socket's directories",
            ));
        }
        let shared_write = mode & 0o022 != 0;
        if first && shared_write {
            return Err(refuse(
                "is writable by group or others: the socket's directory must not be shared",
            ));
        }
        if !first && shared_write && mode & 0o1000 == 0 {
            return Err(refuse(
                "is writable by group or others without the sticky bit",
            ));
        }
        first = false;
        current = d.parent();
    }
    Ok(())
}

/// Outcome of [`check_socket_dir`] other than success.
#[derive(Debug)]
pub enum CheckError {
    /// The chain is unsafe.
    Unsafe(UnsafeDir),
    /// A directory could not be inspected.
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsafe(u) => u.fmt(f),
            Self::Io(p, e) => write!(f, "cannot inspect {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for CheckError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_is_never_in_a_shared_temp_dir() {
        let p = default_socket_path();
        assert!(!p.starts_with(std::env::temp_dir()), "{}", p.display());
        assert!(
            !p.starts_with("/tmp") && !p.starts_with("/var/tmp"),
            "{}",
            p.display()
        );
    }

    fn socket_in(dir: &Path, mode: u32) -> PathBuf {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir.join(SOCKET_NAME)
    }

    #[test]
    fn a_private_directory_of_a_trusted_user_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = socket_in(tmp.path(), 0o700);
        check_socket_dir(&socket, &trusted_uids()).unwrap();
    }

    #[test]
    fn a_shared_socket_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = socket_in(tmp.path(), 0o777);
        match check_socket_dir(&socket, &trusted_uids()) {
            Err(CheckError::Unsafe(bad)) => {
                assert_eq!(bad.mode & 0o777, 0o777);
                assert!(bad.problem.contains("must not be shared"), "{bad}");
            }
            other => panic!("expected Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn a_directory_of_an_untrusted_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = socket_in(tmp.path(), 0o700);
        let nobody_trusted = [u32::MAX - 1];
        assert!(matches!(
            check_socket_dir(&socket, &nobody_trusted),
            Err(CheckError::Unsafe(_))
        ));
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let missing = Path::new("/nonexistent-defenseclaw-test/x/defenseclawd.sock");
        assert!(matches!(
            check_socket_dir(missing, &trusted_uids()),
            Err(CheckError::Io(..))
        ));
    }

    #[test]
    fn trusted_uids_include_root_and_the_caller() {
        let uids = trusted_uids();
        assert!(uids.contains(&0));
        if let Some(me) = current_uid() {
            assert!(uids.contains(&me));
        }
    }
}
