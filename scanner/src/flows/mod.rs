//! Language-aware analysis of code: scripts and the fenced code blocks of
//! Markdown are parsed with tree-sitter (Python, JavaScript/TypeScript,
//! Bash), then one pass over assignments and calls, in source order, follows
//! values from sources (secrets, credential files, downloads, the user's
//! files) through transformations (encoding, decoding, string building) to
//! sinks (network, DNS, execution, persistence locations).
//!
//! The taint is deliberately simple (a variable is tainted by what its
//! assigned expression reads; a call is a sink when its callee is one and an
//! argument carries taint) so it stays fast and explainable: each finding
//! names the source, the steps and the sink, with lines. Variables are shared
//! across the code blocks of one Markdown file; downloaded file paths across
//! the whole skill. A file too large to parse, or a parse that runs out of
//! time, is left to the line rules with a note.
//!
//! Files: `unit` (what is parsed, and the bounded parse), `patterns` (the
//! regexes), `taint` (what a value carries), `visit` (the pass over one unit);
//! this file runs them over a skill and caps the hits per check.

mod patterns;
mod taint;
mod unit;
mod visit;

use std::collections::BTreeMap;

use crate::rules::FileType;
use patterns::DOWNLOAD_RE;
use taint::Taint;
use unit::{CodeUnit, Lang, fenced_blocks, parse_unit};
use visit::{Ctx, MAX_NODES};

pub(crate) use visit::FlowHit;

/// Findings per check per file.
const MAX_HITS_PER_CHECK: usize = 3;

#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub hits: Vec<FlowHit>,
    pub notes: Vec<String>,
}

/// Runs the flow analysis over the files of one skill (or one text).
pub(crate) fn analyse(files: &[(&str, FileType, &str)]) -> Analysis {
    let mut units = Vec::new();
    for (scope, (location, ft, text)) in files.iter().enumerate() {
        if let Some(lang) = Lang::of_file(*ft) {
            units.push(CodeUnit {
                location,
                lang,
                text,
                first_line: 1,
                scope,
            });
        } else if *ft == FileType::Markdown {
            for (lang, body, first) in fenced_blocks(text) {
                units.push(CodeUnit {
                    location,
                    lang,
                    text: body,
                    first_line: first,
                    scope,
                });
            }
        }
    }
    let mut analysis = Analysis::default();
    let mut state = SkillState::default();
    for unit in &units {
        let vars = state.scopes.entry(unit.scope).or_default();
        let mut vars = std::mem::take(vars);
        match parse_unit(unit) {
            Ok(tree) => {
                let mut ctx = Ctx {
                    unit,
                    vars: &mut vars,
                    downloaded: &mut state.downloaded,
                    hits: &mut analysis.hits,
                    nodes: 0,
                    file_has_download: DOWNLOAD_RE.is_match(unit.text),
                };
                ctx.walk(tree.root_node());
                if ctx.nodes >= MAX_NODES {
                    analysis.notes.push(format!(
                        "{}: code analysis stopped after {MAX_NODES} syntax nodes",
                        unit.location
                    ));
                }
            }
            Err(why) => analysis.notes.push(format!(
                "{} (line {}): {} code not analysed ({why}); line rules only",
                unit.location,
                unit.first_line,
                unit.lang.name()
            )),
        }
        state.scopes.insert(unit.scope, vars);
    }
    // At most a few findings per check and file, strongest evidence first.
    let mut seen: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    analysis.hits.retain(|h| {
        let n = seen.entry((h.check, h.location.clone())).or_default();
        *n += 1;
        *n <= MAX_HITS_PER_CHECK
    });
    analysis
}

#[derive(Default)]
struct SkillState {
    scopes: BTreeMap<usize, BTreeMap<String, Taint>>,
    /// Paths written by a download anywhere in the skill, with where.
    downloaded: BTreeMap<String, String>,
}
