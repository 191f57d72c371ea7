//! Turning measurements into the JSON document (raw figures, `ratios`,
//! `targets`) and into a readable table.

use std::io::Write;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::load::{self, Pair, Sample};
use crate::procs::Memory;

/// Everything measured in one run.
#[derive(Debug)]
pub struct Inputs {
    /// (calls in flight, connections, echo vs check runs) per level.
    pub levels: Vec<(usize, usize, Pair)>,
    /// Plain vs token runs, when measured.
    pub token: Option<(Vec<Sample>, Vec<Sample>)>,
    /// `defenseclawctl status` wall times, ms.
    pub ctl_ms: Vec<f64>,
    /// `defenseclawctl status` wall times after the mutation runs, ms.
    pub ctl_after_load_ms: Vec<f64>,
    /// `/bin/true` wall times, ms.
    pub true_ms: Vec<f64>,
    /// Bare SQLite inserts per second, per run.
    pub bare_rates: Vec<f64>,
    /// Bare SQLite commit latencies (one-row transactions), ns.
    pub bare_latencies_ns: Vec<u64>,
    /// Per-phase breakdown of one write at 1 client (profiled daemon).
    pub breakdown: Value,
    /// Group commit at 64 clients: batch sizes, fsyncs/s (profiled daemon).
    pub group_commit: Value,
    /// SetEnforcement with one client.
    pub mut1: Vec<Sample>,
    /// SetEnforcement with 64 clients.
    pub mut64: Vec<Sample>,
    /// Daemon memory after start.
    pub idle: Memory,
    /// Daemon memory after the 64-client mutation run.
    pub loaded: Memory,
    /// Audit entries in the daemon's log at the end.
    pub audit_entries: Option<u64>,
    /// Options in effect.
    pub config: Value,
    /// Machine description.
    pub machine: Value,
    /// Phase durations in seconds.
    pub phases: Value,
}

/// The finished report.
#[derive(Debug)]
pub struct Report {
    /// The JSON document.
    pub json: Value,
}

/// Rounds to `digits` decimals.
pub fn round(x: f64, digits: i32) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    let f = 10f64.powi(digits);
    json!((x * f).round() / f)
}

fn opt(x: Option<f64>, digits: i32) -> Value {
    x.map_or(Value::Null, |v| round(v, digits))
}

/// Median rate and pooled latency percentiles of one side.
struct Side {
    rate: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    json: Value,
}

fn side(samples: &[Sample]) -> Side {
    let rates: Vec<f64> = samples.iter().map(Sample::per_sec).collect();
    let rate = load::median(&rates);
    let mut lat: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_ns.iter().copied())
        .collect();
    let p50 = load::percentile_us(&mut lat, 50.0);
    let p99 = load::percentile_us(&mut lat, 99.0);
    let json = json!({
        "calls_per_s": opt(rate, 0),
        "runs_calls_per_s": rates.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
        "p50_us": opt(p50, 1),
        "p99_us": opt(p99, 1),
        "latency_samples": lat.len(),
    });
    Side {
        rate,
        p50,
        p99,
        json,
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// (key, comparison, bound) of every target the issues set.
const TARGETS: &[(&str, &str, f64)] = &[
    ("check_vs_echo_64", ">=", 0.8),
    ("check_p99_vs_echo_p99", "<=", 2.0),
    ("mutation_1_vs_sqlite", ">=", 0.5),
    ("mutation_1_vs_floor", "<=", 1.3),
    ("mutation_64_vs_echo_64", ">=", 0.5),
    ("ctl_status_vs_true", "<=", 2.5),
    ("rss_idle_mib", "<=", 20.0),
    ("check_token_vs_plain", ">=", 0.95),
];

/// Assembles the document.
pub fn build(inputs: Inputs) -> Report {
    let mut ratios = Map::new();
    let mut check = Map::new();
    let mut echo64 = None;
    let mut echo1_p50 = None;
    let mut check_p99_vs_echo_p99 = None;
    let mut check_p50_vs_echo_p50 = None;
    for (level, conns, pair) in &inputs.levels {
        let e = side(&pair.base);
        let c = side(&pair.subject);
        let r = ratio(c.rate, e.rate);
        ratios.insert(format!("check_vs_echo_{level}"), opt(r, 3));
        if *level == 64 {
            echo64 = e.rate;
        }
        if *level == 1 {
            echo1_p50 = e.p50;
            check_p99_vs_echo_p99 = ratio(c.p99, e.p99);
            check_p50_vs_echo_p50 = ratio(c.p50, e.p50);
        }
        check.insert(
            format!("inflight_{level}"),
            json!({ "connections": conns, "echo": e.json, "check": c.json, "check_vs_echo": opt(r, 3) }),
        );
    }
    ratios.insert(
        "check_p99_vs_echo_p99".into(),
        opt(check_p99_vs_echo_p99, 3),
    );
    ratios.insert(
        "check_p50_vs_echo_p50".into(),
        opt(check_p50_vs_echo_p50, 3),
    );

    let bare = load::median(&inputs.bare_rates);
    let m1 = side(&inputs.mut1);
    let m64 = side(&inputs.mut64);
    let mutation_1_vs_sqlite = ratio(m1.rate, bare);
    let mut bare_lat = inputs.bare_latencies_ns.clone();
    let bare_p50 = load::percentile_us(&mut bare_lat, 50.0);
    let floor = match (echo1_p50, bare_p50) {
        (Some(e), Some(b)) => Some(e + b),
        _ => None,
    };
    ratios.insert("mutation_1_vs_floor".into(), opt(ratio(m1.p50, floor), 3));
    let mutation_64_vs_echo_64 = ratio(m64.rate, echo64);
    ratios.insert("mutation_1_vs_sqlite".into(), opt(mutation_1_vs_sqlite, 3));
    ratios.insert(
        "mutation_64_vs_echo_64".into(),
        opt(mutation_64_vs_echo_64, 3),
    );
    ratios.insert(
        "mutation_64_vs_sqlite".into(),
        opt(ratio(m64.rate, bare), 3),
    );
    let mutations = json!({
        "bare_sqlite_inserts_per_s": opt(bare, 0),
        "bare_sqlite_runs_per_s": inputs.bare_rates.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
        "bare_sqlite_commit_us": opt(bare.filter(|b| *b > 0.0).map(|b| 1e6 / b), 1),
        "bare_sqlite_commit_p50_us": opt(bare_p50, 1),
        "floor_1_client_us": opt(floor, 1),
        "floor_note": "echo round trip p50 at 1 in flight + bare one-row synchronous=FULL commit p50, same run; mutation_1_vs_floor = SetEnforcement p50 at 1 client / floor",
        "clients_1": m1.json,
        "clients_64": m64.json,
        "audit_entries_at_end": inputs.audit_entries,
    });

    let ctl_med = load::median(&inputs.ctl_ms);
    let true_med = load::median(&inputs.true_ms);
    let mut ctl_sorted = inputs.ctl_ms.clone();
    ctl_sorted.sort_by(f64::total_cmp);
    let ctl_p90 = ctl_sorted
        .get((ctl_sorted.len() * 9 / 10).min(ctl_sorted.len().saturating_sub(1)))
        .copied();
    let ctl_status_vs_true = ratio(ctl_med, true_med);
    ratios.insert("ctl_status_vs_true".into(), opt(ctl_status_vs_true, 3));
    let ctl = json!({
        "runs": inputs.ctl_ms.len(),
        "ctl_status_median_ms": opt(ctl_med, 3),
        "ctl_status_p90_ms": opt(ctl_p90, 3),
        "bin_true_median_ms": opt(true_med, 3),
        "after_load_runs": inputs.ctl_after_load_ms.len(),
        "after_load_ctl_status_median_ms": opt(load::median(&inputs.ctl_after_load_ms), 3),
        "note": "ctl_status_vs_true uses the runs before the mutation phase (small database); the after_load figures are with every benchmark mutation in the store",
    });

    let token = match &inputs.token {
        Some((plain, with)) => {
            let p = side(plain);
            let t = side(with);
            let r = ratio(t.rate, p.rate);
            ratios.insert("check_token_vs_plain".into(), opt(r, 3));
            json!({ "enabled": true, "inflight": 16, "plain": p.json, "token": t.json })
        }
        None => {
            ratios.insert("check_token_vs_plain".into(), Value::Null);
            json!({
                "enabled": false,
                "note": "not measured: run with --with-token, a valid token in $DEFENSECLAW_BENCH_TOKEN and the daemon's [auth] config via --daemon-env KEY=VALUE",
            })
        }
    };

    let memory = json!({
        "rss_idle_mib": round(inputs.idle.rss_mib, 1),
        "rss_loaded_mib": round(inputs.loaded.rss_mib, 1),
        "rss_peak_mib": round(inputs.loaded.hwm_mib, 1),
        "threads_idle": inputs.idle.threads,
        "threads_loaded": inputs.loaded.threads,
    });

    let mut targets = Map::new();
    for (key, cmp, bound) in TARGETS {
        let actual = if *key == "rss_idle_mib" {
            Some(inputs.idle.rss_mib)
        } else {
            ratios.get(*key).and_then(Value::as_f64)
        };
        let met = actual.map(|a| {
            if *cmp == ">=" {
                a >= *bound
            } else {
                a <= *bound
            }
        });
        targets.insert(
            (*key).to_owned(),
            json!({ "target": format!("{cmp} {bound}"), "actual": opt(actual, 3), "met": met }),
        );
    }

    let json = json!({
        "benchmark": "defenseclaw control plane",
        "version": env!("CARGO_PKG_VERSION"),
        "machine": inputs.machine,
        "config": inputs.config,
        "check_vs_echo": Value::Object(check),
        "check_token_vs_plain": token,
        "mutations": mutations,
        "write_breakdown": inputs.breakdown,
        "group_commit": inputs.group_commit,
        "ctl_status": ctl,
        "memory": memory,
        "rss_idle_mib": round(inputs.idle.rss_mib, 1),
        "rss_loaded_mib": round(inputs.loaded.rss_mib, 1),
        "phases_s": inputs.phases,
        "ratios": Value::Object(ratios),
        "targets": Value::Object(targets),
    });
    Report { json }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising the report")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").context("writing the report")?;
    Ok(())
}

fn num(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "-".into(),
        }
    }
    match cur {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Prints the report as aligned lines on stdout.
pub fn print_table(report: &Report) {
    let j = &report.json;
    println!(
        "defenseclaw control-plane benchmark ({} cores, {})",
        num(j, &["machine", "cores"]),
        num(j, &["machine", "cpu"])
    );
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "throughput (calls/s)", "echo", "check", "ratio"
    );
    for level in [1, 16, 64] {
        let key = format!("inflight_{level}");
        println!(
            "{:<34} {:>12} {:>12} {:>8}",
            format!("  {level} in flight"),
            num(j, &["check_vs_echo", &key, "echo", "calls_per_s"]),
            num(j, &["check_vs_echo", &key, "check", "calls_per_s"]),
            num(j, &["check_vs_echo", &key, "check_vs_echo"]),
        );
    }
    for p in ["p50_us", "p99_us"] {
        println!(
            "{:<34} {:>12} {:>12}",
            format!("  latency {p} at 1"),
            num(j, &["check_vs_echo", "inflight_1", "echo", p]),
            num(j, &["check_vs_echo", "inflight_1", "check", p]),
        );
    }
    println!();
    println!(
        "{:<34} {:>12}",
        "bare SQLite inserts/s",
        num(j, &["mutations", "bare_sqlite_inserts_per_s"])
    );
    println!(
        "{:<34} {:>12}",
        "SetEnforcement/s, 1 client",
        num(j, &["mutations", "clients_1", "calls_per_s"])
    );
    println!(
        "{:<34} {:>12}",
        "SetEnforcement/s, 64 clients",
        num(j, &["mutations", "clients_64", "calls_per_s"])
    );
    println!(
        "{:<34} {:>12}",
        "ctl status median ms",
        num(j, &["ctl_status", "ctl_status_median_ms"])
    );
    println!(
        "{:<34} {:>12}",
        "/bin/true median ms",
        num(j, &["ctl_status", "bin_true_median_ms"])
    );
    println!(
        "{:<34} {:>12}",
        "daemon RSS idle MiB",
        num(j, &["rss_idle_mib"])
    );
    println!(
        "{:<34} {:>12}",
        "daemon RSS loaded MiB",
        num(j, &["rss_loaded_mib"])
    );
    println!();
    println!(
        "{:<34} {:>12} {:>10} {:>6}",
        "ratio", "actual", "target", "met"
    );
    if let Some(Value::Object(ratios)) = j.get("ratios") {
        for (key, value) in ratios {
            let target = j.get("targets").and_then(|t| t.get(key));
            let bound = target
                .and_then(|t| t.get("target"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let met = match target.and_then(|t| t.get("met")) {
                Some(Value::Bool(true)) => "yes",
                Some(Value::Bool(false)) => "NO",
                _ => "",
            };
            let shown = if value.is_null() {
                "-".to_owned()
            } else {
                value.to_string()
            };
            println!("{key:<34} {shown:>12} {bound:>10} {met:>6}");
        }
    }
    let rss = j.get("targets").and_then(|t| t.get("rss_idle_mib"));
    if let Some(t) = rss {
        println!(
            "{:<34} {:>12} {:>10} {:>6}",
            "rss_idle_mib",
            num(j, &["rss_idle_mib"]),
            t.get("target").and_then(Value::as_str).unwrap_or(""),
            match t.get("met") {
                Some(Value::Bool(true)) => "yes",
                Some(Value::Bool(false)) => "NO",
                _ => "",
            }
        );
    }
}
