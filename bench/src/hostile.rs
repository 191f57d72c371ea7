//! `hostile`: the daemon under hostile clients. Resident memory before,
//! during and after a flood of streaming calls that never read, and
//! `GetStatus` latency while a flood of idle connections and FIFO scans is
//! held open. The daemon runs with its shipped limits unless `--daemon-env`
//! says otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use defenseclaw_proto::v1 as pb;
use pb::control_client::ControlClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::control::{cpu_model, loadavg};
use crate::load::percentile_us;
use crate::procs::{self, DaemonLayout};
use crate::report;

/// Options of `hostile`.
#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// The defenseclawd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// Directory for the daemon's state and socket [default: a temporary one].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the directory (daemon log, database) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Streaming calls opened and never read (half ExportAudit, half FollowAudit from the start).
    #[arg(long, value_name = "N", default_value_t = 1500)]
    pub streams: usize,
    /// Audit entries (of about 2.4 KB each) written first, so each stream has plenty to send.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub entries: usize,
    /// Idle connections (preface sent, no call) opened while `GetStatus` is timed.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub idle_connections: usize,
    /// ScanTarget calls on FIFOs held in flight while `GetStatus` is timed.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub fifo_scans: usize,
    /// `GetStatus` calls timed in each phase.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub status_calls: usize,
    /// Seconds the streams are held before memory is read.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub hold_secs: u64,
    /// Extra daemon environment (repeatable), e.g. a `DEFENSECLAW_SERVER__*` limit.
    #[arg(long = "daemon-env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub daemon_env: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Streams opened per connection: the daemon's default per-connection cap,
/// so no call waits in the client for a free HTTP/2 stream.
const STREAMS_PER_CONNECTION: usize = 32;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Runs the hostile-client measurement and prints one JSON document.
pub fn run(args: &HostileArgs) -> anyhow::Result<()> {
    let daemon_bin = match &args.daemon_bin {
        Some(p) => p.clone(),
        None => procs::sibling_binary("defenseclawd")?,
    };
    procs::require_binary(&daemon_bin, "defenseclawd", "--daemon-bin")?;
    let dir = procs::bench_dir(args.dir.as_deref(), "dcbench-hostile-")?;
    let runtime = procs::client_runtime()?;
    let layout = DaemonLayout::under(dir.path());
    let result = runtime.block_on(measure(args, &daemon_bin, &layout));
    // Calls stuck on the daemon side (FIFO scans) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if args.keep {
        let kept = dir.keep();
        say!("kept {}", kept.display());
    }
    report::print_json(&result?)
}

async fn measure(
    args: &HostileArgs,
    daemon_bin: &Path,
    layout: &DaemonLayout,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let loadavg_start = loadavg();
    std::fs::create_dir_all(layout.socket.parent().unwrap_or(&layout.home))
        .context("creating run/")?;
    let mut daemon = procs::spawn_daemon(daemon_bin, layout, &args.daemon_env)?;
    procs::wait_ready(&mut daemon, || {
        let socket = layout.socket.clone();
        async move {
            let mut c = ControlClient::new(crate::uds::channel(&socket).await?);
            c.get_status(pb::GetStatusRequest {}).await?;
            Ok(())
        }
    })
    .await?;
    let rss_start = daemon.memory_mib()?.rss_mib;

    // ---- an audit log with something to stream
    let mut c = ControlClient::new(crate::uds::channel(&layout.socket).await?);
    let reason = "r".repeat(2000);
    let t = Instant::now();
    for i in 0..args.entries {
        let action = if i % 2 == 0 {
            pb::EnforcementAction::Block
        } else {
            pb::EnforcementAction::Unblock
        };
        c.set_enforcement(pb::SetEnforcementRequest {
            target: Some(pb::TargetRef {
                kind: pb::TargetKind::Skill as i32,
                name: format!("hostile-{}", i / 2),
            }),
            action: action as i32,
            reason: reason.clone(),
            connections: Vec::new(),
        })
        .await
        .context("writing the audit log")?;
    }
    let fill_s = t.elapsed().as_secs_f64();
    say!("{} audit entries written in {fill_s:.1} s", args.entries);
    daemon.ensure_running()?;
    let rss_before = daemon.memory_mib()?.rss_mib;

    // ---- slow streams: opened, never read
    let t = Instant::now();
    let (held, streams) = slow_streams(&layout.socket, args.streams).await?;
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    daemon.ensure_running()?;
    let during = daemon.memory_mib()?;
    say!(
        "{} streams: {} served, {} refused RESOURCE_EXHAUSTED, {} other; RSS {:.1} MiB",
        args.streams,
        streams.served,
        streams.refused,
        streams.other,
        during.rss_mib
    );
    // Close them all, then wait until every stream slot is free again.
    drop(held);
    let settle = wait_streams_freed(&layout.socket).await?;
    daemon.ensure_running()?;
    let after = daemon.memory_mib()?;
    let streams_s = t.elapsed().as_secs_f64();
    say!(
        "streams closed; slots free after {settle:.1} s; RSS {:.1} MiB (peak {:.1})",
        after.rss_mib,
        after.hwm_mib
    );

    // ---- GetStatus latency: quiet, then with idle connections and FIFO scans held
    let t = Instant::now();
    // Connected first: the flood must not take this client's slot.
    let mut status_client = ControlClient::new(crate::uds::channel(&layout.socket).await?);
    let quiet = status_latency(&mut status_client, args.status_calls).await?;
    let scan_channels = crate::uds::channels(&layout.socket, args.fifo_scans).await?;
    let (idle, idle_held, idle_refused) =
        idle_connections(&layout.socket, args.idle_connections).await?;
    let with_idle = status_latency(&mut status_client, args.status_calls).await?;
    daemon.ensure_running()?;
    let rss_idle_flood = daemon.memory_mib()?.rss_mib;
    say!(
        "GetStatus p50/p99: quiet {}, with {idle_held} idle connections held ({idle_refused} closed by the cap) {}",
        quiet.show(),
        with_idle.show()
    );
    let scans = fifo_scans(scan_channels, layout)?;
    let with_scans = status_latency(&mut status_client, args.status_calls).await?;
    let scan_outcomes = scans.outcomes().await;
    say!(
        "GetStatus p50/p99 with {} FIFO scans as well: {}",
        args.fifo_scans,
        with_scans.show()
    );
    drop(idle);
    let status_s = t.elapsed().as_secs_f64();
    daemon.ensure_running()?;
    let rss_end = daemon.memory_mib()?;

    Ok(json!({
        "benchmark": "hostile clients",
        "rss_mib": {
            "start": report::round(rss_start, 1),
            "before_streams": report::round(rss_before, 1),
            "during_streams": report::round(during.rss_mib, 1),
            "after_streams": report::round(after.rss_mib, 1),
            "with_idle_connections": report::round(rss_idle_flood, 1),
            "end": report::round(rss_end.rss_mib, 1),
            "peak": report::round(rss_end.hwm_mib, 1),
        },
        "streams": {
            "opened": args.streams,
            "served": streams.served,
            "refused_resource_exhausted": streams.refused,
            "other": streams.other,
            "connections": args.streams.div_ceil(STREAMS_PER_CONNECTION),
            "slots_free_after_close_s": report::round(settle, 2),
        },
        "status_latency_us": {
            "quiet": quiet.json(),
            "idle_connections": with_idle.json(),
            "idle_connections_and_fifo_scans": with_scans.json(),
            "calls_per_phase": args.status_calls,
            "call_timeout_s": STATUS_TIMEOUT.as_secs(),
        },
        "idle_connections": {
            "opened": args.idle_connections,
            "held": idle_held,
            "closed_by_cap": idle_refused,
        },
        "fifo_scans": scan_outcomes,
        "entries": args.entries,
        "daemon_env_keys": args.daemon_env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "targets": {
            "during_streams_bounded": {
                "target": "during - before <= 128 MiB (the caps, not the flood, set the size)",
                "met": during.rss_mib - rss_before <= 128.0,
            },
            "after_streams_near_idle": {
                "target": "after - before <= 32 MiB",
                "met": after.rss_mib - rss_before <= 32.0,
            },
            "status_p99_with_idle_connections_us": {
                "target": "<= 10000",
                "met": with_idle.timed_out == 0 && with_idle.p99 <= 10_000.0,
            },
            "status_p99_with_idle_connections_and_fifo_scans_us": {
                "target": "<= 10000",
                "met": with_scans.timed_out == 0 && with_scans.p99 <= 10_000.0,
            },
        },
        "phases_s": {
            "fill": report::round(fill_s, 2),
            "streams": report::round(streams_s, 2),
            "status": report::round(status_s, 2),
            "total": report::round(started.elapsed().as_secs_f64(), 2),
        },
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            "cpu": cpu_model(),
            "loadavg_start": loadavg_start,
            "loadavg_end": loadavg(),
        },
    }))
}

/// How the daemon answered the streaming calls.
#[derive(Debug, Default)]
struct StreamOutcomes {
    served: usize,
    refused: usize,
    other: usize,
}

/// Opens `n` streaming calls on connections with small flow-control windows
/// and reads none of them; returns what keeps them open.
async fn slow_streams(
    socket: &Path,
    n: usize,
) -> anyhow::Result<(Vec<Box<dyn Send>>, StreamOutcomes)> {
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    let mut outcomes = StreamOutcomes::default();
    let mut calls = tokio::task::JoinSet::new();
    for conn in 0..n.div_ceil(STREAMS_PER_CONNECTION) {
        let channel = slow_channel(socket).await?;
        held.push(Box::new(channel.clone()));
        let first = conn * STREAMS_PER_CONNECTION;
        for i in first..(first + STREAMS_PER_CONNECTION).min(n) {
            let mut c = ControlClient::new(channel.clone());
            calls.spawn(async move {
                if i % 2 == 0 {
                    c.export_audit(pb::ExportAuditRequest {})
                        .await
                        .map(|r| Box::new(r.into_inner()) as Box<dyn Send>)
                } else {
                    c.follow_audit(pb::FollowAuditRequest {
                        from_start: true,
                        after_seq: 0,
                    })
                    .await
                    .map(|r| Box::new(r.into_inner()) as Box<dyn Send>)
                }
            });
        }
    }
    while let Some(joined) = calls.join_next().await {
        match joined.context("a stream task failed")? {
            Ok(stream) => {
                outcomes.served += 1;
                held.push(stream);
            }
            Err(s) if s.code() == Code::ResourceExhausted => outcomes.refused += 1,
            Err(_) => outcomes.other += 1,
        }
    }
    Ok((held, outcomes))
}

async fn slow_channel(socket: &Path) -> anyhow::Result<Channel> {
    defenseclaw_testkit::uds_channel_with(socket, |e| {
        e.initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
    })
    .await
}

/// Seconds until the daemon serves as many new streams as it did before the
/// flood (every slot returned), polled every 50 ms for up to 60 s.
async fn wait_streams_freed(socket: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut c = ControlClient::new(crate::uds::channel(socket).await?);
    loop {
        // A stream that replays nothing holds a slot only while it is open.
        match c.follow_audit(pb::FollowAuditRequest::default()).await {
            Ok(_) => return Ok(t.elapsed().as_secs_f64()),
            Err(s) if s.code() == Code::ResourceExhausted => {}
            Err(s) => anyhow::bail!("probe stream: {s}"),
        }
        if t.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("stream slots still taken 60 s after the streams closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `GetStatus` call that takes longer than this counts as timed out; three
/// in a row end the phase (the daemon is not answering).
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Latency of sequential `GetStatus` calls.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    answered: usize,
    timed_out: usize,
}

impl Latency {
    fn show(&self) -> String {
        if self.timed_out > 0 {
            format!(
                "{:.0}/{:.0} µs, {} calls timed out after {} s",
                self.p50,
                self.p99,
                self.timed_out,
                STATUS_TIMEOUT.as_secs()
            )
        } else {
            format!("{:.0}/{:.0} µs", self.p50, self.p99)
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": if self.answered > 0 { report::round(self.p50, 0) } else { Value::Null },
            "p99": if self.answered > 0 { report::round(self.p99, 0) } else { Value::Null },
            "answered": self.answered,
            "timed_out": self.timed_out,
        })
    }
}

/// p50 and p99 of `n` sequential `GetStatus` calls.
async fn status_latency(c: &mut ControlClient<Channel>, n: usize) -> anyhow::Result<Latency> {
    let mut ns = Vec::with_capacity(n);
    let mut timed_out = 0;
    for _ in 0..n {
        let t = Instant::now();
        match tokio::time::timeout(STATUS_TIMEOUT, c.get_status(pb::GetStatusRequest {})).await {
            Ok(answer) => {
                answer.context("GetStatus")?;
                ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            Err(_) => {
                timed_out += 1;
                if timed_out == 3 {
                    break;
                }
            }
        }
    }
    Ok(Latency {
        p50: percentile_us(&mut ns, 50.0).unwrap_or(f64::NAN),
        p99: percentile_us(&mut ns, 99.0).unwrap_or(f64::NAN),
        answered: ns.len(),
        timed_out,
    })
}

/// Opens `n` connections that send the preface and then nothing; returns
/// those the daemon kept, and how many it kept and closed.
async fn idle_connections(
    socket: &Path,
    n: usize,
) -> anyhow::Result<(Vec<tokio::net::UnixStream>, usize, usize)> {
    let mut kept = Vec::new();
    let mut closed = 0;
    for _ in 0..n {
        let mut conn = tokio::net::UnixStream::connect(socket)
            .await
            .context("connecting an idle client")?;
        let _ = conn.write_all(H2_HELLO).await;
        // The daemon's SETTINGS frame header (9 bytes) means it serves us;
        // end of stream means the connection cap closed us.
        let mut header = [0u8; 9];
        match tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut header)).await {
            Ok(Ok(_)) => kept.push(conn),
            _ => closed += 1,
        }
    }
    let held = kept.len();
    Ok((kept, held, closed))
}

/// ScanTarget calls on FIFOs, left in flight.
struct FifoScans {
    calls: tokio::task::JoinSet<Result<(), Code>>,
}

impl FifoScans {
    /// What the calls answered by now: codes, and how many are still waiting.
    async fn outcomes(mut self) -> Value {
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        // Give calls that were answered a moment to be collected.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Some(done) = self.calls.join_next().await {
                let code = match done {
                    Ok(Ok(())) => "OK".to_owned(),
                    Ok(Err(code)) => format!("{code:?}"),
                    Err(_) => "task failed".to_owned(),
                };
                *codes.entry(code).or_default() += 1;
            }
        })
        .await;
        let pending = self.calls.len();
        self.calls.abort_all();
        json!({"answered": codes, "still_waiting": pending})
    }
}

/// Starts a `ScanTarget` call of an MCP config that is a FIFO nobody writes
/// on each of `channels` (connected before the connection flood).
fn fifo_scans(channels: Vec<Channel>, layout: &DaemonLayout) -> anyhow::Result<FifoScans> {
    let dir = layout.home.parent().unwrap_or(&layout.home).join("fifos");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut calls = tokio::task::JoinSet::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let fifo = dir.join(format!("mcp-{i}.json"));
        if !fifo.exists() {
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .context("running mkfifo")?;
            anyhow::ensure!(status.success(), "mkfifo {} failed", fifo.display());
        }
        let mut c = ControlClient::new(channel);
        calls.spawn(async move {
            c.scan_target(pb::ScanTargetRequest {
                kind: pb::TargetKind::Mcp as i32,
                path: fifo.display().to_string(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
        });
    }
    Ok(FifoScans { calls })
}
