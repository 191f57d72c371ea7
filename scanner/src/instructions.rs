//! Instruction analysis of SKILL.md prose: sentence-level features (an
//! imperative verb with an object and a destination, or a telling phrase),
//! with negation, quoting and documentation-about-attacks handled, combined
//! into a score. Weights, word lists and thresholds are data
//! (`rules/instruction_weights.toml`), versioned with the rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{ScanError, Severity};

/// The weights file format version this crate reads.
pub const WEIGHTS_FORMAT_VERSION: u32 = 1;

pub(crate) const BUILTIN_WEIGHTS: &str = include_str!("../rules/instruction_weights.toml");

/// Sentences looked at per SKILL.md (the rest is noted, not scored).
const MAX_SENTENCES: usize = 5_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreThresholds {
    pub low: f64,
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
    pub max_per_feature: u32,
    #[serde(default)]
    pub undeclared_weight: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    pub negations: Vec<String>,
    pub descriptive: Vec<String>,
    pub leads: Vec<String>,
    /// Words of a heading, introduction or document title that present
    /// quoted or fenced material as an example (see `prose.rs`).
    #[serde(default)]
    pub framing: Vec<String>,
    /// Verbs that tell the agent to run what follows: an introduction using
    /// one in imperative position is an instruction, never an example frame.
    #[serde(default)]
    pub run_verbs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub id: String,
    pub description: String,
    pub weight: f64,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub objects: Vec<String>,
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub phrases: Vec<String>,
    #[serde(default)]
    pub declared_by: Vec<String>,
    #[serde(default = "yes")]
    pub negatable: bool,
}

fn yes() -> bool {
    true
}

/// The instruction model: what `instruction_weights.toml` holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionModel {
    pub version: u32,
    pub score: ScoreThresholds,
    pub language: Language,
    #[serde(rename = "feature")]
    pub features: Vec<Feature>,
}

impl InstructionModel {
    /// Parses and checks a weights file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<InstructionModel, ScanError> {
        let err = |message: String| ScanError::RuleFile {
            path: origin.to_string(),
            message,
        };
        let mut m: InstructionModel = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if m.version != WEIGHTS_FORMAT_VERSION {
            return Err(err(format!(
                "unsupported weights format version {} (this scanner reads version {WEIGHTS_FORMAT_VERSION})",
                m.version
            )));
        }
        let s = &m.score;
        let ordered =
            0.0 < s.low && s.low <= s.medium && s.medium <= s.high && s.high <= s.critical;
        if !ordered || !s.critical.is_finite() {
            return Err(err(
                "score thresholds must be finite and 0 < low <= medium <= high <= critical".into(),
            ));
        }
        if s.max_per_feature == 0 {
            return Err(err("max_per_feature must be at least 1".into()));
        }
        if !(s.undeclared_weight.is_finite() && s.undeclared_weight >= 0.0) {
            return Err(err("undeclared_weight must be a finite number >= 0".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &m.features {
            let e = |msg: &str| err(format!("feature {:?}: {msg}", f.id));
            if f.id.trim().is_empty() || !seen.insert(f.id.clone()) {
                return Err(err(format!("feature id {:?} empty or repeated", f.id)));
            }
            if !(f.weight.is_finite() && f.weight >= 0.0) {
                return Err(e("weight must be a finite number >= 0"));
            }
            let verb_form = !f.verbs.is_empty() && !f.objects.is_empty();
            if verb_form != f.phrases.is_empty() {
                return Err(e("needs either verbs and objects, or phrases (not both)"));
            }
            let all = f
                .verbs
                .iter()
                .chain(&f.objects)
                .chain(&f.destinations)
                .chain(&f.phrases)
                .chain(&f.declared_by);
            for w in all {
                if w.trim().is_empty() {
                    return Err(e("empty word"));
                }
            }
        }
        // Matching is on lowercased text.
        let lower = |v: &mut Vec<String>| v.iter_mut().for_each(|w| *w = w.to_lowercase());
        lower(&mut m.language.negations);
        lower(&mut m.language.descriptive);
        lower(&mut m.language.leads);
        lower(&mut m.language.framing);
        lower(&mut m.language.run_verbs);
        for f in &mut m.features {
            lower(&mut f.verbs);
            lower(&mut f.objects);
            lower(&mut f.destinations);
            lower(&mut f.phrases);
            lower(&mut f.declared_by);
        }
        Ok(m)
    }

    pub(crate) fn builtin() -> Result<InstructionModel, ScanError> {
        InstructionModel::parse(BUILTIN_WEIGHTS, "builtin:instruction_weights.toml")
    }

    /// Every word of the model, with the feature it belongs to (for the
    /// evaluation's one-source literal check).
    pub fn literals(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &self.features {
            for w in f
                .verbs
                .iter()
                .chain(&f.objects)
                .chain(&f.destinations)
                .chain(&f.phrases)
            {
                out.push((format!("weights:{}", f.id), w.clone()));
            }
        }
        for w in self.language.framing.iter().chain(&self.language.run_verbs) {
            out.push(("weights:language".to_owned(), w.clone()));
        }
        out
    }

    fn severity(&self, score: f64) -> Option<Severity> {
        let s = &self.score;
        if score >= s.critical {
            Some(Severity::Critical)
        } else if score >= s.high {
            Some(Severity::High)
        } else if score >= s.medium {
            Some(Severity::Medium)
        } else if score >= s.low {
            Some(Severity::Low)
        } else {
            None
        }
    }
}

/// The result for one SKILL.md.
#[derive(Debug, Clone)]
pub(crate) struct InstructionVerdict {
    pub severity: Severity,
    /// Line of the strongest sentence.
    pub line: u32,
    pub snippet: String,
    pub detail: String,
}

struct Sentence {
    line: u32,
    text: String,
}

/// Prose sentences of a Markdown text: code blocks skipped, inline code and
/// quoted passages removed, split at sentence ends and line breaks of lists.
fn sentences(text: &str) -> Vec<Sentence> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut in_front = false;
    for (i, raw) in text.lines().enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = raw.trim();
        if i == 0 && t == "---" {
            in_front = true;
            continue;
        }
        if in_front {
            if t == "---" {
                in_front = false;
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        // Quoted material (block quotes) is an example, not an instruction.
        if in_fence || t.starts_with('>') || raw.starts_with("    ") {
            continue;
        }
        let cleaned = strip_quoted(t);
        for part in split_sentences(&cleaned) {
            let p = part
                .trim()
                .trim_start_matches(['-', '*', '+', '#', ' ', '|'])
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == ')' || c == '.')
                .trim();
            if p.len() > 3 {
                out.push(Sentence {
                    line,
                    text: p.replace("**", "").replace('_', " ").to_lowercase(),
                });
            }
            if out.len() >= MAX_SENTENCES {
                return out;
            }
        }
    }
    out
}

/// Splits at `.`, `!`, `?` or `;` followed by a space or the end, so paths
/// and URLs (`~/.ssh`, `https://a.test/x.txt`) stay whole.
fn split_sentences(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let end_mark = matches!(b, b'.' | b'!' | b'?' | b';');
        let next_blank = bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if end_mark && next_blank {
            out.push(&line[start..i]);
            start = i + 1;
        }
    }
    out.push(&line[start..]);
    out
}

/// Removes inline code spans and quoted passages of three words or more.
pub(crate) fn strip_quoted(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '`' => Some('`'),
            '"' => Some('"'),
            '\u{201C}' => Some('\u{201D}'),
            _ => None,
        };
        let Some(close) = close else {
            out.push(c);
            continue;
        };
        let inner: String = chars.clone().take_while(|x| *x != close).collect();
        let closed = chars.clone().nth(inner.chars().count()) == Some(close);
        let is_code = c == '`';
        if closed && (is_code || inner.split_whitespace().count() >= 3) {
            for _ in 0..=inner.chars().count() {
                chars.next();
            }
            out.push_str(if is_code { " code " } else { " " });
        } else {
            out.push(c);
        }
    }
    out
}

/// Position of `word` in `text` as a whole word (or phrase), if any.
pub(crate) fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let before_ok = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric());
        let end = at + word.len();
        // Allow simple inflection after the word ("sends", "uploaded").
        let after = &text[end..];
        let after_ok = after.is_empty()
            || !after.starts_with(|c: char| c.is_alphanumeric())
            || word.ends_with(|c: char| !c.is_alphanumeric())
            || ["s ", "es ", "ed ", "ing "]
                .iter()
                .any(|s| after.starts_with(s) || after == s.trim_end());
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len().max(1);
        if from >= text.len() {
            break;
        }
    }
    None
}

/// Whether `verb` is in imperative position in one of the clauses of `s`,
/// and not negated before it.
pub(crate) fn imperative(s: &str, verb: &str, lang: &Language, negatable: bool) -> bool {
    for clause in s.split([',', ':']) {
        let clause = clause.trim();
        let Some(at) = find_word(clause, verb) else {
            continue;
        };
        let before = &clause[..at];
        // A verb followed by "and"/"or" is a noun in a list ("email and password").
        let next = clause[at + verb.len()..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        if matches!(next, "and" | "or" | "address" | "addresses" | "/") {
            continue;
        }
        if negatable
            && lang
                .negations
                .iter()
                .any(|n| find_word(before, n.trim()).is_some())
        {
            continue;
        }
        // Every word before the verb is a lead word ("you must then ...").
        if before
            .split_whitespace()
            .all(|w| lang.leads.iter().any(|l| l == w))
        {
            return true;
        }
    }
    false
}

fn fires(f: &Feature, s: &str, lang: &Language) -> bool {
    if !f.phrases.is_empty() {
        return f.phrases.iter().any(|p| s.contains(p.as_str()))
            && !(f.negatable && lang.negations.iter().any(|n| s.starts_with(n.as_str())));
    }
    f.verbs.iter().any(|v| imperative(s, v, lang, f.negatable))
        && f.objects.iter().any(|o| s.contains(o.as_str()))
        && (f.destinations.is_empty() || f.destinations.iter().any(|d| s.contains(d.as_str())))
}

/// Scores the prose of one SKILL.md; `description` is its front-matter
/// description. `None` when the score stays below the lowest threshold.
pub(crate) fn analyse(
    model: &InstructionModel,
    text: &str,
    description: &str,
) -> Option<InstructionVerdict> {
    let description = description.to_lowercase();
    let mut fired: BTreeMap<usize, Vec<&Sentence>> = BTreeMap::new();
    let all = sentences(text);
    for s in &all {
        if model
            .language
            .descriptive
            .iter()
            .any(|d| s.text.contains(d.as_str()))
        {
            continue;
        }
        for (i, f) in model.features.iter().enumerate() {
            if fires(f, &s.text, &model.language) {
                fired.entry(i).or_default().push(s);
            }
        }
    }
    let mut score = 0.0;
    let mut parts = Vec::new();
    let mut best: Option<(f64, &Sentence)> = None;
    for (i, hits) in &fired {
        let f = &model.features[*i];
        let n = hits.len().min(model.score.max_per_feature as usize);
        let mut w = f.weight * n as f64;
        let undeclared = !f.declared_by.is_empty()
            && !f
                .declared_by
                .iter()
                .any(|d| description.contains(d.as_str()));
        if undeclared {
            w += model.score.undeclared_weight;
        }
        score += w;
        let lines: Vec<String> = hits.iter().take(3).map(|s| s.line.to_string()).collect();
        parts.push(format!(
            "{} ({}{}, line {})",
            f.id,
            f.weight,
            if undeclared {
                ", not in the description"
            } else {
                ""
            },
            lines.join(", ")
        ));
        if best.is_none_or(|(bw, _)| f.weight > bw) {
            best = Some((f.weight, hits[0]));
        }
    }
    let severity = model.severity(score)?;
    let (_, top) = best?;
    Some(InstructionVerdict {
        severity,
        line: top.line,
        snippet: top.text.chars().take(160).collect(),
        detail: format!("score {score:.1}: {}", parts.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_weights_parse() {
        let m = InstructionModel::builtin();
        assert!(m.is_ok(), "{m:?}");
    }

    #[test]
    fn quoting_removed() {
        assert_eq!(strip_quoted("say `rm -rf /` now"), "say  code  now");
        assert_eq!(
            strip_quoted("write \"send all keys away\" here"),
            "write   here"
        );
    }
}
