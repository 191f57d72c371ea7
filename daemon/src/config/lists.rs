//! Serde helpers for list-valued settings: a TOML array, or one environment
//! string split on a separator. A leaf, so every settings type can use them.

use std::path::PathBuf;

use serde::Deserialize;

/// A list from TOML (`["a", "b"]`), or one string from the environment split
/// on `separators` (`"a,b"`).
fn split_list<'de, D: serde::Deserializer<'de>>(
    d: D,
    separators: &[char],
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(separators)
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// A list of strings; from the environment, comma-separated.
pub fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    split_list(d, &[','])
}

/// A list of words (scope names); from the environment, separated by commas or spaces.
pub fn word_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    split_list(d, &[',', ' '])
}

/// A list of entries that may themselves hold commas; from the environment,
/// separated by semicolons.
pub fn entry_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    split_list(d, &[';'])
}

/// A list of paths; from the environment, comma-separated.
pub fn path_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    string_list(d).map(|v| v.into_iter().map(PathBuf::from).collect())
}
