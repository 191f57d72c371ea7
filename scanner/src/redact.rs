//! Snippets for findings: short, one line, secrets masked.

use std::sync::LazyLock;

use regex::Regex;

static SECRET_SHAPES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"AKIA[0-9A-Z]{16}",
        r"gh[pousr]_[A-Za-z0-9]{20,}",
        r"github_pat_[A-Za-z0-9_]{20,}",
        r"xox[abposr]-[A-Za-z0-9-]{8,}",
        r"sk-ant-[A-Za-z0-9_-]{8,}",
        r"sk-(?:proj-)?[A-Za-z0-9_-]{16,}",
        r"[sr]k_(?:live|test)_[A-Za-z0-9]{8,}",
        r"AIza[0-9A-Za-z_-]{20,}",
        r"SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
        r"npm_[A-Za-z0-9]{20,}",
        r"glpat-[A-Za-z0-9_-]{16,}",
        r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        r"hooks\.slack\.com/services/[A-Za-z0-9/]+",
        r"discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+",
    ]
    .iter()
    .filter_map(|p| Regex::new(p).ok())
    .collect()
});

// `token = "value"`, `PASSWORD: value`, `--api-key=value`, `Bearer value`.
static ASSIGNED_SECRET: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)((?:api[_-]?key|secret|token|passw(?:or)?d|pwd|auth|credential|private[_-]?key)[A-Za-z0-9_-]*["']?\s*(?:[:=]|\s)\s*["']?|bearer\s+|basic\s+)([^\s"'$<{][^\s"',;}]{5,})"#,
    )
    .ok()
});

static PRIVATE_KEY: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*").ok());

fn mask(s: &str) -> String {
    let keep: String = s.chars().take(4).collect();
    format!("{keep}****")
}

/// Masks well-known token formats and assigned secret values.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(re) = PRIVATE_KEY.as_ref() {
        out = re
            .replace_all(&out, "-----BEGIN PRIVATE KEY----- ****")
            .into_owned();
    }
    for re in SECRET_SHAPES.iter() {
        out = re
            .replace_all(&out, |c: &regex::Captures<'_>| mask(&c[0]))
            .into_owned();
    }
    if let Some(re) = ASSIGNED_SECRET.as_ref() {
        out = re
            .replace_all(&out, |c: &regex::Captures<'_>| {
                let value = &c[2];
                if value.contains("****") {
                    format!("{}{}", &c[1], value)
                } else {
                    format!("{}{}", &c[1], mask(value))
                }
            })
            .into_owned();
    }
    out
}

/// The line around a match, at most `max` characters, redacted.
pub fn snippet(text: &str, start: usize, end: usize, max: usize) -> String {
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let line = text[line_start..line_end].trim();
    let line = if line.chars().count() > max {
        // Keep the match in view: start a little before it.
        let rel = start.saturating_sub(line_start);
        let lead: String = text[line_start..line_start + rel]
            .chars()
            .rev()
            .take(max / 4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let rest: String = text[line_start + rel..line_end]
            .chars()
            .take(max.saturating_sub(lead.chars().count()))
            .collect();
        format!("…{}{}…", lead, rest)
    } else {
        line.to_string()
    };
    redact(&clean_invisible(&line))
}

/// Makes invisible and bidi characters visible as `<U+XXXX>` so a snippet
/// cannot itself hide text.
pub fn clean_invisible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = 0usize;
    for ch in s.chars() {
        let c = ch as u32;
        let invisible = matches!(c, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x2069 | 0xFEFF | 0xE0000..=0xE007F);
        if invisible {
            run += 1;
            if run <= 3 {
                out.push_str(&format!("<U+{c:04X}>"));
            } else if run == 4 {
                out.push('…');
            }
        } else {
            run = 0;
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_known_tokens() {
        let s = redact("key = ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        assert!(!s.contains("abcdefghijklmnop"), "{s}");
        let s = redact(r#"API_KEY="hunter2hunter2""#);
        assert!(!s.contains("hunter2hunter2"), "{s}");
    }
}
