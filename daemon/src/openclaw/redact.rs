//! Tool arguments in audit entries: a SHA-256 hash plus a short redacted preview.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest preview kept in an audit entry (characters).
pub(crate) const PREVIEW_CHARS: usize = 120;

const SECRET_KEY_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api_key",
    "api-key",
    "authorization",
    "auth",
    "cookie",
    "credential",
    "private",
    "session_key_secret",
];

static SECRET_VALUE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(bearer\s+[a-z0-9._~+/=-]{8,})",
        r"|((?:token|secret|password|passwd|api[_-]?key|authorization)\s*[=:]\s*(?:bearer\s+|basic\s+)?\S+)",
        r"|(sk-[a-z0-9_-]{12,})|(gh[pousr]_[a-z0-9]{20,})|(xox[abpr]-[a-z0-9-]{10,})|(akia[0-9a-z]{16})",
        r"|(-----begin [a-z ]*private key-----)",
        r"|([a-z0-9+/_=-]{40,})"
    ))
    .ok()
});

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_KEY_WORDS.iter().any(|w| k.contains(w))
}

fn redact_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    if is_secret_key(k) {
                        (k.clone(), Value::String("***".into()))
                    } else {
                        (k.clone(), redact_value(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().take(16).map(redact_value).collect()),
        Value::String(s) if s.len() > 512 => Value::String(redact_text(&s[..floor_char(s, 512)])),
        Value::String(s) => Value::String(redact_text(s)),
        other => other.clone(),
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces secret-looking substrings by `***`.
pub(crate) fn redact_text(s: &str) -> String {
    match SECRET_VALUE.as_ref() {
        Some(re) => re.replace_all(s, "***").into_owned(),
        None => "***".to_owned(),
    }
}

/// `(sha256 hex of the JSON args, redacted preview ≤ 120 chars)`.
pub(crate) fn hash_and_preview(args: &Value) -> (String, String) {
    let raw = serde_json::to_vec(args).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(&raw));
    let redacted = serde_json::to_string(&redact_value(args)).unwrap_or_default();
    (hash, truncate(&redacted, PREVIEW_CHARS))
}

/// Truncates to `max` characters, appending `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_from_previews() {
        let args = json!({
            "command": "curl -H 'Authorization: Bearer abcdefghijklmnop' https://x",
            "apiKey": "sk-live-1234567890abcdef",
            "env": {"GITHUB_TOKEN": "ghp_aaaaaaaaaaaaaaaaaaaaaaaa"},
            "note": "password=hunter2 ok",
        });
        let (hash, preview) = hash_and_preview(&args);
        assert_eq!(hash.len(), 64);
        for secret in ["abcdefghijklmnop", "sk-live", "ghp_", "hunter2"] {
            assert!(!preview.contains(secret), "{secret} leaked in {preview}");
        }
        assert!(preview.chars().count() <= PREVIEW_CHARS + 1);
    }

    #[test]
    fn hash_is_stable() {
        let a = json!({"command": "ls"});
        assert_eq!(hash_and_preview(&a).0, hash_and_preview(&a.clone()).0);
    }
}
