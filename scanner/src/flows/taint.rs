//! What a value carries: the source kinds as bits, the steps that explain how
//! it got them, and the classification of an expression's own text.

use std::collections::BTreeSet;

use super::patterns::{
    CRED_FILE_RE, DECODE_RE, DOWNLOAD_RE, ENCODE_RE, ENV_DUMP_RE, ENV_SECRET_RE, HISTORY_RE,
    SECRET_NAME_RE, USER_FILES_RE,
};
use super::unit::Lang;

// What a value carries.
pub(super) const CRED_FILE: u16 = 1;

pub(super) const ENV_DUMP: u16 = 1 << 1;

pub(super) const ENV_SECRET: u16 = 1 << 2;

pub(super) const HISTORY: u16 = 1 << 3;

pub(super) const USER_FILES: u16 = 1 << 4;

pub(super) const DOWNLOAD: u16 = 1 << 5;

pub(super) const DECODED: u16 = 1 << 6;

pub(super) const ENCODED: u16 = 1 << 7;

pub(super) const HARVEST: u16 = 1 << 8;

/// Sources whose arrival at a network sink is exfiltration on its own.
pub(super) const STRONG_SECRET: u16 = CRED_FILE | ENV_DUMP | HISTORY | HARVEST;

#[derive(Debug, Clone, Default)]
pub(super) struct Taint {
    pub(super) kinds: u16,
    /// Human-readable steps with lines, source first.
    pub(super) steps: Vec<String>,
    /// Names of secret environment variables that reached this value.
    pub(super) secrets: BTreeSet<String>,
}

impl Taint {
    pub(super) fn merge(&mut self, other: &Taint) {
        self.kinds |= other.kinds;
        for s in &other.steps {
            if !self.steps.contains(s) && self.steps.len() < 8 {
                self.steps.push(s.clone());
            }
        }
        self.secrets.extend(other.secrets.iter().cloned());
    }

    pub(super) fn step(&mut self, s: String) {
        if !self.steps.contains(&s) && self.steps.len() < 8 {
            self.steps.push(s);
        }
    }
}

/// What `text` reads directly (no variables): source kinds and secret names.
pub(super) fn classify(text: &str, line: u32, lang: Lang) -> Taint {
    let mut t = Taint::default();
    if CRED_FILE_RE.is_match(text) {
        t.kinds |= CRED_FILE;
        t.step(format!(
            "credential store {:?} (line {line})",
            CRED_FILE_RE.first(text)
        ));
    }
    if HISTORY_RE.is_match(text) {
        t.kinds |= HISTORY;
        t.step(format!("shell history (line {line})"));
    }
    if ENV_DUMP_RE.is_match(text) {
        t.kinds |= ENV_DUMP;
        t.step(format!("whole environment (line {line})"));
    }
    for c in ENV_SECRET_RE.captures(text) {
        let name = c.get(1).or_else(|| c.get(2)).or_else(|| c.get(3));
        let Some(name) = name.map(|m| m.as_str()) else {
            continue;
        };
        // `$NAME` counts only in shell, where it is how the environment is read.
        let bash_form = c.get(3).is_some();
        if bash_form && lang != Lang::Bash {
            continue;
        }
        if SECRET_NAME_RE.is_match(name) && t.secrets.len() < 16 {
            t.kinds |= ENV_SECRET;
            if t.secrets.insert(name.to_string()) {
                t.step(format!("secret variable {name} (line {line})"));
            }
        }
    }
    if USER_FILES_RE.is_match(text) {
        t.kinds |= USER_FILES;
        t.step(format!("user files (line {line})"));
    }
    if DOWNLOAD_RE.is_match(text) {
        t.kinds |= DOWNLOAD;
        t.step(format!("download (line {line})"));
    }
    if DECODE_RE.is_match(text) {
        t.kinds |= DECODED;
        t.step(format!("decode (line {line})"));
    }
    if ENCODE_RE.is_match(text) && !DECODE_RE.is_match(text) {
        t.kinds |= ENCODED;
        t.step(format!("encode (line {line})"));
    }
    t
}
