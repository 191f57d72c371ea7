//! Moving a skill folder to another place (quarantine and back) without ever
//! leaving half-written state: an atomic `rename` that never replaces an
//! existing entry, or, across file systems, a bounded copy into a hidden
//! temporary folder beside the destination (modes and times kept, every file
//! and folder `fsync`ed), an atomic rename of that copy into place, and only
//! then the removal of the source. A crash at any point leaves the source
//! intact or the destination complete (a stale temporary folder is all that
//! can remain; [`clean_partials`] removes those).
//!
//! The walk is relative to open folder descriptors and never follows a
//! symlink: a link is copied as a link (what it points to is never read), a
//! FIFO is re-created (never opened), sockets and device nodes are skipped
//! with a note. Blocking: run it off the async workers.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fsync, mkfifoat, symlinkat};

/// Marker in the name of a temporary copy (`.<name>.dc-partial-<random>`).
pub const PARTIAL_MARK: &str = ".dc-partial-";

/// Bounds of a copy across file systems.
#[derive(Debug, Clone, Copy)]
pub struct MoveLimits {
    /// Bytes of regular files in the whole folder.
    pub max_bytes: u64,
    /// Entries of any kind in the whole folder.
    pub max_entries: usize,
    /// Folder depth below the moved folder.
    pub max_depth: usize,
}

impl Default for MoveLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_entries: 20_000,
            max_depth: 32,
        }
    }
}

/// How a folder was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// One atomic rename (same file system).
    Renamed,
    /// Copied across file systems, then the source removed.
    Copied,
}

impl How {
    /// `renamed` or `copied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Renamed => "renamed",
            Self::Copied => "copied",
        }
    }
}

/// A completed move.
#[derive(Debug, Clone)]
pub struct Moved {
    /// Rename or copy.
    pub how: How,
    /// What was skipped or could not be kept (sockets, devices, ownership).
    pub notes: Vec<String>,
}

/// Why a folder was not moved. The source is intact in every case.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The source is not a folder (or is a symlink).
    #[error("{path} is not a folder (symlinks are not followed)")]
    NotAFolder {
        /// The source.
        path: String,
    },
    /// The source does not exist.
    #[error("{path} does not exist")]
    Missing {
        /// The source.
        path: String,
    },
    /// The destination exists: nothing is ever replaced.
    #[error("{path} already exists; nothing was replaced")]
    Exists {
        /// The destination.
        path: String,
    },
    /// The folder exceeds a copy bound.
    #[error("{path} is too large to copy to another file system ({what}); it was left in place")]
    TooLarge {
        /// The source.
        path: String,
        /// Which bound.
        what: String,
    },
    /// The file system failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path, e: impl Into<std::io::Error>) -> MoveError {
    MoveError::Io {
        what,
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// The file type bits of a stat.
fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Moves the folder `src` to `dst` (which must not exist). `dst`'s parent must exist.
pub fn move_dir(src: &Path, dst: &Path, limits: &MoveLimits) -> Result<Moved, MoveError> {
    let st = match fstatat(AT_FDCWD, src, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Err(MoveError::Missing { path: shown(src) }),
        Err(e) => return Err(io("reading", src, e)),
    };
    if kind(&st) != SFlag::S_IFDIR {
        return Err(MoveError::NotAFolder { path: shown(src) });
    }
    match renameat2(AT_FDCWD, src, AT_FDCWD, dst, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {
            sync_parent(dst)?;
            sync_parent(src)?;
            return Ok(Moved {
                how: How::Renamed,
                notes: Vec::new(),
            });
        }
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
            return Err(MoveError::Exists { path: shown(dst) });
        }
        Err(Errno::EXDEV) => {}
        Err(e) => return Err(io("renaming", src, e)),
    }
    copy_then_remove(src, dst, limits)
}

/// Removes temporary copies a crash left in `dir` (entries whose name carries [`PARTIAL_MARK`]).
pub fn clean_partials(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.as_bytes().starts_with(b".")
            && contains(name.as_bytes(), PARTIAL_MARK.as_bytes())
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn split(p: &Path) -> Result<(&Path, &OsStr), MoveError> {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            name,
        )),
        _ => Err(MoveError::NotAFolder { path: shown(p) }),
    }
}

fn open_dir_at(dir: impl AsFd, name: &OsStr, path: &Path) -> Result<OwnedFd, MoveError> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("opening", path, e))
}

fn sync_parent(p: &Path) -> Result<(), MoveError> {
    let (parent, _) = split(p)?;
    let fd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("opening", parent, e))?;
    fsync(&fd).map_err(|e| io("syncing", parent, e))
}

/// Entry names of an open folder, bounded by what is left of the budget.
fn names(fd: &OwnedFd, path: &Path, budget: &mut usize) -> Result<Vec<OsString>, MoveError> {
    let dup = fd.try_clone().map_err(|e| io("opening", path, e))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| io("listing", path, e))?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io("listing", path, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if *budget == 0 {
            return Err(MoveError::TooLarge {
                path: shown(path),
                what: "too many entries".into(),
            });
        }
        *budget -= 1;
        out.push(OsStr::from_bytes(name).to_owned());
    }
    Ok(out)
}

/// Sizes the tree first so an oversized folder is refused before anything is written.
fn measure(
    fd: &OwnedFd,
    path: &Path,
    depth: usize,
    limits: &MoveLimits,
    entries: &mut usize,
    bytes: &mut u64,
) -> Result<(), MoveError> {
    if depth > limits.max_depth {
        return Err(MoveError::TooLarge {
            path: shown(path),
            what: format!("deeper than {} folders", limits.max_depth),
        });
    }
    for name in names(fd, path, entries)? {
        let child = path.join(&name);
        let st = fstatat(fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io("reading", &child, e))?;
        match kind(&st) {
            SFlag::S_IFREG => {
                *bytes = bytes.saturating_add(u64::try_from(st.st_size).unwrap_or(u64::MAX));
                if *bytes > limits.max_bytes {
                    return Err(MoveError::TooLarge {
                        path: shown(path),
                        what: format!("more than {} bytes", limits.max_bytes),
                    });
                }
            }
            SFlag::S_IFDIR => {
                let sub = open_dir_at(fd, &name, &child)?;
                measure(&sub, &child, depth + 1, limits, entries, bytes)?;
            }
            _ => {}
        }
    }
    Ok(())
}

struct Copier<'a> {
    limits: &'a MoveLimits,
    notes: Vec<String>,
    chown_refused: bool,
}

impl Copier<'_> {
    /// Ownership as the source had it when the daemon may set it; otherwise
    /// the daemon keeps it and set-id bits are dropped.
    fn own(&mut self, fd: &OwnedFd, st: &FileStat, path: &Path) -> u32 {
        let mode = st.st_mode & 0o7777;
        if self.chown_refused {
            return mode & 0o1777;
        }
        match fchown(
            fd,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        ) {
            Ok(()) => mode,
            Err(_) => {
                self.chown_refused = true;
                self.notes.push(format!(
                    "ownership not kept from {} on (the daemon may not change it); set-id bits dropped",
                    shown(path)
                ));
                mode & 0o1777
            }
        }
    }

    fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
        (
            TimeSpec::new(st.st_atime, st.st_atime_nsec),
            TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        )
    }

    /// Copies the contents of the open folder `src` into the open, empty folder `dst`.
    fn copy_tree(
        &mut self,
        src: &OwnedFd,
        src_path: &Path,
        dst: &OwnedFd,
        dst_path: &Path,
    ) -> Result<(), MoveError> {
        let mut budget = self.limits.max_entries;
        for name in names(src, src_path, &mut budget)? {
            let from = src_path.join(&name);
            let to = dst_path.join(&name);
            let st = fstatat(src, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io("reading", &from, e))?;
            match kind(&st) {
                SFlag::S_IFDIR => {
                    mkdirat(dst, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| io("creating", &to, e))?;
                    let s = open_dir_at(src, &name, &from)?;
                    let d = open_dir_at(dst, &name, &to)?;
                    self.copy_tree(&s, &from, &d, &to)?;
                    self.finish(&d, &st, &to)?;
                }
                SFlag::S_IFREG => self.copy_file(src, dst, &name, &st, &from, &to)?,
                SFlag::S_IFLNK => {
                    // The link itself, never what it points to.
                    let target = readlinkat(src, name.as_os_str())
                        .map_err(|e| io("reading link", &from, e))?;
                    symlinkat(target.as_os_str(), dst, name.as_os_str())
                        .map_err(|e| io("creating link", &to, e))?;
                }
                SFlag::S_IFIFO => {
                    // Re-created, never opened (opening a FIFO can block forever).
                    mkfifoat(
                        dst,
                        name.as_os_str(),
                        Mode::from_bits_truncate(st.st_mode & 0o777),
                    )
                    .map_err(|e| io("creating FIFO", &to, e))?;
                }
                _ => self.notes.push(format!(
                    "{} skipped (a socket or device node is not copied)",
                    shown(&from)
                )),
            }
        }
        Ok(())
    }

    fn copy_file(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &OsStr,
        st: &FileStat,
        from: &Path,
        to: &Path,
    ) -> Result<(), MoveError> {
        let input = openat(
            src,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("opening", from, e))?;
        let now = fstat(&input).map_err(|e| io("reading", from, e))?;
        if kind(&now) != SFlag::S_IFREG || now.st_ino != st.st_ino || now.st_dev != st.st_dev {
            return Err(io(
                "copying",
                from,
                std::io::Error::other("the file changed while it was being copied"),
            ));
        }
        let size = u64::try_from(now.st_size).unwrap_or(0);
        let output = openat(
            dst,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("creating", to, e))?;
        let mut reader = std::fs::File::from(input).take(size.min(self.limits.max_bytes));
        let mut writer = std::fs::File::from(output);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| io("reading", from, e))?;
            if n == 0 {
                break;
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| io("writing", to, e))?;
        }
        let out: OwnedFd = writer.into();
        self.finish(&out, &now, to)
    }

    /// Owner, mode and times as the source had them, then `fsync`.
    fn finish(&mut self, fd: &OwnedFd, st: &FileStat, path: &Path) -> Result<(), MoveError> {
        let mode = self.own(fd, st, path);
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| io("setting mode", path, e))?;
        let (atime, mtime) = Self::times(st);
        futimens(fd, &atime, &mtime).map_err(|e| io("setting times", path, e))?;
        fsync(fd).map_err(|e| io("syncing", path, e))
    }
}

fn copy_then_remove(src: &Path, dst: &Path, limits: &MoveLimits) -> Result<Moved, MoveError> {
    let (src_parent, src_name) = split(src)?;
    let (dst_parent, dst_name) = split(dst)?;
    let src_parent_fd = nix::fcntl::open(
        src_parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("opening", src_parent, e))?;
    let src_fd = open_dir_at(&src_parent_fd, src_name, src)?;
    let (mut entries, mut bytes) = (limits.max_entries, 0u64);
    measure(&src_fd, src, 0, limits, &mut entries, &mut bytes)?;
    let dst_parent_fd = nix::fcntl::open(
        dst_parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("opening", dst_parent, e))?;
    if fstatat(&dst_parent_fd, dst_name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
        return Err(MoveError::Exists { path: shown(dst) });
    }
    let mut partial_name = OsString::from(".");
    partial_name.push(dst_name);
    partial_name.push(format!(
        "{PARTIAL_MARK}{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let partial = dst_parent.join(&partial_name);
    mkdirat(
        &dst_parent_fd,
        partial_name.as_os_str(),
        Mode::from_bits_truncate(0o700),
    )
    .map_err(|e| io("creating", &partial, e))?;
    let result = (|| {
        let partial_fd = open_dir_at(&dst_parent_fd, &partial_name, &partial)?;
        let mut copier = Copier {
            limits,
            notes: Vec::new(),
            chown_refused: false,
        };
        copier.copy_tree(&src_fd, src, &partial_fd, &partial)?;
        let st = fstat(&src_fd).map_err(|e| io("reading", src, e))?;
        copier.finish(&partial_fd, &st, &partial)?;
        renameat2(
            &dst_parent_fd,
            partial_name.as_os_str(),
            &dst_parent_fd,
            dst_name,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST | Errno::ENOTEMPTY => MoveError::Exists { path: shown(dst) },
            e => io("renaming", &partial, e),
        })?;
        fsync(&dst_parent_fd).map_err(|e| io("syncing", dst_parent, e))?;
        Ok(copier.notes)
    })();
    let notes = match result {
        Ok(notes) => notes,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    // The copy is complete and durable: only now does the source go.
    // (`remove_dir_all` does not follow symlinks.)
    std::fs::remove_dir_all(src).map_err(|e| io("removing the moved source", src, e))?;
    fsync(&src_parent_fd).map_err(|e| io("syncing", src_parent, e))?;
    Ok(Moved {
        how: How::Copied,
        notes,
    })
}

/// Whether two paths are on the same file system (device).
pub fn same_device(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(a)?.dev() == std::fs::metadata(b)?.dev())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A folder on another file system than the tests' temporary folder.
    fn other_fs() -> tempfile::TempDir {
        let shm = tempfile::tempdir_in("/dev/shm")
            .expect("these tests need /dev/shm (tmpfs) as a second file system");
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            !same_device(shm.path(), tmp.path()).unwrap(),
            "/dev/shm and {} are on the same file system: the cross-file-system test cannot run here",
            tmp.path().display()
        );
        shm
    }

    fn skill(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::write(dir.join("SKILL.md"), "---\nname: x\n---\nbody\n").unwrap();
        std::fs::write(dir.join("scripts/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            dir.join("scripts/run.sh"),
            std::fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        dir
    }

    #[test]
    fn same_file_system_is_one_rename_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let src = skill(tmp.path(), "a");
        let dst = tmp.path().join("q");
        std::fs::create_dir(&dst).unwrap();
        let moved = move_dir(&src, &dst.join("a"), &MoveLimits::default()).unwrap();
        assert_eq!(moved.how, How::Renamed);
        assert!(!src.exists());
        // A clash: nothing replaced, both intact.
        let again = skill(tmp.path(), "a");
        let err = move_dir(&again, &dst.join("a"), &MoveLimits::default()).unwrap_err();
        assert!(matches!(err, MoveError::Exists { .. }), "{err}");
        assert!(again.join("SKILL.md").exists());
        assert!(dst.join("a/scripts/run.sh").exists());
    }

    #[test]
    fn across_file_systems_the_copy_keeps_modes_and_removes_the_source() {
        let shm = other_fs();
        let tmp = tempfile::tempdir().unwrap();
        let src = skill(shm.path(), "a");
        let mtime = std::fs::metadata(src.join("SKILL.md")).unwrap().mtime();
        let dst = tmp.path().join("a");
        let moved = move_dir(&src, &dst, &MoveLimits::default()).unwrap();
        assert_eq!(moved.how, How::Copied);
        assert!(!src.exists(), "the source is removed after the copy");
        let meta = std::fs::metadata(dst.join("scripts/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o751);
        assert_eq!(
            std::fs::metadata(dst.join("SKILL.md")).unwrap().mtime(),
            mtime
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("scripts/run.sh")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        // And back.
        let back = move_dir(&dst, &src, &MoveLimits::default()).unwrap();
        assert_eq!(back.how, How::Copied);
        assert!(src.join("scripts/run.sh").exists());
        assert!(!dst.exists());
        assert!(
            std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
            "no temporary copy left behind"
        );
    }

    #[test]
    fn hostile_contents_do_not_escape_or_hang() {
        let shm = other_fs();
        let tmp = tempfile::tempdir().unwrap();
        let src = skill(shm.path(), "evil");
        std::os::unix::fs::symlink("/etc/shadow", src.join("shadow")).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let dst = tmp.path().join("evil");
        let moved = move_dir(&src, &dst, &MoveLimits::default()).unwrap();
        assert_eq!(moved.how, How::Copied);
        let link = std::fs::symlink_metadata(dst.join("shadow")).unwrap();
        assert!(link.file_type().is_symlink(), "a link is copied as a link");
        assert_eq!(
            std::fs::read_link(dst.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(
            std::fs::symlink_metadata(dst.join("etc"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "a linked folder is not walked"
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::symlink_metadata(dst.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn a_huge_file_is_refused_before_anything_is_written() {
        let shm = other_fs();
        let tmp = tempfile::tempdir().unwrap();
        let src = skill(shm.path(), "big");
        // Sparse: 64 GiB apparent size, no memory used.
        let f = std::fs::File::create(src.join("blob")).unwrap();
        f.set_len(64 << 30).unwrap();
        let dst = tmp.path().join("big");
        let err = move_dir(&src, &dst, &MoveLimits::default()).unwrap_err();
        assert!(matches!(err, MoveError::TooLarge { .. }), "{err}");
        assert!(src.join("SKILL.md").exists(), "the source is intact");
        assert!(!dst.exists());
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_failed_copy_leaves_the_source_intact_and_no_partial() {
        let shm = other_fs();
        let tmp = tempfile::tempdir().unwrap();
        let src = skill(shm.path(), "locked");
        // Unreadable to the daemon unless it is root: make the copy fail midway.
        std::fs::write(src.join("secret"), "x").unwrap();
        std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let is_root = nix::unistd::geteuid().is_root();
        let dst = tmp.path().join("locked");
        let result = move_dir(&src, &dst, &MoveLimits::default());
        if is_root {
            // Root reads it anyway: the move completes (modes kept).
            result.unwrap();
            let mode = std::fs::metadata(dst.join("secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0);
        } else {
            assert!(result.is_err());
            assert!(src.join("SKILL.md").exists());
            assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
        }
        // A partial left by a crash is cleaned.
        let stale = tmp.path().join(format!(".x{PARTIAL_MARK}0011"));
        std::fs::create_dir(&stale).unwrap();
        assert_eq!(clean_partials(tmp.path()), vec![stale]);
    }
}
