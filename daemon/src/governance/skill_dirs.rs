//! Where the daemon knows skills to be: the watched directories (configured,
//! plus OpenClaw's skill directories once it reports them) and each skill
//! folder OpenClaw reported. Quarantine only ever moves a folder found here,
//! never an arbitrary path a caller names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// At most this many skill folders are remembered from OpenClaw's reports.
pub const MAX_REPORTED: usize = 4096;

/// The known skill roots and reported skill folders; shared, cheap to read.
#[derive(Debug, Default)]
pub struct KnownSkills {
    roots: Mutex<Vec<PathBuf>>,
    reported: Mutex<BTreeMap<String, PathBuf>>,
}

/// Why a skill's folder could not be found.
#[derive(Debug)]
pub enum Located {
    /// Exactly one folder.
    One(PathBuf),
    /// None known.
    None,
    /// Several: the caller must name the path.
    Several(Vec<PathBuf>),
}

impl KnownSkills {
    /// Starts with the configured watch roots.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots: Mutex::new(roots),
            reported: Mutex::default(),
        }
    }

    /// Adds a root (a folder whose children are skills); false when already known.
    pub fn add_root(&self, root: PathBuf) -> bool {
        let mut roots = self.roots.lock().unwrap_or_else(PoisonError::into_inner);
        if roots.contains(&root) {
            return false;
        }
        roots.push(root);
        true
    }

    /// The roots.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the skill folders OpenClaw reports (name → folder).
    pub fn set_reported(&self, skills: BTreeMap<String, PathBuf>) {
        *self.reported.lock().unwrap_or_else(PoisonError::into_inner) =
            skills.into_iter().take(MAX_REPORTED).collect();
    }

    /// Whether `dir` is a skill folder the daemon knows: reported by OpenClaw,
    /// or a direct child of a root.
    pub fn is_known(&self, dir: &Path) -> bool {
        if self
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|p| p == dir)
        {
            return true;
        }
        dir.parent()
            .is_some_and(|parent| self.roots().iter().any(|r| r == parent))
    }

    /// The folders a skill called `name` may be in (folder named `name`).
    pub fn locate(&self, name: &str) -> Located {
        let mut found: Vec<PathBuf> = Vec::new();
        if let Some(p) = self
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            && p.file_name().is_some_and(|f| f == name)
        {
            found.push(p.clone());
        }
        for root in self.roots() {
            let p = root.join(name);
            let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            if is_dir && !found.contains(&p) {
                found.push(p);
            }
        }
        match found.len() {
            0 => Located::None,
            1 => Located::One(found.remove(0)),
            _ => Located::Several(found),
        }
    }
}
