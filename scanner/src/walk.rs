//! Reads a target tree once, within bounds, without ever following a symlink.
//!
//! How, and why it is race-free (a hostile skill folder can change while it
//! is scanned):
//! - The root is opened once with `O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK`.
//!   A root that is itself a symlink is refused (the CLI resolves the path
//!   its user typed before it asks the daemon); the components above the root
//!   are the caller's.
//! - Below the root nothing is opened by path. Each directory is opened with
//!   `openat(parent_fd, name, O_DIRECTORY | O_NOFOLLOW)`, each file with
//!   `openat(parent_fd, name, O_NOFOLLOW | O_NONBLOCK)`: a component swapped
//!   for a symlink after it was listed makes that open fail (`ELOOP` /
//!   `ENOTDIR`) and is noted, never followed. There is no check-then-open:
//!   what counts is `fstat` of the opened descriptor.
//! - A file is read only when that `fstat` says regular file, and at most
//!   min(its size, the limits) bytes. FIFOs, sockets and devices are noted
//!   and skipped; `O_NONBLOCK` means even opening a FIFO cannot hang.
//! - A symlink in the tree is read with `readlinkat` and resolved lexically.
//!   A link leading out of the root is reported (`symlink_escape`); a link to a
//!   file inside is reopened from the root descriptor, component by component,
//!   with the same no-follow opens (a link through another link is not followed).
//! - The walk stays on the root's file system and stops at its limits (files,
//!   total bytes, entries examined, time budget; a too-deep folder is skipped).
//!   Every stop sets `incomplete` with a note; the engine turns it into a HIGH
//!   finding so a truncated scan never looks clean.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::model::{ScanError, shown};
use crate::rules::FileType;

/// Bounds on what one scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from one file; the rest is not scanned (noted).
    pub max_file_bytes: u64,
    /// Files read per target; the walk stops there (incomplete).
    pub max_files: usize,
    /// Directory depth below the target root; deeper folders are skipped (incomplete).
    pub max_depth: usize,
    /// Bytes read per target across all files; the walk stops there (incomplete).
    pub max_total_bytes: u64,
    /// Directory entries examined per target, of any kind; the walk stops there (incomplete).
    pub max_entries: usize,
    /// Wall-clock budget of one walk, checked between entries; the walk
    /// stops there (incomplete). `None`: no budget.
    pub time_budget: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 20,
            max_files: 2000,
            max_depth: 12,
            max_total_bytes: 32 << 20,
            max_entries: 20_000,
            time_budget: None,
        }
    }
}

/// Notes kept per target; the rest are counted in one last note.
const MAX_NOTES: usize = 200;

#[derive(Debug)]
pub(crate) struct LoadedFile {
    /// Path relative to the root, with `/` separators.
    pub rel: String,
    pub file_type: FileType,
    pub text: String,
}

#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub files: Vec<LoadedFile>,
    pub notes: Vec<String>,
    /// Symlinks whose target lies outside the root (or is dangling): (link, target).
    pub escapes: Vec<(String, String)>,
    /// Why the walk did not read the whole tree (a limit it stopped at).
    pub incomplete: Option<String>,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

fn file_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

/// What a mode says the file is, for messages.
pub(crate) fn kind_of(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symbolic link",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == kind
}

/// What `path` is, without following a final symlink, when it is not `want`.
fn other_kind(path: &Path, want: SFlag) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::symlink_metadata(path).ok()?.mode();
    let kind = kind_of(mode);
    match kind {
        _ if SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == want => None,
        "symbolic link" if want == SFlag::S_IFDIR => {
            Some("symbolic link (not followed; name the folder it points to)")
        }
        "symbolic link" => Some("symbolic link (not followed; name the file it points to)"),
        other => Some(other),
    }
}

/// Opens a regular file named by a caller without blocking and without
/// following a final symlink, and checks it on the descriptor: regular and
/// at most `max` bytes. Nothing is read yet. A path that is plainly not a
/// regular file (a device, a FIFO, a socket) is refused before it is opened;
/// the descriptor's `fstat` stays the check that counts.
pub(crate) fn open_regular(path: &Path, max: u64) -> Result<(File, u64), ScanError> {
    let wrong = |found| ScanError::WrongFileType {
        path: shown(path),
        found,
        expected: "regular file",
    };
    if let Some(found) = other_kind(path, SFlag::S_IFREG) {
        return Err(wrong(found));
    }
    let fd = nix::fcntl::open(path, file_flags(), Mode::empty()).map_err(|e| {
        other_kind(path, SFlag::S_IFREG)
            .map_or_else(|| ScanError::io(path, std::io::Error::from(e)), wrong)
    })?;
    let st = fstat(&fd).map_err(|e| ScanError::io(path, e.into()))?;
    if !is(&st, SFlag::S_IFREG) {
        return Err(wrong(kind_of(st.st_mode)));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max {
        return Err(ScanError::TooLarge {
            path: shown(path),
            size,
            max,
        });
    }
    Ok((File::from(fd), size))
}

/// Opens a skill folder named by a caller: a directory, not a symlink, opened
/// without blocking. Nothing below it is touched yet.
pub(crate) fn open_root(root: &Path) -> Result<Dir, ScanError> {
    let fd = nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(|e| {
        other_kind(root, SFlag::S_IFDIR).map_or_else(
            || ScanError::io(root, std::io::Error::from(e)),
            |found| ScanError::WrongFileType {
                path: shown(root),
                found,
                expected: "directory",
            },
        )
    })?;
    Dir::from_fd(fd).map_err(|e| ScanError::io(root, e.into()))
}

/// Walks `root` and reads every text file once, within `limits`.
pub(crate) fn load_tree(root: &Path, limits: &Limits) -> Result<Loaded, ScanError> {
    let mut dir = open_root(root)?;
    let st = fstat(dir.as_fd()).map_err(|e| ScanError::io(root, e.into()))?;
    let root_fd = dir
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| ScanError::io(root, e))?;
    // The real path of what was opened, to place absolute link targets.
    let root_real = std::fs::read_link(format!("/proc/self/fd/{}", root_fd.as_raw_fd()))
        .or_else(|_| std::fs::canonicalize(root))
        .unwrap_or_else(|_| root.to_path_buf());
    let mut walker = Walker {
        limits,
        root_fd,
        root_real,
        root_dev: st.st_dev,
        out: Loaded::default(),
        total: 0,
        files_read: 0,
        entries: 0,
        deadline: limits.time_budget.map(|b| Instant::now() + b),
        omitted_notes: 0,
        halted: false,
    };
    walker.walk_dir(&mut dir, "", 0);
    let mut out = walker.out;
    if walker.omitted_notes > 0 {
        out.notes
            .push(format!("{} more notes not shown", walker.omitted_notes));
    }
    Ok(out)
}

struct Walker<'a> {
    limits: &'a Limits,
    root_fd: OwnedFd,
    root_real: PathBuf,
    root_dev: u64,
    out: Loaded,
    total: u64,
    files_read: usize,
    entries: usize,
    deadline: Option<Instant>,
    omitted_notes: usize,
    /// A limit ended the walk.
    halted: bool,
}

fn join(parent: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if parent.is_empty() {
        name.into_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl Walker<'_> {
    fn note(&mut self, note: String) {
        if self.out.notes.len() < MAX_NOTES {
            self.out.notes.push(note);
        } else {
            self.omitted_notes += 1;
        }
    }

    /// Ends the walk: the note is always kept and names the limit.
    fn stop(&mut self, why: String) {
        if self.halted {
            return;
        }
        self.halted = true;
        self.out.notes.push(why.clone());
        self.out.incomplete = Some(why);
    }

    /// A part of the tree was skipped: the scan is incomplete, the walk goes on.
    fn skip(&mut self, why: String) {
        if self.out.incomplete.is_none() {
            self.out.incomplete = Some(why.clone());
        }
        self.note(why);
    }

    fn out_of_time(&mut self) -> bool {
        if let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            let secs = self.limits.time_budget.unwrap_or_default().as_secs_f64();
            self.stop(format!(
                "stopped at the {secs} s time budget: the rest of the target was not scanned"
            ));
            return true;
        }
        false
    }

    fn walk_dir(&mut self, dir: &mut Dir, rel: &str, depth: usize) {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in dir.iter() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.note(format!("{rel}: unreadable folder entry skipped ({e})"));
                    break;
                }
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if self.entries >= self.limits.max_entries {
                self.stop(format!(
                    "stopped at the {}-entry limit: the rest of the target was not scanned",
                    self.limits.max_entries
                ));
                break;
            }
            self.entries += 1;
            names.push(name.to_vec());
        }
        names.sort();
        for name in names {
            if self.halted || self.out_of_time() {
                return;
            }
            let child = join(rel, &name);
            let st = match fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(e) => {
                    self.note(format!("{child}: unreadable entry skipped ({e})"));
                    continue;
                }
            };
            if is(&st, SFlag::S_IFDIR) {
                self.enter(dir.as_fd(), &name, &child, depth + 1, &st);
            } else if is(&st, SFlag::S_IFLNK) {
                self.symlink(dir.as_fd(), &name, &child, rel);
            } else if is(&st, SFlag::S_IFREG) {
                match openat(dir.as_fd(), name.as_slice(), file_flags(), Mode::empty()) {
                    Ok(fd) => self.read(fd, child),
                    Err(Errno::ELOOP) => self.note(format!(
                        "{child}: became a symlink while scanned, not followed"
                    )),
                    Err(e) => self.note(format!("{child}: unreadable ({e})")),
                }
            } else {
                let kind = kind_of(st.st_mode);
                self.note(format!("{child}: not a regular file ({kind}), skipped"));
            }
        }
    }

    fn enter(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        rel: &str,
        depth: usize,
        st: &FileStat,
    ) {
        if name == b".git" {
            self.note(format!("{rel}: git metadata not scanned"));
            return;
        }
        if depth >= self.limits.max_depth {
            self.skip(format!(
                "{rel}: deeper than {} levels, not scanned",
                self.limits.max_depth
            ));
            return;
        }
        if st.st_dev != self.root_dev {
            self.skip(format!(
                "{rel}: another file system (mount point), not scanned"
            ));
            return;
        }
        let mut child =
            match openat(parent, name, dir_flags(), Mode::empty()).and_then(Dir::from_fd) {
                Ok(d) => d,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    self.note(format!(
                        "{rel}: stopped being a folder while scanned, not followed"
                    ));
                    return;
                }
                Err(e) => {
                    self.note(format!("{rel}: unreadable folder ({e})"));
                    return;
                }
            };
        self.walk_dir(&mut child, rel, depth);
    }

    /// A symlink at `rel` (in the folder `parent_rel`).
    fn symlink(&mut self, parent: BorrowedFd<'_>, name: &[u8], rel: &str, parent_rel: &str) {
        let target = match readlinkat(parent, name) {
            Ok(t) => PathBuf::from(t),
            Err(e) => {
                self.note(format!("{rel}: unreadable symlink ({e})"));
                return;
            }
        };
        let shown_target = target.display().to_string();
        let Some(parts) = self.beneath_root(&target, parent_rel) else {
            // Out of the root: only say whether it exists (never opened).
            let abs = if target.is_absolute() {
                target.clone()
            } else {
                self.root_real.join(parent_rel).join(&target)
            };
            if std::fs::symlink_metadata(&abs).is_ok() {
                self.note(format!(
                    "{rel}: symlink points outside the target ({shown_target}), not followed"
                ));
            } else {
                self.note(format!(
                    "{rel}: dangling symlink to {shown_target:?}, not followed"
                ));
            }
            self.out.escapes.push((rel.to_owned(), shown_target));
            return;
        };
        match self.open_beneath(&parts) {
            Ok(fd) => match fstat(&fd) {
                Ok(st) if is(&st, SFlag::S_IFDIR) => self.note(format!(
                    "{rel}: symlink to a directory inside the target, not followed"
                )),
                Ok(_) => self.read(fd, rel.to_owned()),
                Err(e) => self.note(format!("{rel}: unreadable ({e})")),
            },
            Err(Errno::ENOENT) => self.note(format!(
                "{rel}: dangling symlink to {shown_target:?}, not followed"
            )),
            Err(Errno::ELOOP | Errno::ENOTDIR) => self.note(format!(
                "{rel}: symlink through another symlink ({shown_target}), not followed"
            )),
            Err(e) => self.note(format!("{rel}: unreadable symlink target ({e})")),
        }
    }

    /// The components of a link target relative to the root, or `None` when
    /// it leads out of the root (lexically: nothing is resolved on disk).
    fn beneath_root(&self, target: &Path, parent_rel: &str) -> Option<Vec<OsString>> {
        let mut parts: Vec<OsString> = Vec::new();
        let rest = if target.is_absolute() {
            target.strip_prefix(&self.root_real).ok()?
        } else {
            parts.extend(
                Path::new(parent_rel)
                    .components()
                    .map(|c| c.as_os_str().to_owned()),
            );
            target
        };
        for c in rest.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_owned()),
                Component::CurDir => {}
                Component::ParentDir => {
                    parts.pop()?;
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        (!parts.is_empty()).then_some(parts)
    }

    /// Opens `parts` below the root without following any symlink.
    fn open_beneath(&self, parts: &[OsString]) -> nix::Result<OwnedFd> {
        let (last, dirs) = parts.split_last().ok_or(Errno::ENOENT)?;
        let mut held: Option<OwnedFd> = None;
        for d in dirs {
            let parent = held.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
            let next = openat(parent, d.as_os_str(), dir_flags(), Mode::empty())?;
            held = Some(next);
        }
        let parent = held.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
        openat(parent, last.as_os_str(), file_flags(), Mode::empty())
    }

    /// Reads an opened file when its descriptor says it is a regular file.
    fn read(&mut self, fd: OwnedFd, rel: String) {
        let st = match fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                self.note(format!("{rel}: unreadable ({e})"));
                return;
            }
        };
        if !is(&st, SFlag::S_IFREG) {
            let kind = kind_of(st.st_mode);
            self.note(format!("{rel}: not a regular file ({kind}), skipped"));
            return;
        }
        if self.files_read >= self.limits.max_files {
            self.stop(format!(
                "more than {} files: stopped at the {}-file limit, the rest of the target was not scanned",
                self.limits.max_files, self.limits.max_files
            ));
            return;
        }
        if self.total >= self.limits.max_total_bytes {
            self.stop(format!(
                "stopped at the {}-byte limit: {rel} and the rest of the target were not scanned",
                self.limits.max_total_bytes
            ));
            return;
        }
        self.files_read += 1;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let budget = self
            .limits
            .max_file_bytes
            .min(self.limits.max_total_bytes - self.total);
        let mut buf = Vec::new();
        // Bounded by the size seen on the descriptor and by the limits.
        if let Err(e) = File::from(fd).take(size.min(budget)).read_to_end(&mut buf) {
            self.note(format!("{rel}: unreadable ({e})"));
            return;
        }
        if size > budget {
            self.note(format!(
                "{rel}: larger than {budget} bytes, only the first {budget} scanned"
            ));
            if budget < self.limits.max_file_bytes {
                // Cut by the total, not the per-file limit: the walk ends here.
                self.stop(format!(
                    "stopped at the {}-byte limit: the rest of {rel} and of the target were not scanned",
                    self.limits.max_total_bytes
                ));
            }
        }
        self.total += buf.len() as u64;
        if is_binary(&buf) {
            self.note(format!("{rel}: binary file, not scanned"));
            return;
        }
        let file_type = FileType::detect(Path::new(&rel), &buf);
        let text = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.out.files.push(LoadedFile {
            rel,
            file_type,
            text,
        });
    }
}

/// NUL bytes, or mostly control bytes, in the first 8 KiB.
pub(crate) fn is_binary(buf: &[u8]) -> bool {
    let head = &buf[..buf.len().min(8192)];
    if head.contains(&0) {
        return true;
    }
    if head.is_empty() {
        return false;
    }
    if std::str::from_utf8(head).is_ok() {
        return false;
    }
    let odd = head
        .iter()
        .filter(|b| (**b < 0x20 && !matches!(**b, b'\n' | b'\r' | b'\t' | 0x0c)) || **b == 0x7f)
        .count();
    // Invalid UTF-8 with many control bytes is binary; a few stray bytes in
    // otherwise readable text are decoded lossily instead.
    odd * 10 > head.len()
}
