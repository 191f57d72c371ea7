//! The `scale` subcommand: the same read-side figures on an empty store and
//! on a store filled to N audit entries and M targets, side by side.
//!
//! Bulk path: before the daemon starts, the benchmark opens the daemon's
//! database in process with [`defenseclawd::store::Store`] and writes through
//! its writer thread: `RegisterTargets` (one audit entry per new target, a
//! thousand targets per operation) then bare `Audit` entries, many operations
//! in flight so the writer groups them. It is the daemon's own writer, so the
//! rows and the hash chain are exactly what the daemon would have written
//! (`audit verify` on the daemon checks it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclawd::audit::NewEntry;
use defenseclawd::clock::Clock;
use defenseclawd::model::{Actor, Target, TargetKind};
use defenseclawd::state::StateCache;
use defenseclawd::store::{Audit, RegisterTargets, Store, WriterContext};
use serde_json::{Value, json};

use crate::load::{self, Workload};
use crate::procs::{self, DaemonLayout};
use crate::report;
use crate::uds;

/// Options of `scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Audit entries in the filled store (targets' discovery entries included).
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Targets in the filled store.
    #[arg(long, default_value_t = 100_000)]
    pub targets: u64,
    /// The defenseclawd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<std::path::PathBuf>,
    /// The defenseclawctl binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub ctl_bin: Option<std::path::PathBuf>,
    /// Directory for the two stores [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Runs of `defenseclawctl status` / `audit list --limit 20` each.
    #[arg(long, default_value_t = 30)]
    pub ctl_runs: u32,
}

/// Targets per `RegisterTargets` operation, and operations kept in flight.
const TARGETS_PER_OP: u64 = 1000;
const IN_FLIGHT: usize = 1024;

/// Runs the scale comparison and prints one JSON document.
pub fn run(args: &ScaleArgs) -> anyhow::Result<()> {
    let daemon_bin = match &args.daemon_bin {
        Some(p) => p.clone(),
        None => procs::sibling_binary("defenseclawd")?,
    };
    let ctl_bin = match &args.ctl_bin {
        Some(p) => p.clone(),
        None => procs::sibling_binary("defenseclawctl")?,
    };
    procs::require_binary(&daemon_bin, "defenseclawd", "--daemon-bin")?;
    procs::require_binary(&ctl_bin, "defenseclawctl", "--ctl-bin")?;
    let dir = procs::bench_dir(args.dir.as_deref(), "dcscale-")?;
    let runtime = procs::client_runtime()?;
    let targets = args.targets.min(args.entries);
    let result = runtime.block_on(async {
        let empty = measure(&daemon_bin, &ctl_bin, &dir.path().join("empty"), args, None).await?;
        let filled = measure(
            &daemon_bin,
            &ctl_bin,
            &dir.path().join("filled"),
            args,
            Some((args.entries, targets)),
        )
        .await?;
        anyhow::Ok((empty, filled))
    })?;
    let (empty, filled) = result;
    let ratio = |key: &str| match (
        empty.get(key).and_then(Value::as_f64),
        filled.get(key).and_then(Value::as_f64),
    ) {
        (Some(e), Some(f)) if e > 0.0 => report::round(f / e, 3),
        _ => Value::Null,
    };
    let v = json!({
        "benchmark": "defenseclaw scale",
        "entries": args.entries,
        "targets": targets,
        "bulk_path": "the daemon's own store writer, in process before the daemon starts: RegisterTargets (one audit entry per new target) then bare Audit entries, grouped by the writer; the daemon verifies the chain",
        "machine": { "loadavg_start": crate::control::loadavg(), "cpu": crate::control::cpu_model() },
        "empty": empty,
        "filled": filled,
        "filled_vs_empty": {
            "ctl_status_ms": ratio("ctl_status_ms"),
            "ctl_audit_list_20_ms": ratio("ctl_audit_list_20_ms"),
            "check_target_calls_per_s": ratio("check_target_calls_per_s"),
        },
        "targets_met": {
            "ctl_status_filled_vs_empty_le_1_2": ratio("ctl_status_ms").as_f64().map(|r| r <= 1.2),
            "audit_verify_ge_500k_per_s": filled.get("audit_verify_entries_per_s").and_then(Value::as_f64).map(|r| r >= 500_000.0),
            "audit_export_ge_200k_per_s": filled.get("audit_export_entries_per_s").and_then(Value::as_f64).map(|r| r >= 200_000.0),
        },
    });
    report::print_json(&v)
}

/// Fills a store under `dir` (when `fill` is set), starts the daemon on it and
/// measures every read-side figure.
async fn measure(
    daemon_bin: &Path,
    ctl_bin: &Path,
    dir: &Path,
    args: &ScaleArgs,
    fill: Option<(u64, u64)>,
) -> anyhow::Result<Value> {
    let layout = DaemonLayout::under(dir);
    std::fs::create_dir_all(dir.join("run")).context("creating run/")?;
    let mut fill_s = None;
    if let Some((entries, targets)) = fill {
        let t = Instant::now();
        bulk_fill(&layout, entries, targets).await?;
        fill_s = Some(t.elapsed().as_secs_f64());
        say!(
            "filled {entries} entries / {targets} targets in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let mut daemon = procs::spawn_daemon(daemon_bin, &layout, &[])?;
    procs::wait_ready(&mut daemon, || {
        let socket = layout.socket.clone();
        async move {
            let mut c = ControlClient::new(uds::channel(&socket).await?);
            c.get_status(pb::GetStatusRequest {}).await?;
            Ok(())
        }
    })
    .await?;
    let rss_start = daemon.memory_mib()?;
    let mut c = ControlClient::new(uds::channel(&layout.socket).await?);
    let status = c.get_status(pb::GetStatusRequest {}).await?.into_inner();
    let entries = status.counts.as_ref().map_or(0, |c| c.audit_entries);

    // defenseclawctl status and audit list --limit 20 (wall time, median).
    let home = dir.join("ctl-home");
    std::fs::create_dir_all(&home).context("creating ctl-home/")?;
    let (status_ms, list_ms) = {
        let (ctl, socket, runs) = (ctl_bin.to_owned(), layout.socket.clone(), args.ctl_runs);
        tokio::task::spawn_blocking(move || {
            let time = |extra: &[&str]| -> anyhow::Result<f64> {
                let mut v = Vec::new();
                for _ in 0..runs {
                    let mut cmd = procs::ctl_status_command(&ctl, &socket, &home);
                    if !extra.is_empty() {
                        cmd = procs::ctl_command(&ctl, &socket, &home, extra);
                    }
                    v.push(procs::time_process(&mut cmd)?.as_secs_f64() * 1000.0);
                }
                Ok(load::median(&v).unwrap_or(0.0))
            };
            anyhow::Ok((time(&[])?, time(&["audit", "list", "--limit", "20"])?))
        })
        .await
        .context("the ctl timing task failed")??
    };

    // audit verify, entries/s.
    let t = Instant::now();
    let verified = c
        .verify_audit(pb::VerifyAuditRequest::default())
        .await?
        .into_inner();
    let verify_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        verified.ok,
        "the chain did not verify: {}",
        verified.problem
    );

    // audit export, entries/s (the whole stream, decoded).
    let t = Instant::now();
    let mut stream = c
        .export_audit(pb::ExportAuditRequest {})
        .await?
        .into_inner();
    let mut exported = 0u64;
    while let Some(entry) = stream.message().await? {
        exported += 1;
        std::hint::black_box(entry);
    }
    let export_s = t.elapsed().as_secs_f64();

    // CheckTarget at 16 in flight over 16 names.
    let names: Arc<Vec<String>> = Arc::new((0..16).map(|i| format!("scale-{i}")).collect());
    let channels = uds::channels(&layout.socket, 1).await?;
    let check = load::run(
        &channels,
        16,
        &Workload::Check { names, token: None },
        Duration::from_millis(250),
        Duration::from_millis(1000),
    )
    .await?;
    let rss = daemon.memory_mib()?;
    drop(channels);
    drop(c);
    drop(daemon);
    let db_bytes = ["", "-wal"]
        .iter()
        .map(|suffix| {
            let mut p = layout.db().into_os_string();
            p.push(suffix);
            std::fs::metadata(p).map_or(0, |m| m.len())
        })
        .sum::<u64>();
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(json!({
        "audit_entries": entries,
        "targets": status.counts.as_ref().map_or(0, |c| c.targets),
        "fill_s": fill_s.map_or(Value::Null, |s| report::round(s, 1)),
        "ctl_status_ms": report::round(status_ms, 2),
        "ctl_audit_list_20_ms": report::round(list_ms, 2),
        "audit_verify_s": report::round(verify_s, 3),
        "audit_verify_entries_per_s": report::round(per_s(verified.entries_checked, verify_s), 0),
        "audit_export_s": report::round(export_s, 3),
        "audit_export_entries": exported,
        "audit_export_entries_per_s": report::round(per_s(exported, export_s), 0),
        "check_target_calls_per_s": report::round(check.per_sec(), 0),
        "db_bytes": db_bytes,
        "db_bytes_per_entry": if entries > 0 { report::round(db_bytes as f64 / entries as f64, 1) } else { Value::Null },
        "rss_after_start_mib": report::round(rss_start.rss_mib, 1),
        "rss_after_reads_mib": report::round(rss.rss_mib, 1),
    }))
}

/// Writes `targets` discovered targets and then bare entries up to `entries`
/// through the store's own writer.
async fn bulk_fill(layout: &DaemonLayout, entries: u64, targets: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layout.home)
        .context("creating the store's home")?;
    let ctx = WriterContext {
        cache: Arc::new(StateCache::default()),
        head_log_every: 0,
        clock: Clock::system(),
    };
    let db = layout.db();
    let (store, writer) = tokio::task::spawn_blocking(move || Store::open(&db, ctx))
        .await
        .context("the open task failed")?
        .context("opening the store")?;
    let actor = Actor::system();
    let mut pending = tokio::task::JoinSet::new();
    let mut next_target = 0u64;
    while next_target < targets {
        let batch: Vec<Target> = (next_target..(next_target + TARGETS_PER_OP).min(targets))
            .map(|i| Target {
                kind: if i % 10 == 0 {
                    TargetKind::Mcp
                } else {
                    TargetKind::Skill
                },
                name: format!("scale-target-{i}"),
            })
            .collect();
        next_target += batch.len() as u64;
        let (store, actor) = (store.clone(), actor.clone());
        pending.spawn(async move {
            store
                .write(RegisterTargets {
                    targets: batch,
                    actor,
                    source: "defenseclaw-bench scale".into(),
                })
                .await
                .map(|_| ())
        });
        while pending.len() >= 8 {
            join_one(&mut pending).await?;
        }
    }
    while !pending.is_empty() {
        join_one(&mut pending).await?;
    }
    for i in 0..entries.saturating_sub(targets) {
        let (store, actor) = (store.clone(), actor.clone());
        pending.spawn(async move {
            store
                .write(Audit(NewEntry {
                    action: "observed".into(),
                    target: Some(Target {
                        kind: TargetKind::Skill,
                        name: format!("scale-target-{}", i % targets.max(1)),
                    }),
                    severity: None,
                    outcome: "recorded".into(),
                    reason: "defenseclaw-bench scale fill".into(),
                    details: json!({ "n": i }),
                    actor,
                }))
                .await
                .map(|_| ())
        });
        while pending.len() >= IN_FLIGHT {
            join_one(&mut pending).await?;
        }
    }
    while !pending.is_empty() {
        join_one(&mut pending).await?;
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("the join task failed")?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    Ok(())
}

async fn join_one(
    set: &mut tokio::task::JoinSet<defenseclawd::error::Result<()>>,
) -> anyhow::Result<()> {
    if let Some(done) = set.join_next().await {
        done.context("a fill task failed")?
            .map_err(|e| anyhow::anyhow!("a fill write failed: {e}"))?;
    }
    Ok(())
}
