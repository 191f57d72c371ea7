//! The `file` sink: JSON lines appended to a file, flushed to disk before a
//! batch counts as delivered, rotated by size (`<file>.1` newest).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A JSON-lines file with size-based rotation.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
}

impl FileSink {
    /// A sink writing to `path`.
    pub fn new(path: PathBuf, max_bytes: u64, keep: u32) -> Self {
        Self {
            path,
            max_bytes,
            keep,
        }
    }

    /// Appends `lines` (each one JSON object, no newline) and syncs them.
    /// Blocking: run off the async workers.
    pub fn write(&self, lines: &[String]) -> Result<(), String> {
        let size: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let current = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if current > 0 && current + size > self.max_bytes {
            self.rotate()?;
        }
        let mut file = open_append(&self.path)?;
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        file.write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }

    fn rotate(&self) -> Result<(), String> {
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))
                    .map_err(|e| format!("rotating {}: {e}", from.display()))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
            .map_err(|e| format!("rotating {}: {e}", self.path.display()))
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = FileSink::new(path.clone(), 4096, 2);
        let line = "x".repeat(1500);
        for _ in 0..8 {
            sink.write(std::slice::from_ref(&line)).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }
}
