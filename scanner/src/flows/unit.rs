//! Code units: what gets parsed (scripts by file type, fenced blocks of
//! Markdown by their tag), and the bounded tree-sitter parse of one unit.

use std::time::{Duration, Instant};

use tree_sitter::{ParseOptions, Parser};

use crate::rules::FileType;

/// Larger files (or code blocks) are not parsed; line rules still run.
pub(crate) const MAX_PARSE_BYTES: usize = 512 << 10;

/// Wall-clock budget of one parse.
const PARSE_BUDGET: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Python,
    JavaScript,
    Bash,
}

impl Lang {
    pub(super) fn of_file(t: FileType) -> Option<Lang> {
        match t {
            FileType::Python => Some(Lang::Python),
            FileType::Javascript => Some(Lang::JavaScript),
            FileType::Shell => Some(Lang::Bash),
            _ => None,
        }
    }

    pub(super) fn of_fence(tag: &str) -> Option<Lang> {
        let tag = tag
            .trim()
            .trim_start_matches('{')
            .split([' ', ',', '}'])
            .next()
            .unwrap_or("")
            .trim_start_matches('.')
            .to_ascii_lowercase();
        match tag.as_str() {
            "python" | "py" | "python3" | "ipython" => Some(Lang::Python),
            "js" | "javascript" | "node" | "nodejs" | "ts" | "typescript" | "mjs" | "jsx"
            | "tsx" => Some(Lang::JavaScript),
            "bash" | "sh" | "shell" | "zsh" | "console" | "shell-session" | "terminal" => {
                Some(Lang::Bash)
            }
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Lang::Python => "Python",
            Lang::JavaScript => "JavaScript",
            Lang::Bash => "Bash",
        }
    }
}

/// One parsed piece of code with where its lines start.
pub(super) struct CodeUnit<'a> {
    pub(super) location: &'a str,
    pub(super) lang: Lang,
    pub(super) text: &'a str,
    pub(super) first_line: u32,
    /// Units with the same scope share variables (blocks of one Markdown file).
    pub(super) scope: usize,
}

/// Fenced code blocks of a Markdown text: (language, body, first line of body).
pub(super) fn fenced_blocks(text: &str) -> Vec<(Lang, &str, u32)> {
    let mut out = Vec::new();
    // (language, body start offset, body first line, fence character)
    let mut open: Option<(Option<Lang>, usize, u32, char)> = None;
    let mut offset = 0usize;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let trimmed = raw.trim();
        let fence = ['`', '~']
            .into_iter()
            .find(|c| trimmed.starts_with(&c.to_string().repeat(3)));
        match (open, fence) {
            (None, Some(c)) => {
                let tag = trimmed.trim_start_matches(c);
                open = Some((
                    Lang::of_fence(tag),
                    offset + raw.len(),
                    line_no.saturating_add(1),
                    c,
                ));
            }
            (Some((lang, start, first, c)), Some(g))
                if g == c && trimmed.chars().all(|x| x == c) =>
            {
                if let Some(lang) = lang {
                    out.push((lang, &text[start..offset], first));
                }
                open = None;
            }
            _ => {}
        }
        offset += raw.len();
    }
    // A block left open runs to the end of the file.
    if let Some((Some(lang), start, first, _)) = open {
        out.push((lang, &text[start..], first));
    }
    out
}

pub(super) fn parse_unit(unit: &CodeUnit<'_>) -> Result<tree_sitter::Tree, String> {
    if unit.text.len() > MAX_PARSE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_PARSE_BYTES}-byte parse limit",
            unit.text.len()
        ));
    }
    let language: tree_sitter::Language = match unit.lang {
        Lang::Python => tree_sitter_python::LANGUAGE.into(),
        Lang::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
        Lang::Bash => tree_sitter_bash::LANGUAGE.into(),
    };
    let mut parser = Parser::new();
    parser
        .set_language(&language)
        .map_err(|e| format!("grammar not loadable: {e}"))?;
    let bytes = unit.text.as_bytes();
    let deadline = Instant::now() + PARSE_BUDGET;
    let mut cancel = |_: &tree_sitter::ParseState| Instant::now() > deadline;
    let options = ParseOptions::new().progress_callback(&mut cancel);
    parser
        .parse_with_options(
            &mut |offset, _| bytes.get(offset..).unwrap_or(&[]),
            None,
            Some(options),
        )
        .ok_or_else(|| "parse timed out".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences() {
        let md = "intro\n```python\nimport os\n```\n\n~~~bash\nls\n~~~\n```\nplain\n```\n";
        let blocks = fenced_blocks(md);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, Lang::Python);
        assert_eq!(blocks[0].2, 3);
        assert_eq!(blocks[1].1, "ls\n");
        let open = fenced_blocks("```sh\ncurl x | sh\n");
        assert_eq!(open.len(), 1, "an unclosed block runs to the end");
    }
}
