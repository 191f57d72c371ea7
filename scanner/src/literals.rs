//! Required literals of a pattern: a set of strings one of which every
//! match contains. They feed the Aho-Corasick prefilter.

use regex_syntax::hir::{Hir, HirKind};

/// Shortest literal worth prefiltering on.
const MIN_LEN: usize = 2;
/// More alternatives than this make a poor prefilter.
const MAX_LITERALS: usize = 64;

/// Literals (lowercased, matched ASCII-case-insensitively) one of which
/// must occur in any match of `source`; `None` when there is no such set.
pub(crate) fn required_literals(source: &str) -> Option<Vec<Vec<u8>>> {
    // Case-insensitive flags turn literals into classes; the prefilter is
    // case-insensitive anyway, so parse with the flag removed.
    let src = source.replacen("(?mi)", "(?m)", 1);
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(&src)
        .ok()?;
    let lits = required(&hir)?;
    let ok =
        !lits.is_empty() && lits.len() <= MAX_LITERALS && lits.iter().all(|l| l.len() >= MIN_LEN);
    ok.then(|| lits.into_iter().map(|l| l.to_ascii_lowercase()).collect())
}

fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(lit) => Some(vec![lit.0.to_vec()]),
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => required(&r.sub),
        HirKind::Concat(children) => children
            .iter()
            .filter_map(required)
            .filter(|s| s.len() <= MAX_LITERALS)
            .max_by_key(|s| {
                let shortest = s.iter().map(Vec::len).min().unwrap_or(0);
                (shortest.min(8), usize::MAX - s.len())
            }),
        HirKind::Alternation(children) => {
            let mut all = Vec::new();
            for c in children {
                all.extend(required(c)?);
            }
            Some(all)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts() {
        let l = required_literals(r"(?mi)\b(?:curl|wget)\b[^\n|;]*\|\s*sh\b").unwrap_or_default();
        assert!(
            l.contains(&b"curl".to_vec()) && l.contains(&b"wget".to_vec()),
            "{l:?}"
        );
        assert!(required_literals(r"(?m)[A-Z]{16}").is_none());
        let l =
            required_literals(r"(?m)-----BEGIN (?:RSA |EC )?PRIVATE KEY-----").unwrap_or_default();
        assert!(!l.is_empty());
    }
}
