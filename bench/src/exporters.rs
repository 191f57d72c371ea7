//! The `exporters` subcommand: durable-mutation throughput (`SetEnforcement`
//! block of a fresh skill, one audit entry each) with no audit sink, with one
//! (syslog to a real rsyslog) and with three (a JSON-lines file, syslog to a
//! real rsyslog, a signed webhook to a local receiver), at 1 and 64 clients;
//! and, under that load, each network sink's delivery lag: from the
//! mutation's reply reaching the client to the receiver taking its entry
//! (rsyslog's own reception time, `timegenerated`; the webhook receiver's
//! clock on the same machine).
//!
//! Each repetition starts a fresh daemon (fresh store, fresh receivers) per
//! configuration, alternating the configurations, and runs 1 then 64
//! clients; after each window it waits until every sink's cursor reaches the
//! audit head, so the next window starts without a backlog. Sinks use their
//! default settings (batch 100, flush 200 ms).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclaw_testkit::faulty::{Faulty, Mode};
use defenseclaw_testkit::rsyslog::Rsyslog;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::load;
use crate::procs::{self, DaemonLayout};
use crate::report;
use crate::uds;

/// Options of `exporters`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportersArgs {
    /// The defenseclawd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// Directory for the stores and receivers [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Alternating repetitions of every configuration (figures are medians).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measured window per run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub window_secs: f64,
    /// Unmeasured warm-up per run, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Longest wait for the sinks to catch up after a window, in seconds.
    #[arg(long, default_value_t = 300)]
    pub drain_secs: u64,
}

/// Client counts measured.
const CLIENTS: [usize; 2] = [1, 64];
/// Calls in flight per HTTP/2 connection (as in the control-plane benchmark).
const INFLIGHT_PER_CONNECTION: usize = 16;
/// The webhook's signing secret (a benchmark value, never a real one).
const HOOK_SECRET: &str = "defenseclaw-bench-webhook-secret";

/// Which sinks are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sinks {
    None,
    Syslog,
    Three,
}

impl Sinks {
    const ALL: [Self; 3] = [Self::None, Self::Syslog, Self::Three];

    fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Syslog => "one_syslog",
            Self::Three => "three_file_syslog_webhook",
        }
    }
}

/// One window's figures.
#[derive(Debug, Clone, Default)]
struct Window {
    per_sec: f64,
    /// Sink name -> (p50, p99) delivery lag in ms.
    lag_ms: HashMap<&'static str, (f64, f64)>,
    drain_s: f64,
}

/// Runs the comparison and prints one JSON document.
pub fn run(args: &ExportersArgs) -> anyhow::Result<()> {
    let daemon_bin = match &args.daemon_bin {
        Some(p) => p.clone(),
        None => procs::sibling_binary("defenseclawd")?,
    };
    procs::require_binary(&daemon_bin, "defenseclawd", "--daemon-bin")?;
    if args.reps == 0 || args.window_secs <= 0.0 {
        bail!("--reps and --window-secs must be positive");
    }
    let dir = procs::bench_dir(args.dir.as_deref(), "dcexport-")?;
    let runtime = procs::client_runtime()?;
    let loadavg_start = crate::control::loadavg();
    // results[sinks][clients] = one Window per rep.
    let mut results: HashMap<(Sinks, usize), Vec<Window>> = HashMap::new();
    runtime.block_on(async {
        for rep in 0..args.reps {
            for sinks in Sinks::ALL {
                let run_dir = dir.path().join(format!("{}-{rep}", sinks.label()));
                let windows = measure(&daemon_bin, &run_dir, sinks, args).await?;
                for (clients, w) in windows {
                    say!(
                        "rep {} {} x{clients}: {:.0} mutations/s, lag {:?}, drained in {:.1} s",
                        rep + 1,
                        sinks.label(),
                        w.per_sec,
                        w.lag_ms,
                        w.drain_s
                    );
                    results.entry((sinks, clients)).or_default().push(w);
                }
                std::fs::remove_dir_all(&run_dir).ok();
            }
        }
        anyhow::Ok(())
    })?;

    let median_rate = |sinks: Sinks, clients: usize| {
        let v: Vec<f64> = results
            .get(&(sinks, clients))
            .map(|ws| ws.iter().map(|w| w.per_sec).collect())
            .unwrap_or_default();
        load::median(&v).unwrap_or(0.0)
    };
    let mut configs = serde_json::Map::new();
    let mut met = serde_json::Map::new();
    for sinks in Sinks::ALL {
        let mut by_clients = serde_json::Map::new();
        for clients in CLIENTS {
            let windows = results.get(&(sinks, clients)).cloned().unwrap_or_default();
            let rate = median_rate(sinks, clients);
            let base = median_rate(Sinks::None, clients);
            let ratio = (base > 0.0).then(|| rate / base);
            let mut lags = serde_json::Map::new();
            for sink in ["syslog", "webhook"] {
                let p50: Vec<f64> = windows
                    .iter()
                    .filter_map(|w| w.lag_ms.get(sink).map(|l| l.0))
                    .collect();
                let p99: Vec<f64> = windows
                    .iter()
                    .filter_map(|w| w.lag_ms.get(sink).map(|l| l.1))
                    .collect();
                if !p99.is_empty() {
                    lags.insert(
                        sink.to_owned(),
                        json!({
                            "p50_ms_median": load::median(&p50).map(|x| report::round(x, 2)),
                            "p99_ms_median": load::median(&p99).map(|x| report::round(x, 2)),
                            "p99_ms_runs": p99.iter().map(|x| report::round(*x, 2)).collect::<Vec<_>>(),
                        }),
                    );
                }
            }
            if sinks != Sinks::None {
                met.insert(
                    format!("{}_x{clients}_ge_0_9_of_none", sinks.label()),
                    json!(ratio.map(|r| r >= 0.9)),
                );
            }
            by_clients.insert(
                format!("clients_{clients}"),
                json!({
                    "mutations_per_s_median": report::round(rate, 0),
                    "mutations_per_s_runs": windows.iter().map(|w| report::round(w.per_sec, 0)).collect::<Vec<_>>(),
                    "vs_none": ratio.map(|r| report::round(r, 3)),
                    "delivery_lag": lags,
                    "drain_s_runs": windows.iter().map(|w| report::round(w.drain_s, 2)).collect::<Vec<_>>(),
                }),
            );
        }
        configs.insert(sinks.label().to_owned(), Value::Object(by_clients));
    }
    let v = json!({
        "benchmark": "defenseclaw exporters",
        "workload": "SetEnforcement block of a fresh skill per call (one durable audit entry each), closed loop, 16 calls per connection",
        "sinks": {
            "one_syslog": "syslog over TCP to a real rsyslogd (private config, loopback)",
            "three_file_syslog_webhook": "JSON-lines file + syslog to rsyslogd + HMAC-signed webhook to a local HTTP/1.1 receiver (the testkit's scripted receiver in normal mode)",
            "settings": "defaults: batch_size 100, flush_interval_ms 200",
        },
        "lag": "mutation reply at the client -> the receiver taking the entry (rsyslog timegenerated; the webhook receiver's clock); entries replied inside the measured window",
        "reps": args.reps,
        "window_s": args.window_secs,
        "warmup_s": args.warmup_secs,
        "machine": {
            "loadavg_start": loadavg_start,
            "loadavg_end": crate::control::loadavg(),
            "cpu": crate::control::cpu_model(),
        },
        "configs": configs,
        "targets_met": met,
    });
    report::print_json(&v)
}

/// One configuration on a fresh daemon: a window at each client count.
async fn measure(
    daemon_bin: &Path,
    dir: &Path,
    sinks: Sinks,
    args: &ExportersArgs,
) -> anyhow::Result<Vec<(usize, Window)>> {
    std::fs::create_dir_all(dir.join("run")).context("creating run/")?;
    let layout = DaemonLayout::under(dir);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut rsyslog = None;
    let mut hook = None;
    if sinks != Sinks::None {
        let mut rs = Rsyslog::new()?;
        rs.start().await?;
        env.push(("DEFENSECLAW_EXPORT__SIEM__KIND".into(), "syslog".into()));
        env.push(("DEFENSECLAW_EXPORT__SIEM__URL".into(), rs.url()));
        rsyslog = Some(rs);
    }
    if sinks == Sinks::Three {
        let rx = Faulty::webhook(Mode::Normal).await?;
        env.push(("DEFENSECLAW_EXPORT__HOOK__KIND".into(), "webhook".into()));
        env.push(("DEFENSECLAW_EXPORT__HOOK__URL".into(), rx.url().to_owned()));
        env.push(("DEFENSECLAW_EXPORT_HOOK_TOKEN".into(), HOOK_SECRET.into()));
        hook = Some(rx);
        let file = dir.join("export.jsonl");
        env.push(("DEFENSECLAW_EXPORT__LOCAL__KIND".into(), "file".into()));
        env.push((
            "DEFENSECLAW_EXPORT__LOCAL__URL".into(),
            format!("file://{}", file.display()),
        ));
    }
    let mut daemon = procs::spawn_daemon(daemon_bin, &layout, &env)?;
    procs::wait_ready(&mut daemon, || {
        let socket = layout.socket.clone();
        async move {
            let mut c = ControlClient::new(uds::channel(&socket).await?);
            c.get_status(pb::GetStatusRequest {}).await?;
            Ok(())
        }
    })
    .await?;
    let mut control = ControlClient::new(uds::channel(&layout.socket).await?);
    let counter = Arc::new(AtomicU64::new(0));
    let mut out = Vec::new();
    for clients in CLIENTS {
        let conns = clients.div_ceil(INFLIGHT_PER_CONNECTION);
        let channels = uds::channels(&layout.socket, conns).await?;
        let prefix: Arc<str> = Arc::from(format!("bench-export-x{clients}"));
        let replies = closed_loop(
            &channels,
            clients,
            &prefix,
            &counter,
            Duration::from_secs_f64(args.warmup_secs),
            Duration::from_secs_f64(args.window_secs),
        )
        .await?;
        daemon.ensure_running()?;
        let per_sec = replies.len() as f64 / args.window_secs;
        let t = Instant::now();
        drain(&mut control, Duration::from_secs(args.drain_secs)).await?;
        let drain_s = t.elapsed().as_secs_f64();
        let mut lag_ms = HashMap::new();
        if let Some(rs) = &rsyslog {
            let seen = rs
                .received()?
                .into_iter()
                .filter(|r| r.msg.get("type").is_none())
                .filter_map(|r| Some((r.msg["seq"].as_u64()?, parse_rfc3339(&r.received_at)?)));
            lag_ms.insert("syslog", lags(&replies, seen)?);
        }
        if let Some(rx) = &hook {
            let seen = rx
                .received_at()
                .into_iter()
                .filter(|(v, _)| v.get("type").is_none())
                .filter_map(|(v, at)| Some((v["seq"].as_u64()?, at)));
            lag_ms.insert("webhook", lags(&replies, seen)?);
        }
        out.push((
            clients,
            Window {
                per_sec,
                lag_ms,
                drain_s,
            },
        ));
    }
    daemon.terminate(Duration::from_secs(30))?;
    Ok(out)
}

/// `inflight` closed-loop callers over `channels`, each blocking a fresh
/// skill per call; returns (audit seq, reply time) of every call that both
/// started and completed inside the window.
async fn closed_loop(
    channels: &[Channel],
    inflight: usize,
    prefix: &Arc<str>,
    counter: &Arc<AtomicU64>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Vec<(u64, SystemTime)>> {
    let begin = Instant::now() + warmup;
    let end = begin + window;
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..inflight {
        let mut client = ControlClient::new(channels[slot % channels.len()].clone());
        let (prefix, counter) = (prefix.clone(), counter.clone());
        tasks.spawn(async move {
            let mut replies = Vec::with_capacity(8192);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    return Ok::<_, anyhow::Error>(replies);
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let reply = client
                    .set_enforcement(pb::SetEnforcementRequest {
                        target: Some(pb::TargetRef {
                            kind: pb::TargetKind::Skill as i32,
                            name: format!("{prefix}-{n}"),
                        }),
                        action: pb::EnforcementAction::Block as i32,
                        reason: "defenseclaw-bench exporter load".to_owned(),
                        connections: Vec::new(),
                    })
                    .await
                    .context("SetEnforcement")?
                    .into_inner();
                let (t1, at) = (Instant::now(), SystemTime::now());
                if !reply.changed {
                    bail!("SetEnforcement reported no change for a fresh target");
                }
                if t0 >= begin && t1 <= end {
                    replies.push((reply.audit_seq, at));
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a load task failed")??);
    }
    Ok(all)
}

/// Waits until every sink's cursor has reached the audit head.
async fn drain(c: &mut ControlClient<Channel>, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let s = c.get_status(pb::GetStatusRequest {}).await?.into_inner();
        let head = s.audit_head.map_or(0, |h| h.seq);
        if s.exporters.iter().all(|e| e.cursor >= head) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "the sinks did not catch up within {limit:?}: {:?}",
                s.exporters
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// p50 and p99 (ms) of reply -> first reception, over every measured reply;
/// fails if a replied entry never arrived.
fn lags(
    replies: &[(u64, SystemTime)],
    seen: impl Iterator<Item = (u64, SystemTime)>,
) -> anyhow::Result<(f64, f64)> {
    let mut first: HashMap<u64, SystemTime> = HashMap::new();
    for (seq, at) in seen {
        first
            .entry(seq)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let mut ns = Vec::with_capacity(replies.len());
    for (seq, replied) in replies {
        let got = first
            .get(seq)
            .with_context(|| format!("entry {seq} was replied to but never arrived"))?;
        // Negative when the receiver had it before the client had the reply.
        let lag = got.duration_since(*replied).unwrap_or(Duration::ZERO);
        ns.push(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX));
    }
    let p50 = load::percentile_us(&mut ns, 50.0).unwrap_or(0.0) / 1000.0;
    let p99 = load::percentile_us(&mut ns, 99.0).unwrap_or(0.0) / 1000.0;
    Ok((p50, p99))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to a system time.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").get(..9)?.parse().ok()?
    };
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - offset_s;
    UNIX_EPOCH.checked_add(Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_with_offsets_and_fractions() {
        let t = |s| {
            parse_rfc3339(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), Duration::ZERO);
        assert_eq!(
            t("2026-12-04T21:50:00.123456+00:00"),
            Duration::new(1_796_421_000, 123_456_000)
        );
        assert_eq!(
            t("2026-12-04T22:50:00.5+01:00"),
            Duration::new(1_796_421_000, 500_000_000)
        );
    }
}
