//! Reads a target tree once, within bounds, without following symlinks out
//! of the root.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::ScanError;
use crate::rules::FileType;

/// Bounds on what one scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read from one file; the rest is not scanned (noted).
    pub max_file_bytes: u64,
    /// Files read per target; later files are skipped (noted).
    pub max_files: usize,
    /// Directory depth below the target root.
    pub max_depth: usize,
    /// Bytes read per target across all files.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 20,
            max_files: 2000,
            max_depth: 12,
            max_total_bytes: 32 << 20,
        }
    }
}

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
}

fn rel_of(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// Walks `root` and reads every text file once, within `limits`.
pub(crate) fn load_tree(root: &Path, limits: &Limits) -> Result<Loaded, ScanError> {
    let meta = std::fs::metadata(root).map_err(|e| ScanError::io(root, e))?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory {
            path: root.display().to_string(),
        });
    }
    let canon_root = std::fs::canonicalize(root).map_err(|e| ScanError::io(root, e))?;
    let mut out = Loaded::default();
    let mut total: u64 = 0;
    let mut count_limit_noted = false;
    let mut walker = walkdir::WalkDir::new(&canon_root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.notes.push(format!("unreadable entry skipped: {e}"));
                continue;
            }
        };
        let path = entry.path().to_path_buf();
        let rel = rel_of(&canon_root, &path);
        let ft = entry.file_type();
        if ft.is_dir() {
            if entry.depth() > 0 && entry.file_name() == ".git" {
                out.notes.push(format!("{rel}: git metadata not scanned"));
                walker.skip_current_dir();
                continue;
            }
            if entry.depth() >= limits.max_depth {
                out.notes.push(format!(
                    "{rel}: deeper than {} levels, not scanned",
                    limits.max_depth
                ));
                walker.skip_current_dir();
            }
            continue;
        }
        let real: PathBuf = if ft.is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(target) if target.starts_with(&canon_root) => {
                    if target.is_file() {
                        target
                    } else {
                        out.notes.push(format!(
                            "{rel}: symlink to a directory inside the target, not followed"
                        ));
                        continue;
                    }
                }
                Ok(target) => {
                    out.notes.push(format!(
                        "{rel}: symlink points outside the target ({}), not followed",
                        target.display()
                    ));
                    out.escapes.push((rel, target.display().to_string()));
                    continue;
                }
                Err(_) => {
                    let target = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    out.notes.push(format!(
                        "{rel}: dangling symlink to {target:?}, not followed"
                    ));
                    if Path::new(&target).is_absolute() || target.contains("..") {
                        out.escapes.push((rel, target));
                    }
                    continue;
                }
            }
        } else if ft.is_file() {
            path.clone()
        } else {
            out.notes
                .push(format!("{rel}: not a regular file, skipped"));
            continue;
        };
        if out.files.len() >= limits.max_files {
            if !count_limit_noted {
                out.notes.push(format!(
                    "more than {} files: the rest were not scanned",
                    limits.max_files
                ));
                count_limit_noted = true;
            }
            continue;
        }
        if total >= limits.max_total_bytes {
            out.notes.push(format!(
                "{rel}: not scanned, target exceeds {} bytes in total",
                limits.max_total_bytes
            ));
            continue;
        }
        let budget = limits.max_file_bytes.min(limits.max_total_bytes - total);
        let mut buf = Vec::new();
        let read = File::open(&real).and_then(|f| f.take(budget + 1).read_to_end(&mut buf));
        if let Err(e) = read {
            out.notes.push(format!("{rel}: unreadable ({e})"));
            continue;
        }
        if buf.len() as u64 > budget {
            buf.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
            out.notes.push(format!(
                "{rel}: larger than {budget} bytes, only the first {budget} scanned"
            ));
        }
        total += buf.len() as u64;
        if is_binary(&buf) {
            out.notes.push(format!("{rel}: binary file, not scanned"));
            continue;
        }
        let file_type = FileType::detect(Path::new(&rel), &buf);
        let text = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        out.files.push(LoadedFile {
            rel,
            file_type,
            text,
        });
    }
    Ok(out)
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
