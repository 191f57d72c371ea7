//! The control-plane benchmark (the default command).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use defenseclaw_proto::bench::EchoMessage;
use defenseclaw_proto::bench::echo_client::EchoClient;
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::load::{self, Pair, Workload};
use crate::procs::{self, DaemonLayout};
use crate::report::{self, Report};
use crate::sqlite_loop::BareInserts;
use crate::uds;

/// Environment variable holding a valid bearer token for `--with-token`.
pub const TOKEN_ENV: &str = "DEFENSECLAW_BENCH_TOKEN";
/// Calls in flight per HTTP/2 connection at the higher concurrencies.
const INFLIGHT_PER_CONNECTION: usize = 16;
/// Concurrency levels of the check-vs-echo comparison.
const LEVELS: [usize; 3] = [1, 16, 64];
/// Concurrency of the token comparison.
const TOKEN_LEVEL: usize = 16;
/// Distinct targets the check workload cycles through (all blocked first).
const CHECK_TARGETS: usize = 16;

/// Options of the control-plane benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Print one JSON document on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// The defenseclawd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// The defenseclawctl binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub ctl_bin: Option<PathBuf>,
    /// Directory for the daemon's state, sockets and the SQLite baseline (a
    /// fresh subdirectory is made inside it) [default: the system temp dir].
    /// Use a directory on the disk you want measured.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the benchmark directory (daemon log, database) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Measured window of each run, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub window_ms: u64,
    /// Warm-up before each measured window, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub warmup_ms: u64,
    /// Runs of each side per comparison, interleaved (the median is reported).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeats: u32,
    /// Runs of `defenseclawctl status` and of /bin/true each.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub ctl_runs: u32,
    /// Also compare CheckTarget with a bearer token (verified on every call)
    /// against CheckTarget without one, at 16 in flight. Needs a valid token in
    /// $DEFENSECLAW_BENCH_TOKEN and the daemon configured for it with
    /// --daemon-env (e.g. DEFENSECLAW_AUTH__MODE=oidc, DEFENSECLAW_AUTH__ISSUER=…,
    /// DEFENSECLAW_AUTH__AUDIENCE=…). Mutations then carry the token as well.
    #[arg(long)]
    pub with_token: bool,
    /// KEY=VALUE added to the daemon's environment (repeatable).
    #[arg(long = "daemon-env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub daemon_env: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Runs the benchmark and prints the result.
pub fn run(args: &ControlArgs) -> anyhow::Result<()> {
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
    let token = if args.with_token {
        let raw = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| format!("--with-token needs a valid bearer token in ${TOKEN_ENV}"))?;
        Some(load::bearer(raw.trim())?)
    } else {
        None
    };
    let dir = procs::bench_dir(args.dir.as_deref(), "dcbench-")?;
    let runtime = procs::client_runtime()?;
    let bench = Bench {
        args: args.clone(),
        daemon_bin,
        ctl_bin,
        dir: dir.path().to_owned(),
        token,
    };
    let result = runtime.block_on(bench.run());
    if args.keep {
        let kept = dir.keep();
        say!("kept {}", kept.display());
    }
    let report = result?;
    if args.json {
        report::print_json(&report.json)
    } else {
        report::print_table(&report);
        Ok(())
    }
}

struct Bench {
    args: ControlArgs,
    daemon_bin: PathBuf,
    ctl_bin: PathBuf,
    dir: PathBuf,
    token: Option<AsciiMetadataValue>,
}

impl Bench {
    fn window(&self) -> Duration {
        Duration::from_millis(self.args.window_ms)
    }

    fn warmup(&self) -> Duration {
        Duration::from_millis(self.args.warmup_ms)
    }

    async fn run(self) -> anyhow::Result<Report> {
        let started = Instant::now();
        let mut phases = serde_json::Map::new();
        let mut phase = |name: &str, t: Instant| {
            let s = t.elapsed().as_secs_f64();
            phases.insert(name.to_owned(), report::round(s, 2));
            s
        };
        let loadavg_start = loadavg();

        // ---- start the daemon and the echo server
        let t = Instant::now();
        let layout = DaemonLayout::under(&self.dir);
        let echo_socket = self.dir.join("run").join("echo.sock");
        std::fs::create_dir_all(self.dir.join("run")).context("creating run/")?;
        let mut daemon = procs::spawn_daemon(&self.daemon_bin, &layout, &self.args.daemon_env)?;
        let mut echo = procs::spawn_echo(&echo_socket, &self.dir.join("echo.log"))?;
        let daemon_ready = procs::wait_ready(&mut daemon, || {
            let socket = layout.socket.clone();
            async move {
                let mut c = ControlClient::new(uds::channel(&socket).await?);
                c.get_status(pb::GetStatusRequest {}).await?;
                Ok(())
            }
        })
        .await?;
        procs::wait_ready(&mut echo, || {
            let socket = echo_socket.clone();
            async move {
                let mut c = EchoClient::new(uds::channel(&socket).await?);
                c.echo(EchoMessage::default()).await?;
                Ok(())
            }
        })
        .await?;
        say!(
            "daemon pid {} ready in {} ms; echo server pid {}",
            daemon.pid(),
            daemon_ready.as_millis(),
            echo.pid()
        );
        phase("start", t);

        // Idle memory: after start and the readiness probe, before any load.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = daemon.memory_mib()?;
        say!(
            "daemon idle: RSS {:.1} MiB, {} threads",
            idle.rss_mib,
            idle.threads
        );

        // ---- check vs echo
        let t = Instant::now();
        let names: Arc<Vec<String>> = Arc::new(
            (0..CHECK_TARGETS)
                .map(|i| format!("bench-check-{i}"))
                .collect(),
        );
        self.block_all(&layout.socket, &names).await?;
        let echo_work = Workload::Echo {
            names: names.clone(),
        };
        let check_work = Workload::Check {
            names: names.clone(),
            token: None,
        };
        let mut levels = Vec::new();
        for level in LEVELS {
            let conns = level.div_ceil(INFLIGHT_PER_CONNECTION);
            let echo_ch = uds::channels(&echo_socket, conns).await?;
            let check_ch = uds::channels(&layout.socket, conns).await?;
            let pair = self
                .compare(
                    level,
                    (&echo_ch, &echo_work, "echo"),
                    (&check_ch, &check_work, "check"),
                )
                .await?;
            levels.push((level, conns, pair));
            daemon.ensure_running()?;
            echo.ensure_running()?;
        }
        phase("check_vs_echo", t);

        // ---- token vs plain
        let t = Instant::now();
        let token_pair = match &self.token {
            Some(token) => {
                say!("bearer token: set (value not shown)");
                let conns = TOKEN_LEVEL.div_ceil(INFLIGHT_PER_CONNECTION);
                let plain_ch = uds::channels(&layout.socket, conns).await?;
                let token_ch = uds::channels(&layout.socket, conns).await?;
                let token_work = Workload::Check {
                    names: names.clone(),
                    token: Some(token.clone()),
                };
                Some(
                    self.compare(
                        TOKEN_LEVEL,
                        (&plain_ch, &check_work, "check-plain"),
                        (&token_ch, &token_work, "check-token"),
                    )
                    .await
                    .context("CheckTarget with and without a bearer token")?,
                )
            }
            None => None,
        };
        if token_pair.is_some() {
            phase("check_token_vs_plain", t);
        }

        // ---- defenseclawctl status vs /bin/true
        let t = Instant::now();
        let ctl_home = self.dir.join("ctl-home");
        std::fs::create_dir_all(&ctl_home).context("creating ctl-home/")?;
        let (ctl_times, true_times) = {
            let ctl = self.ctl_bin.clone();
            let socket = layout.socket.clone();
            let runs = self.args.ctl_runs;
            tokio::task::spawn_blocking(move || time_ctl(&ctl, &socket, &ctl_home, runs))
                .await
                .context("the process timing task failed")??
        };
        phase("ctl_status", t);
        daemon.ensure_running()?;

        // ---- durable mutations vs bare SQLite inserts
        let t = Instant::now();
        let counter = Arc::new(AtomicU64::new(0));
        let block_work = Workload::Block {
            prefix: Arc::from(format!("bench-m-{}", std::process::id())),
            counter: counter.clone(),
            token: self.token.clone(),
        };
        let sqlite_path = layout.home.join("bench-bare-inserts.db");
        let bare = BareInserts::open(&sqlite_path)?;
        let one = uds::channels(&layout.socket, 1).await?;
        // Warm both up once (page cache, WAL creation), then interleave.
        let (mut bare, _) = bare_run(bare, self.warmup()).await?;
        load::run(&one, 1, &block_work, self.warmup(), Duration::ZERO).await?;
        let mut bare_rates = Vec::new();
        let mut bare_latencies = Vec::new();
        let mut mut1 = Vec::new();
        for rep in 0..self.args.repeats {
            let (b, (rows, took, lat)) = bare_run(bare, self.window()).await?;
            bare = b;
            let rate = rows as f64 / took.as_secs_f64();
            bare_rates.push(rate);
            bare_latencies.extend(lat);
            let s = load::run(&one, 1, &block_work, Duration::ZERO, self.window()).await?;
            say!(
                "durable rep {}: bare sqlite {:.0} rows/s, SetEnforcement x1 {:.0}/s",
                rep + 1,
                rate,
                s.per_sec()
            );
            mut1.push(s);
        }
        drop(bare);
        let conns = 64usize.div_ceil(INFLIGHT_PER_CONNECTION);
        let many = uds::channels(&layout.socket, conns).await?;
        let mut mut64 = Vec::new();
        for rep in 0..self.args.repeats {
            let s = load::run(&many, 64, &block_work, self.warmup(), self.window()).await?;
            say!(
                "durable rep {}: SetEnforcement x64 {:.0}/s",
                rep + 1,
                s.per_sec()
            );
            mut64.push(s);
        }
        daemon.ensure_running()?;
        phase("durable_mutations", t);
        let loaded = daemon.memory_mib()?;
        say!(
            "daemon after load: RSS {:.1} MiB (peak {:.1}), {} threads",
            loaded.rss_mib,
            loaded.hwm_mib,
            loaded.threads
        );
        let audit_entries = self.audit_entries(&layout.socket).await.ok();
        // `status` again with the bigger database (it counts rows), as a raw figure only.
        let t = Instant::now();
        let ctl_after = {
            let ctl = self.ctl_bin.clone();
            let socket = layout.socket.clone();
            let home = self.dir.join("ctl-home");
            let runs = (self.args.ctl_runs / 4).max(1);
            tokio::task::spawn_blocking(move || time_ctl(&ctl, &socket, &home, runs))
                .await
                .context("the process timing task failed")??
        };
        phase("ctl_status_after_load", t);

        drop(echo);
        drop(daemon);

        // ---- where a write's time goes, and group commit (profiled daemons)
        let t = Instant::now();
        say!("profiled daemon: SetEnforcement x1 (breakdown)");
        let one = crate::breakdown::run(
            &self.daemon_bin,
            &self.dir.join("profile-1"),
            &self.args.daemon_env,
            self.token.clone(),
            1,
            self.warmup(),
            self.window(),
        )
        .await
        .context("the profiled 1-client run")?;
        say!("profiled daemon: SetEnforcement x64 (group commit)");
        let many = crate::breakdown::run(
            &self.daemon_bin,
            &self.dir.join("profile-64"),
            &self.args.daemon_env,
            self.token.clone(),
            64,
            self.warmup(),
            self.window(),
        )
        .await
        .context("the profiled 64-client run")?;
        phase("write_profile", t);
        let total = started.elapsed().as_secs_f64();
        phases.insert("total".into(), report::round(total, 2));

        let inputs = report::Inputs {
            levels,
            token: token_pair.map(|p| (p.base, p.subject)),
            ctl_ms: ctl_times,
            true_ms: true_times,
            ctl_after_load_ms: ctl_after.0,
            bare_rates,
            bare_latencies_ns: bare_latencies,
            breakdown: crate::breakdown::breakdown_json(&one),
            group_commit: crate::breakdown::groups_json(&many, 64),
            mut1,
            mut64,
            idle,
            loaded,
            audit_entries,
            config: json!({
                "window_ms": self.args.window_ms,
                "warmup_ms": self.args.warmup_ms,
                "repeats": self.args.repeats,
                "ctl_runs": self.args.ctl_runs,
                "inflight_per_connection": INFLIGHT_PER_CONNECTION,
                "check_targets": CHECK_TARGETS,
                "dir": self.dir.display().to_string(),
                "daemon_db": layout.db().display().to_string(),
                "bare_sqlite_db": sqlite_path.display().to_string(),
                "daemon_bin": self.daemon_bin.display().to_string(),
                "ctl_bin": self.ctl_bin.display().to_string(),
                "daemon_env_keys": self.args.daemon_env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                "with_token": self.token.is_some(),
            }),
            machine: json!({
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "cpu": cpu_model(),
                "loadavg_start": loadavg_start,
                "loadavg_end": loadavg(),
            }),
            phases: Value::Object(phases),
        };
        Ok(report::build(inputs))
    }

    /// Runs `base` and `subject` alternately, `repeats` times each, starting
    /// with a different side each round.
    async fn compare(
        &self,
        inflight: usize,
        base: (&[Channel], &Workload, &str),
        subject: (&[Channel], &Workload, &str),
    ) -> anyhow::Result<Pair> {
        let mut pair = Pair::default();
        for rep in 0..self.args.repeats {
            let order = if rep % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_base in order {
                let (channels, work, label) = if is_base { base } else { subject };
                let s = load::run(channels, inflight, work, self.warmup(), self.window())
                    .await
                    .with_context(|| format!("{label} at {inflight} in flight"))?;
                say!(
                    "{label:>11} x{inflight:<2} rep {}: {:>8.0} calls/s",
                    rep + 1,
                    s.per_sec()
                );
                if is_base {
                    pair.base.push(s);
                } else {
                    pair.subject.push(s);
                }
            }
        }
        Ok(pair)
    }

    /// Blocks every name once, so checks return a full decision.
    async fn block_all(&self, socket: &Path, names: &[String]) -> anyhow::Result<()> {
        let mut c = ControlClient::new(uds::channel(socket).await?);
        for name in names {
            let mut req = tonic::Request::new(pb::SetEnforcementRequest {
                target: Some(pb::TargetRef {
                    kind: pb::TargetKind::Skill as i32,
                    name: name.clone(),
                }),
                action: pb::EnforcementAction::Block as i32,
                reason: "defenseclaw-bench check target".into(),
                connections: Vec::new(),
            });
            if let Some(t) = &self.token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            c.set_enforcement(req)
                .await
                .with_context(|| format!("blocking {name}"))?;
        }
        Ok(())
    }

    async fn audit_entries(&self, socket: &Path) -> anyhow::Result<u64> {
        let mut c = ControlClient::new(uds::channel(socket).await?);
        let status = c.get_status(pb::GetStatusRequest {}).await?.into_inner();
        Ok(status.counts.map_or(0, |c| c.audit_entries))
    }
}

async fn bare_run(
    mut bare: BareInserts,
    window: Duration,
) -> anyhow::Result<(BareInserts, (u64, Duration, Vec<u64>))> {
    tokio::task::spawn_blocking(move || {
        let r = bare.run(window)?;
        Ok((bare, r))
    })
    .await
    .context("the SQLite loop task failed")?
}

/// Times `defenseclawctl status` and `/bin/true`, alternating, after a few
/// unmeasured runs of each. Milliseconds.
fn time_ctl(
    ctl: &Path,
    socket: &Path,
    home: &Path,
    runs: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let truth = Path::new("/bin/true");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for _ in 0..10 {
        procs::time_process(&mut procs::ctl_status_command(ctl, socket, home))
            .context("defenseclawctl status")?;
        procs::time_process(&mut std::process::Command::new(truth))?;
    }
    let mut ctl_ms = Vec::with_capacity(runs as usize);
    let mut true_ms = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let mut c = procs::ctl_status_command(ctl, socket, home);
        let mut t = std::process::Command::new(truth);
        if i % 2 == 0 {
            ctl_ms.push(ms(procs::time_process(&mut c)?));
            true_ms.push(ms(procs::time_process(&mut t)?));
        } else {
            true_ms.push(ms(procs::time_process(&mut t)?));
            ctl_ms.push(ms(procs::time_process(&mut c)?));
        }
    }
    let med = |v: &[f64]| load::median(v).unwrap_or(0.0);
    say!(
        "defenseclawctl status median {:.2} ms, /bin/true median {:.2} ms ({} runs each)",
        med(&ctl_ms),
        med(&true_ms),
        runs
    );
    Ok((ctl_ms, true_ms))
}

/// The load average (1, 5, 15 min) from `/proc/loadavg`.
pub fn loadavg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .map_or(Value::Null, Value::String)
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> Value {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .map_or(Value::Null, Value::String)
}
