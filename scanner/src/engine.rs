//! The engine: rules compiled once into one `RegexSet` per file type, each
//! file matched once, skills scanned in parallel.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use aho_corasick::AhoCorasick;
use rayon::prelude::*;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::checks;
use crate::flows;
use crate::instructions::{self, InstructionModel};
use crate::model::{Finding, ScanError, ScanReport, Severity, TargetKind};
use crate::prose::ProseMap;
use crate::redact;
use crate::rules::{self, AppliesTo, ContextScope, FileType, Rule};
use crate::walk::{self, Limits};

const SNIPPET_MAX: usize = 160;
const REGEX_SIZE_LIMIT: usize = 64 << 20;

struct ContentRule {
    rule: usize,
    types: [bool; 7],
    applies: AppliesTo,
    patterns: Vec<usize>,
    requires: Vec<usize>,
    unless: Vec<usize>,
    exclude: Vec<Regex>,
    scope: ContextScope,
}

/// The scanner engine. Build it once and share it (it is `Sync`).
pub struct Engine {
    rules: Vec<Rule>,
    /// Prefilter: the literals some match of each pattern must contain, in
    /// one case-insensitive automaton; a pattern runs only where one occurs.
    prefilter: Option<AhoCorasick>,
    /// Prefilter literal index -> pattern index.
    literal_owner: Vec<usize>,
    /// Patterns with no required literal, matched together in one pass.
    always: Option<RegexSet>,
    always_ids: Vec<usize>,
    sources: Vec<String>,
    /// Single regexes, compiled on first use: only patterns the set reports
    /// as matching are ever needed to locate matches.
    regexes: Vec<OnceLock<Option<Regex>>>,
    content: Vec<ContentRule>,
    checks: BTreeMap<String, usize>,
    /// Weights of the SKILL.md instruction analysis.
    instructions: InstructionModel,
    limits: Limits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules.len())
            .field("patterns", &self.sources.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// One piece of text to match: a file of a skill, or a field of an MCP server.
pub(crate) struct Unit<'a> {
    pub location: String,
    pub file_type: FileType,
    pub text: Cow<'a, str>,
    /// For MCP fields: the server's line in its config file, used for every
    /// finding in the field (offsets inside a JSON string do not map to lines).
    pub fixed_line: Option<u32>,
}

pub(crate) fn line_of(text: &str, offset: usize) -> u32 {
    let n = text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    u32::try_from(n + 1).unwrap_or(u32::MAX)
}

impl Engine {
    /// The rules embedded in the crate.
    pub fn builtin() -> Result<Engine, ScanError> {
        Engine::from_rules(rules::builtin_rules()?)
    }

    /// Built-in rules plus every `*.toml` rule file in `extra_rule_dirs`.
    pub fn load(extra_rule_dirs: &[PathBuf]) -> Result<Engine, ScanError> {
        let mut engine = Engine::from_rules(rules::load_rules(extra_rule_dirs)?)?;
        if let Some(model) = rules::load_instruction_model(extra_rule_dirs)? {
            engine.instructions = model;
        }
        Ok(engine)
    }

    /// Compiles `rules` (disabled ones are kept for listing but not run).
    pub fn from_rules(rules: Vec<Rule>) -> Result<Engine, ScanError> {
        let mut sources: Vec<String> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut intern = |src: String| -> usize {
            if let Some(i) = index.get(&src) {
                return *i;
            }
            sources.push(src.clone());
            index.insert(src, sources.len() - 1);
            sources.len() - 1
        };
        let mut content = Vec::new();
        let mut checks = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.enabled {
                continue;
            }
            if let Some(check) = &rule.check {
                checks.insert(check.clone(), i);
                continue;
            }
            let cs = rule.case_sensitive;
            let mut types = [false; 7];
            if rule.file_types.is_empty() {
                types = [true; 7];
            } else {
                for t in &rule.file_types {
                    types[t.index()] = true;
                }
            }
            let exclude = rule
                .exclude_match
                .iter()
                .map(|p| compile_one(&rules::pattern_source(p, cs), &rule.id))
                .collect::<Result<Vec<_>, _>>()?;
            content.push(ContentRule {
                rule: i,
                types,
                applies: rule.applies_to,
                patterns: rule
                    .patterns
                    .iter()
                    .map(|p| intern(rules::pattern_source(p, cs)))
                    .collect(),
                requires: rule
                    .requires
                    .iter()
                    .map(|p| intern(rules::pattern_source(p, cs)))
                    .collect(),
                unless: rule
                    .unless
                    .iter()
                    .map(|p| intern(rules::pattern_source(p, cs)))
                    .collect(),
                exclude,
                scope: rule.requires_scope,
            });
        }
        // Patterns with a required literal go behind one Aho-Corasick
        // prefilter; the rest are compiled together into one set. Single
        // regexes are compiled on first use, so start-up stays small.
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut literal_owner = Vec::new();
        let mut always_ids = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            match crate::literals::required_literals(src) {
                Some(lits) => {
                    for l in lits {
                        literals.push(l);
                        literal_owner.push(i);
                    }
                }
                None => always_ids.push(i),
            }
        }
        let prefilter = if literals.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(&literals)
                    .map_err(|e| ScanError::RuleFile {
                        path: "rule set".into(),
                        message: e.to_string(),
                    })?,
            )
        };
        let always = if always_ids.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(always_ids.iter().map(|i| sources[*i].as_str()))
                    .unicode(false)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| ScanError::RuleFile {
                        path: "rule set".into(),
                        message: e.to_string(),
                    })?,
            )
        };
        let regexes = sources.iter().map(|_| OnceLock::new()).collect();
        Ok(Engine {
            rules,
            prefilter,
            literal_owner,
            always,
            always_ids,
            sources,
            regexes,
            content,
            checks,
            instructions: InstructionModel::builtin()?,
            limits: Limits::default(),
        })
    }

    /// Replaces the read limits.
    pub fn with_limits(mut self, limits: Limits) -> Engine {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The weights of the SKILL.md instruction analysis in use.
    pub fn instruction_model(&self) -> &InstructionModel {
        &self.instructions
    }

    /// The literals the enabled rules and the instruction weights match on,
    /// as (rule id or `weights:<feature>`, lowercased literal): what the
    /// evaluation checks against the corpus sources.
    pub fn rule_literals(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.enabled) {
            for p in rule.patterns.iter().chain(&rule.requires) {
                let src = rules::pattern_source(p, rule.case_sensitive);
                for lit in crate::literals::required_literals(&src).unwrap_or_default() {
                    out.push((rule.id.clone(), String::from_utf8_lossy(&lit).into_owned()));
                }
            }
        }
        out.extend(self.instructions.literals());
        out.sort();
        out.dedup();
        out
    }

    /// Every loaded rule, in load order (for `rule list`).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Scans one skill folder.
    pub fn scan_skill(&self, dir: &Path) -> Result<ScanReport, ScanError> {
        let started = Instant::now();
        let loaded = walk::load_tree(dir, &self.limits)?;
        Ok(self.scan_loaded(dir, loaded, started))
    }

    /// Scans a skill folder already read by `walk::load_tree`.
    pub(crate) fn scan_loaded(
        &self,
        dir: &Path,
        loaded: walk::Loaded,
        started: Instant,
    ) -> ScanReport {
        let skill_md = loaded
            .files
            .iter()
            .find(|f| f.rel.eq_ignore_ascii_case("SKILL.md"));
        let fm = skill_md.and_then(|f| checks::front_matter(&f.text));
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let name = fm
            .as_ref()
            .and_then(|m| m.get("name"))
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| folder.clone());
        let mut report =
            ScanReport::new(dir.display().to_string(), TargetKind::Skill, name.clone());
        report.notes = loaded.notes;
        report.incomplete = loaded.incomplete;
        let units: Vec<Unit<'_>> = loaded
            .files
            .iter()
            .map(|f| Unit {
                location: f.rel.clone(),
                file_type: f.file_type,
                text: Cow::Borrowed(f.text.as_str()),
                fixed_line: None,
            })
            .collect();
        report.findings = self.scan_units(&units, TargetKind::Skill);
        self.language_aware(&loaded.files, skill_md, fm.as_ref(), &mut report);

        match (skill_md, &fm) {
            (None, _) => {
                report.notes.push("no SKILL.md in the skill folder".into());
                self.push_check(
                    &mut report.findings,
                    "frontmatter_missing",
                    TargetKind::Skill,
                    "SKILL.md",
                    0,
                    "",
                    Some("there is no SKILL.md"),
                );
            }
            (Some(f), None) => self.push_check(
                &mut report.findings,
                "frontmatter_missing",
                TargetKind::Skill,
                &f.rel,
                1,
                "",
                Some("SKILL.md has no YAML front matter"),
            ),
            (Some(f), Some(m)) => {
                if let Some((line, why)) = checks::front_matter_problem(&f.text) {
                    let snippet = f
                        .text
                        .lines()
                        .nth((line as usize).saturating_sub(1))
                        .unwrap_or("");
                    self.push_check(
                        &mut report.findings,
                        "frontmatter_malformed",
                        TargetKind::Skill,
                        &f.rel,
                        line,
                        snippet,
                        Some(&why),
                    );
                }
                if let Some(n) = m.get("name")
                    && let Some((part, popular)) = checks::name_typosquat(n)
                {
                    let line = f
                        .text
                        .lines()
                        .position(|l| l.trim_start().starts_with("name:"))
                        .map_or(1, |i| u32::try_from(i + 1).unwrap_or(1));
                    self.push_check(
                        &mut report.findings,
                        "skill_name_typosquat",
                        TargetKind::Skill,
                        &f.rel,
                        line,
                        &format!("name: {n}"),
                        Some(&format!("{part:?} looks like a misspelling of {popular:?}")),
                    );
                }
            }
        }
        if let Some(why) = &report.incomplete {
            // A truncated scan must not look clean: what was not read may hide anything.
            self.push_check(
                &mut report.findings,
                "scan_incomplete",
                TargetKind::Skill,
                "",
                0,
                why,
                Some(why),
            );
        }
        for (link, target) in &loaded.escapes {
            self.push_check(
                &mut report.findings,
                "symlink_escape",
                TargetKind::Skill,
                link,
                0,
                &format!("{link} -> {target}"),
                None,
            );
        }
        report.finalize();
        report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        report
    }

    /// Parsed-code flows over every file, and the instruction score of SKILL.md.
    fn language_aware(
        &self,
        files: &[walk::LoadedFile],
        skill_md: Option<&walk::LoadedFile>,
        fm: Option<&BTreeMap<String, String>>,
        report: &mut ScanReport,
    ) {
        let inputs: Vec<(&str, FileType, &str)> = files
            .iter()
            .map(|f| (f.rel.as_str(), f.file_type, f.text.as_str()))
            .collect();
        let analysis = flows::analyse(&inputs);
        report.notes.extend(analysis.notes);
        for h in analysis.hits {
            self.push_check(
                &mut report.findings,
                h.check,
                TargetKind::Skill,
                &h.location,
                h.line,
                &h.snippet,
                Some(&h.detail),
            );
        }
        let (Some(md), Some(ri)) = (
            skill_md,
            self.check_rule("instruction_risk", TargetKind::Skill),
        ) else {
            return;
        };
        let description = fm
            .and_then(|m| m.get("description"))
            .map_or("", String::as_str);
        if let Some(v) = instructions::analyse(&self.instructions, &md.text, description) {
            let rule = &self.rules[ri];
            let snippet: String = redact::redact(&redact::clean_invisible(&v.snippet))
                .chars()
                .take(SNIPPET_MAX)
                .collect();
            let mut finding = make_finding(rule, &md.rel, v.line, snippet, Some(&v.detail));
            // The score decides, capped by the rule file's severity.
            finding.severity = v.severity.min(rule.severity);
            report.findings.push(finding);
        }
    }

    /// Scans skill folders in parallel; results are in the order of `dirs`.
    pub fn scan_skills(&self, dirs: &[PathBuf]) -> Vec<Result<ScanReport, ScanError>> {
        dirs.par_iter().map(|d| self.scan_skill(d)).collect()
    }

    /// Content rules over arbitrary text (for runtime checks and tests).
    pub fn scan_text(
        &self,
        text: &str,
        file_type: FileType,
        location: &str,
        kind: TargetKind,
    ) -> Vec<Finding> {
        let unit = Unit {
            location: location.to_string(),
            file_type,
            text: Cow::Borrowed(text),
            fixed_line: None,
        };
        self.scan_units(std::slice::from_ref(&unit), kind)
    }

    fn hits(&self, unit: &Unit<'_>) -> Vec<bool> {
        let text = unit.text.as_bytes();
        let mut hits = vec![false; self.sources.len()];
        if let Some(set) = &self.always {
            for i in set.matches(text).into_iter() {
                hits[self.always_ids[i]] = true;
            }
        }
        if let Some(ac) = &self.prefilter {
            let mut candidate = vec![false; self.sources.len()];
            for m in ac.find_overlapping_iter(text) {
                candidate[self.literal_owner[m.pattern().as_usize()]] = true;
            }
            for (i, c) in candidate.into_iter().enumerate() {
                if c && !hits[i] {
                    hits[i] = self.regex(i).is_some_and(|re| re.is_match(text));
                }
            }
        }
        hits
    }

    fn regex(&self, i: usize) -> Option<&Regex> {
        self.regexes[i]
            .get_or_init(|| compile_one(&self.sources[i], "rule set").ok())
            .as_ref()
    }

    pub(crate) fn scan_units(&self, units: &[Unit<'_>], kind: TargetKind) -> Vec<Finding> {
        let hits: Vec<Vec<bool>> = units.iter().map(|u| self.hits(u)).collect();
        let mut union = vec![false; self.sources.len()];
        for h in &hits {
            for (u, x) in union.iter_mut().zip(h) {
                *u |= *x;
            }
        }
        let mut findings = Vec::new();
        for cr in &self.content {
            if !applies(cr.applies, kind) {
                continue;
            }
            let rule = &self.rules[cr.rule];
            for (unit, h) in units.iter().zip(&hits) {
                if !cr.types[unit.file_type.index()] || !cr.patterns.iter().any(|p| h[*p]) {
                    continue;
                }
                let ctx = match cr.scope {
                    ContextScope::File => h,
                    ContextScope::Target => &union,
                };
                if !cr.requires.iter().all(|r| ctx[*r]) || cr.unless.iter().any(|u| h[*u]) {
                    continue;
                }
                let mut lines_seen: Vec<u32> = Vec::new();
                // Built on the first match that needs it, once per file and rule.
                let in_prose = rule.prose_aware
                    && kind == TargetKind::Skill
                    && unit.file_type == FileType::Markdown;
                let mut prose: Option<ProseMap> = None;
                // Instructions count against `max_matches`; documented matches
                // (reported at LOW) have a cap of their own, so examples early
                // in a file cannot use up the findings a later instruction gets.
                let (mut instructed, mut documented_n) = (0usize, 0usize);
                'patterns: for p in cr.patterns.iter().filter(|p| h[**p]) {
                    let Some(re) = self.regex(*p) else { continue };
                    for m in re.find_iter(unit.text.as_bytes()) {
                        if cr.exclude.iter().any(|x| x.is_match(m.as_bytes())) {
                            continue;
                        }
                        // Byte-level matches can split a UTF-8 character.
                        let (start, end) = char_span(&unit.text, m.start(), m.end());
                        let line = unit
                            .fixed_line
                            .unwrap_or_else(|| line_of(&unit.text, start));
                        if lines_seen.contains(&line) && unit.fixed_line.is_none() {
                            continue;
                        }
                        if unit.fixed_line.is_some() && !lines_seen.is_empty() {
                            break 'patterns;
                        }
                        lines_seen.push(line);
                        let documented = if in_prose {
                            let lang = &self.instructions.language;
                            prose
                                .get_or_insert_with(|| ProseMap::new(&unit.text, lang))
                                .documentation(&unit.text, start, end, lang)
                        } else {
                            None
                        };
                        let mut finding = make_finding(
                            rule,
                            &unit.location,
                            line,
                            redact::snippet(&unit.text, start, end, SNIPPET_MAX),
                            documented
                                .map(|why| format!("documented, not instructed: {why}"))
                                .as_deref(),
                        );
                        if documented.is_some() {
                            if documented_n >= rule.max_matches {
                                continue;
                            }
                            documented_n += 1;
                            finding.severity = finding.severity.min(Severity::Low);
                        } else {
                            instructed += 1;
                        }
                        findings.push(finding);
                        if instructed >= rule.max_matches {
                            break 'patterns;
                        }
                    }
                }
            }
        }
        // Encoded literals: decode, then judge what the payload says.
        if let Some(ri) = self.check_rule("encoded_literal", kind) {
            let rule = &self.rules[ri];
            for unit in units {
                for hit in checks::encoded_literals(&unit.text, rule.max_matches) {
                    let preview: String = redact::clean_invisible(&hit.decoded)
                        .chars()
                        .take(100)
                        .collect();
                    let line = unit
                        .fixed_line
                        .unwrap_or_else(|| line_of(&unit.text, hit.start));
                    findings.push(make_finding(
                        rule,
                        &unit.location,
                        line,
                        redact::snippet(&unit.text, hit.start, hit.end, SNIPPET_MAX),
                        Some(&format!(
                            "{} literal decodes to: {}",
                            hit.encoding,
                            redact::redact(&preview)
                        )),
                    ));
                }
            }
        }
        // Package installs naming a look-alike of a popular package.
        if let Some(ri) = self.check_rule("install_typosquat", kind) {
            let rule = &self.rules[ri];
            for unit in units {
                for (start, end, name, popular) in checks::install_typosquats(&unit.text) {
                    let line = unit
                        .fixed_line
                        .unwrap_or_else(|| line_of(&unit.text, start));
                    findings.push(make_finding(
                        rule,
                        &unit.location,
                        line,
                        redact::snippet(&unit.text, start, end, SNIPPET_MAX),
                        Some(&format!("{name:?} looks like a misspelling of {popular:?}")),
                    ));
                }
            }
        }
        findings
    }

    pub(crate) fn check_rule(&self, check: &str, kind: TargetKind) -> Option<usize> {
        let i = *self.checks.get(check)?;
        applies(self.rules[i].applies_to, kind).then_some(i)
    }

    /// Adds a finding for a structural check, if that check's rule is loaded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_check(
        &self,
        findings: &mut Vec<Finding>,
        check: &str,
        kind: TargetKind,
        location: &str,
        line: u32,
        snippet: &str,
        detail: Option<&str>,
    ) {
        if let Some(i) = self.check_rule(check, kind) {
            let snip: String = redact::redact(&redact::clean_invisible(snippet))
                .chars()
                .take(SNIPPET_MAX)
                .collect();
            findings.push(make_finding(&self.rules[i], location, line, snip, detail));
        }
    }
}

fn char_span(text: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    start = start.min(text.len());
    end = end.min(text.len()).max(start);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    while !text.is_char_boundary(end) {
        end += 1;
    }
    (start, end)
}

fn applies(a: AppliesTo, kind: TargetKind) -> bool {
    match a {
        AppliesTo::Any => true,
        AppliesTo::Skill => kind == TargetKind::Skill,
        AppliesTo::Mcp => kind == TargetKind::Mcp,
    }
}

fn compile_one(src: &str, origin: &str) -> Result<Regex, ScanError> {
    // ASCII semantics by default (rules opt into Unicode with `(?u:...)`):
    // far smaller automata, so building and matching stay fast.
    RegexBuilder::new(src)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| ScanError::RuleFile {
            path: origin.to_string(),
            message: e.to_string(),
        })
}

pub(crate) fn make_finding(
    rule: &Rule,
    location: &str,
    line: u32,
    snippet: String,
    detail: Option<&str>,
) -> Finding {
    let description = match detail {
        Some(d) if !d.is_empty() => format!("{} ({d})", rule.description.trim()),
        _ => rule.description.trim().to_string(),
    };
    Finding {
        rule_id: rule.id.clone(),
        category: rule.category.clone(),
        severity: rule.severity,
        title: rule.title.clone(),
        description,
        location: location.to_string(),
        line,
        snippet,
        remediation: rule.remediation.trim().to_string(),
    }
}
