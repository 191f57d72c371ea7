//! `scan-eval`: the built-in scanner (and, when installed, Cisco's
//! `skill-scanner`) on a labelled corpus: timing, recall on malicious and
//! false positives on benign samples, at HIGH+ and MEDIUM+; leave-one-source-out
//! figures (the severity threshold chosen on the other sources, measured on the
//! one left out) and a check for rule or weight literals that occur in one
//! source's samples only (a sign of rules fitted to samples, not behaviour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use defenseclaw_scanner::adapters::SkillScannerAdapter;
use defenseclaw_scanner::{Engine, ScanReport, Severity};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Sample {
    path: String,
    malicious: bool,
    kind: String,
    category: String,
    source: String,
}

#[derive(Debug, Clone)]
struct Outcome {
    max: Option<Severity>,
    /// Highest severity among the language-aware findings alone (parsed
    /// code flows `DC-FL-*`, instruction score `DC-IN-*`).
    max_language_aware: Option<Severity>,
    ms: f64,
    rules: Vec<String>,
    error: Option<String>,
}

fn read_labels(corpus: &Path) -> anyhow::Result<Vec<Sample>> {
    let file = corpus.join("labels.csv");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < 4 {
            bail!(
                "{}:{}: expected path,label,kind,category,source",
                file.display(),
                i + 1
            );
        }
        out.push(Sample {
            path: cols[0].to_string(),
            malicious: match cols[1] {
                "malicious" => true,
                "benign" => false,
                other => bail!("{}:{}: unknown label {other:?}", file.display(), i + 1),
            },
            kind: cols[2].to_string(),
            category: cols[3].to_string(),
            source: cols.get(4).map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok(out)
}

fn outcome_of(reports: &[ScanReport], ms: f64) -> Outcome {
    let mut rules: Vec<String> = reports
        .iter()
        .flat_map(|r| r.findings.iter())
        .filter(|f| f.severity >= Severity::Medium)
        .map(|f| format!("{}:{}", f.rule_id, f.severity))
        .collect();
    rules.sort();
    rules.dedup();
    Outcome {
        max: reports.iter().filter_map(|r| r.max_severity).max(),
        max_language_aware: reports
            .iter()
            .flat_map(|r| r.findings.iter())
            .filter(|f| f.rule_id.starts_with("DC-FL-") || f.rule_id.starts_with("DC-IN-"))
            .map(|f| f.severity)
            .max(),
        ms,
        rules,
        error: None,
    }
}

fn rate(hit: usize, total: usize) -> Value {
    let r = if total == 0 {
        Value::Null
    } else {
        json!((hit as f64) / (total as f64))
    };
    json!({ "hit": hit, "total": total, "rate": r })
}

/// Recall (malicious) and false-positive rate (benign) at HIGH+ and MEDIUM+.
fn metrics<'a>(items: impl Iterator<Item = (&'a Sample, &'a Outcome)>) -> Value {
    let (mut mal, mut ben) = (0, 0);
    let (mut mal_h, mut mal_m, mut ben_h, mut ben_m) = (0, 0, 0, 0);
    for (s, o) in items {
        let h = o.max.is_some_and(|m| m >= Severity::High);
        let m = o.max.is_some_and(|m| m >= Severity::Medium);
        if s.malicious {
            mal += 1;
            mal_h += usize::from(h);
            mal_m += usize::from(m);
        } else {
            ben += 1;
            ben_h += usize::from(h);
            ben_m += usize::from(m);
        }
    }
    json!({
        "malicious": mal,
        "benign": ben,
        "recall_high": rate(mal_h, mal),
        "recall_medium": rate(mal_m, mal),
        "fp_high": rate(ben_h, ben),
        "fp_medium": rate(ben_m, ben),
    })
}

fn breakdown(samples: &[Sample], outcomes: &[Outcome], filter: impl Fn(&Sample) -> bool) -> Value {
    let pairs: Vec<(&Sample, &Outcome)> = samples
        .iter()
        .zip(outcomes)
        .filter(|(s, _)| filter(s))
        .collect();
    let mut by_kind: BTreeMap<String, Vec<(&Sample, &Outcome)>> = BTreeMap::new();
    let mut by_cat: BTreeMap<String, Vec<(&Sample, &Outcome)>> = BTreeMap::new();
    let mut by_source: BTreeMap<String, Vec<(&Sample, &Outcome)>> = BTreeMap::new();
    for (s, o) in &pairs {
        by_kind.entry(s.kind.clone()).or_default().push((s, o));
        let label = if s.malicious { "malicious" } else { "benign" };
        by_cat
            .entry(format!("{}/{}/{}", s.kind, label, s.category))
            .or_default()
            .push((s, o));
        by_source.entry(s.source.clone()).or_default().push((s, o));
    }
    let to_map = |m: BTreeMap<String, Vec<(&Sample, &Outcome)>>| -> Value {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, metrics(v.into_iter())))
                .collect(),
        )
    };
    json!({
        "overall": metrics(pairs.iter().copied()),
        "by_kind": to_map(by_kind),
        "by_category": to_map(by_cat),
        "by_source": to_map(by_source),
    })
}

fn timing(outcomes: &[Outcome]) -> Value {
    let mut ms: Vec<f64> = outcomes.iter().map(|o| o.ms).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| -> f64 {
        if ms.is_empty() {
            return 0.0;
        }
        let i = ((ms.len() - 1) as f64 * q).round() as usize;
        ms[i.min(ms.len() - 1)]
    };
    json!({
        "mean_ms": if ms.is_empty() { 0.0 } else { ms.iter().sum::<f64>() / ms.len() as f64 },
        "p50_ms": pick(0.5),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
        "sum_ms": ms.iter().sum::<f64>(),
    })
}

fn cisco_skill_scanner(corpus: &Path, samples: &[Sample]) -> Value {
    let adapter = SkillScannerAdapter::from_env(Duration::from_secs(1800));
    let exe = match adapter.available() {
        Ok(p) => p,
        Err(e) => return json!({ "available": false, "reason": e.to_string() }),
    };
    let skills_dir = corpus.join("skills");
    let started = Instant::now();
    let result = adapter.scan_all_dir(&skills_dir);
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    let reports = match result {
        Ok(r) => r,
        Err(e) => {
            return json!({ "available": true, "executable": exe.display().to_string(), "error": e.to_string(), "wall_ms": wall });
        }
    };
    let by_dir: BTreeMap<String, &ScanReport> = reports
        .iter()
        .filter_map(|r| {
            Path::new(&r.path)
                .file_name()
                .map(|n| (n.to_string_lossy().into_owned(), r))
        })
        .collect();
    let skills: Vec<Sample> = samples
        .iter()
        .filter(|s| s.kind == "skill")
        .cloned()
        .collect();
    let mut missing = Vec::new();
    let outcomes: Vec<Outcome> = skills
        .iter()
        .map(|s| {
            let dir = Path::new(&s.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match by_dir.get(&dir) {
                Some(r) => outcome_of(std::slice::from_ref(*r), r.duration_ms),
                None => {
                    missing.push(s.path.clone());
                    Outcome {
                        max: None,
                        max_language_aware: None,
                        ms: 0.0,
                        rules: Vec::new(),
                        error: Some("not reported by skill-scanner".into()),
                    }
                }
            }
        })
        .collect();
    let per_sample: Vec<Value> = skills
        .iter()
        .zip(&outcomes)
        .map(|(s, o)| json!({ "path": s.path, "max_severity": o.max, "ms": o.ms }))
        .collect();
    json!({
        "available": true,
        "executable": exe.display().to_string(),
        "command": "skill-scanner scan-all <corpus>/skills --format json",
        "whole_process_ms": wall,
        "skills_reported": reports.len(),
        "skills_not_reported": missing,
        "per_sample_timing": timing(&outcomes),
        "figures": breakdown(&skills, &outcomes, |_| true),
        "per_sample": per_sample,
    })
}

fn get_f64(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

/// Highest false-positive rate the threshold chosen on the other sources may have.
const LOSO_MAX_FP: f64 = 0.02;

/// Leave-one-source-out: for each source, the lowest severity threshold whose
/// false-positive rate on the benign samples of all *other* sources (of the
/// same kind) stays within `LOSO_MAX_FP` is chosen there, then recall and
/// false positives are measured on the left-out source, beside the fixed
/// HIGH+ and MEDIUM+ figures. Rules and weights are data fixed before the
/// run, so the threshold is the only thing tuned.
fn leave_one_source_out(samples: &[Sample], outcomes: &[Outcome]) -> Value {
    let thresholds = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];
    let sources: std::collections::BTreeSet<(&str, &str)> = samples
        .iter()
        .map(|s| (s.kind.as_str(), s.source.as_str()))
        .collect();
    let mut out = serde_json::Map::new();
    let (mut pooled_mal, mut pooled_h, mut pooled_m, mut pooled_t) = (0, 0, 0, 0);
    let (mut pooled_ben, mut pooled_fph, mut pooled_fpt) = (0, 0, 0);
    for (kind, source) in sources {
        let same_kind = |s: &Sample| s.kind == kind;
        let train: Vec<(&Sample, &Outcome)> = samples
            .iter()
            .zip(outcomes)
            .filter(|(s, _)| same_kind(s) && s.source != source)
            .collect();
        let test: Vec<(&Sample, &Outcome)> = samples
            .iter()
            .zip(outcomes)
            .filter(|(s, _)| same_kind(s) && s.source == source)
            .collect();
        let reaches = |o: &Outcome, t: Severity| o.max.is_some_and(|m| m >= t);
        let fp_rate = |set: &[(&Sample, &Outcome)], t: Severity| {
            let ben: Vec<_> = set.iter().filter(|(s, _)| !s.malicious).collect();
            if ben.is_empty() {
                return 0.0;
            }
            ben.iter().filter(|(_, o)| reaches(o, t)).count() as f64 / ben.len() as f64
        };
        // With no benign sample elsewhere nothing can be tuned: the default, HIGH.
        let train_benign = train.iter().filter(|(s, _)| !s.malicious).count();
        let chosen = if train_benign == 0 {
            Severity::High
        } else {
            thresholds
                .iter()
                .copied()
                .find(|t| fp_rate(&train, *t) <= LOSO_MAX_FP)
                .unwrap_or(Severity::Critical)
        };
        let mal: Vec<_> = test.iter().filter(|(s, _)| s.malicious).collect();
        let ben: Vec<_> = test.iter().filter(|(s, _)| !s.malicious).collect();
        let count = |v: &[&(&Sample, &Outcome)], t: Severity| {
            v.iter().filter(|(_, o)| reaches(o, t)).count()
        };
        pooled_mal += mal.len();
        pooled_h += count(&mal, Severity::High);
        pooled_m += count(&mal, Severity::Medium);
        pooled_t += count(&mal, chosen);
        pooled_ben += ben.len();
        pooled_fph += count(&ben, Severity::High);
        pooled_fpt += count(&ben, chosen);
        out.insert(
            format!("{kind}/{source}"),
            json!({
                "threshold_chosen_on_other_sources": chosen,
                "benign_in_other_sources": train_benign,
                "recall_at_threshold": rate(count(&mal, chosen), mal.len()),
                "fp_at_threshold": rate(count(&ben, chosen), ben.len()),
                "recall_high": rate(count(&mal, Severity::High), mal.len()),
                "recall_medium": rate(count(&mal, Severity::Medium), mal.len()),
                "fp_high": rate(count(&ben, Severity::High), ben.len()),
                "fp_medium": rate(count(&ben, Severity::Medium), ben.len()),
            }),
        );
    }
    json!({
        "max_fp_when_choosing": LOSO_MAX_FP,
        "per_left_out_source": Value::Object(out),
        "pooled_over_left_out_sources": {
            "recall_at_threshold": rate(pooled_t, pooled_mal),
            "fp_at_threshold": rate(pooled_fpt, pooled_ben),
            "recall_high": rate(pooled_h, pooled_mal),
            "recall_medium": rate(pooled_m, pooled_mal),
            "fp_high": rate(pooled_fph, pooled_ben),
        },
    })
}

/// Bytes of one sample read for the literal check (per file and in total).
const LITERAL_READ_MAX: u64 = 1 << 20;

/// The lowercased text of a sample (a skill folder's files, or an MCP file).
fn sample_text(path: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    let mut files = vec![path.to_path_buf()];
    let mut budget = LITERAL_READ_MAX * 8;
    let mut seen = 0usize;
    while let Some(p) = files.pop() {
        seen += 1;
        if seen > 2_000 || budget == 0 {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if meta.is_file()
            && let Ok(f) = std::fs::File::open(&p)
        {
            let mut buf = Vec::new();
            let take = LITERAL_READ_MAX.min(budget);
            if f.take(take).read_to_end(&mut buf).is_ok() {
                budget = budget.saturating_sub(buf.len() as u64);
                text.push_str(&String::from_utf8_lossy(&buf).to_lowercase());
                text.push('\n');
            }
        }
    }
    text
}

/// Rule and weight literals that occur in the samples of exactly one source.
fn single_source_literals(corpus: &Path, samples: &[Sample], engine: &Engine) -> Value {
    let literals = engine.rule_literals();
    let Ok(ac) = aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(literals.iter().map(|(_, l)| l.as_str()))
    else {
        return json!({ "error": "could not build the literal automaton" });
    };
    // literal index -> source -> samples containing it
    let mut found: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); literals.len()];
    for s in samples {
        let text = sample_text(&corpus.join(&s.path));
        let mut hit = vec![false; literals.len()];
        for m in ac.find_overlapping_iter(&text) {
            hit[m.pattern().as_usize()] = true;
        }
        for (i, h) in hit.into_iter().enumerate() {
            if h {
                *found[i].entry(s.source.as_str()).or_default() += 1;
            }
        }
    }
    let flagged: Vec<Value> = literals
        .iter()
        .zip(&found)
        .filter(|(_, by)| by.len() == 1)
        .map(|((rule, lit), by)| {
            let (source, n) = by.iter().next().map(|(s, n)| (*s, *n)).unwrap_or(("", 0));
            json!({ "rule": rule, "literal": lit, "source": source, "samples": n })
        })
        .collect();
    let unused = found.iter().filter(|by| by.is_empty()).count();
    json!({
        "literals_checked": literals.len(),
        "in_no_sample": unused,
        "in_one_source_only": flagged.len(),
        "flagged": flagged,
    })
}

/// The LLM analyzer's part of the evaluation. Its figures are separate
/// from the static engine's and are only ever measured against a real
/// endpoint: with none configured the report says "off" and gives only how
/// many skills the default band (static LOW..MEDIUM) would send it.
fn llm_analyzer(samples: &[Sample], outcomes: &[Outcome]) -> Value {
    let band = |o: &Outcome| {
        defenseclaw_scanner::llm::wants_review(o.max, Some(Severity::Low), Severity::Medium)
    };
    let (mut mal, mut ben) = (0, 0);
    for (s, o) in samples.iter().zip(outcomes) {
        if s.kind == "skill" && band(o) {
            if s.malicious {
                mal += 1;
            } else {
                ben += 1;
            }
        }
    }
    let endpoint = std::env::var("SCAN_EVAL_LLM_BASE_URL").unwrap_or_default();
    json!({
        "status": "off",
        "reason": if endpoint.is_empty() {
            "no endpoint configured (SCAN_EVAL_LLM_BASE_URL unset); no LLM figures are reported"
        } else {
            "an endpoint is set but this evaluation does not call it yet; no LLM figures are reported"
        },
        "default_band": "static max severity LOW..MEDIUM",
        "skills_in_default_band": { "malicious": mal, "benign": ben },
    })
}

/// Runs the evaluation on `corpus` (a folder with `labels.csv`).
pub fn run(corpus: &Path) -> anyhow::Result<Value> {
    let samples = read_labels(corpus)?;
    let total_started = Instant::now();
    let engine = Engine::builtin().context("building the scanner engine")?;
    let build_ms = total_started.elapsed().as_secs_f64() * 1000.0;
    let scan_started = Instant::now();
    // Skills in parallel through the engine's own rayon pool; MCP files
    // are tiny and scanned in turn.
    let skill_dirs: Vec<PathBuf> = samples
        .iter()
        .filter(|s| s.kind == "skill")
        .map(|s| corpus.join(&s.path))
        .collect();
    let mut skill_results = engine.scan_skills(&skill_dirs).into_iter();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(samples.len());
    for s in &samples {
        if s.kind == "skill" {
            let outcome = match skill_results.next() {
                Some(Ok(report)) => {
                    let ms = report.duration_ms;
                    outcome_of(std::slice::from_ref(&report), ms)
                }
                Some(Err(e)) => Outcome {
                    max: None,
                    max_language_aware: None,
                    ms: 0.0,
                    rules: Vec::new(),
                    error: Some(e.to_string()),
                },
                None => Outcome {
                    max: None,
                    max_language_aware: None,
                    ms: 0.0,
                    rules: Vec::new(),
                    error: Some("missing result".into()),
                },
            };
            outcomes.push(outcome);
        } else {
            let t = Instant::now();
            let result = engine.scan_mcp_file(&corpus.join(&s.path), None);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            outcomes.push(match result {
                Ok(reports) => outcome_of(&reports, ms),
                Err(e) => Outcome {
                    max: None,
                    max_language_aware: None,
                    ms,
                    rules: Vec::new(),
                    error: Some(e.to_string()),
                },
            });
        }
    }
    let scan_ms = scan_started.elapsed().as_secs_f64() * 1000.0;
    let total_ms = total_started.elapsed().as_secs_f64() * 1000.0;
    let skill_ms: f64 = samples
        .iter()
        .zip(&outcomes)
        .filter(|(s, _)| s.kind == "skill")
        .map(|(_, o)| o.ms)
        .sum();

    let builtin = json!({
        "engine_build_ms": build_ms,
        "scan_wall_ms": scan_ms,
        "whole_corpus_ms": total_ms,
        "skills_scan_cpu_ms": skill_ms,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "per_sample_timing": timing(&outcomes),
        "errors": samples.iter().zip(&outcomes).filter_map(|(s, o)| o.error.as_ref().map(|e| json!({"path": s.path, "error": e}))).collect::<Vec<_>>(),
        "figures": breakdown(&samples, &outcomes, |_| true),
        "skill_timing": timing(&samples.iter().zip(&outcomes).filter(|(s, _)| s.kind == "skill").map(|(_, o)| o.clone()).collect::<Vec<_>>()),
        "leave_one_source_out": leave_one_source_out(&samples, &outcomes),
        "figures_language_aware_only": breakdown(
            &samples,
            &outcomes
                .iter()
                .map(|o| Outcome { max: o.max_language_aware, ..o.clone() })
                .collect::<Vec<_>>(),
            |_| true,
        ),
        "single_source_literals": single_source_literals(corpus, &samples, &engine),
        "llm_analyzer": llm_analyzer(&samples, &outcomes),
    });

    let cisco = cisco_skill_scanner(corpus, &samples);
    let cisco_ms = cisco.get("whole_process_ms").and_then(Value::as_f64);
    let ours_skill_recall = get_f64(
        &builtin,
        &["figures", "by_kind", "skill", "recall_high", "rate"],
    );
    let ours_skill_fp = get_f64(
        &builtin,
        &["figures", "by_kind", "skill", "fp_high", "rate"],
    );
    let ours_mcp_recall = get_f64(
        &builtin,
        &["figures", "by_kind", "mcp", "recall_high", "rate"],
    );
    let ours_mcp_fp = get_f64(&builtin, &["figures", "by_kind", "mcp", "fp_high", "rate"]);
    // Reference figures from the issue (skill-scanner 2.3.2, default offline analyzers).
    let reference_recall = 33.0 / 107.0;
    let cisco_recall =
        get_f64(&cisco, &["figures", "overall", "recall_high", "rate"]).unwrap_or(reference_recall);
    let cisco_fp = get_f64(&cisco, &["figures", "overall", "fp_high", "rate"]).unwrap_or(0.0);
    let speedup = cisco_ms.map(|c| c / total_ms);
    let comparison = json!({
        "cisco_figures_from": if cisco_ms.is_some() { "this run" } else { "issue reference (33/107 at HIGH+, 0/94 FP)" },
        "speedup_whole_corpus_vs_cisco_scan_all": speedup,
        "skill_recall_high_ratio_vs_cisco": ours_skill_recall.map(|r| r / cisco_recall),
        "targets": {
            "speed_50x": speedup.map(|s| s >= 50.0),
            "skill_recall_high_2x_cisco": ours_skill_recall.map(|r| r >= 2.0 * cisco_recall),
            "skill_fp_high_not_above_cisco": ours_skill_fp.map(|f| f <= cisco_fp),
            "mcp_recall_high_80pct": ours_mcp_recall.map(|r| r >= 0.8),
            "mcp_fp_high_5pct": ours_mcp_fp.map(|f| f <= 0.05),
            "skill_p99_50ms": get_f64(&builtin, &["skill_timing", "p99_ms"]).map(|p| p <= 50.0),
        }
    });
    let per_sample: Vec<Value> = samples
        .iter()
        .zip(&outcomes)
        .map(|(s, o)| {
            json!({
                "path": s.path,
                "label": if s.malicious { "malicious" } else { "benign" },
                "kind": s.kind,
                "category": s.category,
                "max_severity": o.max,
                "ms": o.ms,
                "rules": o.rules,
            })
        })
        .collect();
    Ok(json!({
        "corpus": corpus.display().to_string(),
        "samples": samples.len(),
        "builtin": builtin,
        "cisco_skill_scanner": cisco,
        "comparison": comparison,
        "per_sample": per_sample,
    }))
}
