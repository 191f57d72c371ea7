//! `defenseclaw-bench`: measures the control plane against bare baselines on
//! this machine and prints the figures (one JSON document with `--json`).
//!
//! Subcommands:
//! - none: the control-plane benchmark ([`control::run`]);
//! - `echo-server` (hidden): the bare tonic echo baseline, run as a separate
//!   process by the benchmark itself;
//! - `openclaw-approvals`: the OpenClaw monitor in process against a fake
//!   gateway;
//! - `token-vault`: Token Vault coalescing and overhead, the daemon against
//!   the local identity provider ([`token_vault::run`]);
//! - `hostile`: resident memory under a flood of unread streams and
//!   `GetStatus` latency under idle connections and FIFO scans ([`hostile::run`]);
//! - `scale`: read-side figures on an empty store beside a store filled to
//!   1M audit entries and 100k targets ([`scale::run`]);
//! - `gate`: the OpenClaw gate's decision latency on its socket against a
//!   bare round trip of the same transport ([`gate::run`]);
//! - `exporters`: mutation throughput with no, one and three audit sinks on,
//!   and the sinks' delivery lag under that load ([`exporters::run`]);
//! - `scan-eval CORPUS`: the built-in scanner (and `skill-scanner` when
//!   installed) against a labelled corpus.

/// Progress line on stderr.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format_args!($($arg)*)) };
}

mod breakdown;
mod control;
mod echo;
mod exporters;
mod gate;
mod hostile;
mod load;
mod openclaw;
mod procs;
mod report;
mod scale;
mod scan_eval;
mod sqlite_loop;
mod token_vault;
mod uds;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shown at the end of `--help`: what must exist before the benchmark runs.
const PREREQUISITES: &str = "\
Before running, build every binary of the workspace in release mode:

    cargo build --release --workspace
    cargo run --release -p defenseclaw-bench -- --json

`cargo run -p defenseclaw-bench` builds only this package; the daemon
(defenseclawd) and the CLI (defenseclawctl) are looked up next to this
executable (target/release/) unless --daemon-bin / --ctl-bin say otherwise.

The daemon and the echo baseline each run as a separate process on Unix
sockets in a fresh temporary directory (or under --dir), on the same disk
as the bare SQLite insert loop. A run takes about a minute with the
defaults. Progress goes to stderr; with --json, stdout carries only the
JSON document.";

/// Control-plane benchmark: defenseclawd against a bare gRPC echo service,
/// durable mutations against a bare SQLite insert loop, defenseclawctl start-up
/// against /bin/true, and the daemon's resident memory.
#[derive(Debug, Parser)]
#[command(
    name = "defenseclaw-bench",
    version,
    about,
    after_help = PREREQUISITES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Options of the default command (the control-plane benchmark).
    #[command(flatten)]
    control: control::ControlArgs,
    /// A subcommand instead of the control-plane benchmark.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the bare echo baseline on a Unix socket until killed (started by
    /// the benchmark itself).
    #[command(hide = true)]
    EchoServer {
        /// Socket path to bind (must not exist).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// OpenClaw monitor: exec.approval.requested → exec.approval.resolve latency
    /// (p50/p99) and session.tool observations per second, in process against a
    /// local fake gateway.
    OpenclawApprovals {
        /// Approvals to time.
        #[arg(long, default_value_t = 20_000)]
        approvals: usize,
        /// session.tool events to send.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
    },
    /// Token Vault with provider-token caching off: upstream exchanges per
    /// burst of concurrent GetConnectionToken calls (coalescing), and the
    /// latency of GetConnectionToken against the same exchange POSTed straight
    /// to the identity provider. Runs the real defenseclawd against the local
    /// identity provider (tests/idp; needs node and npm). Summary on stderr,
    /// one JSON line on stdout.
    TokenVault(token_vault::TokenVaultArgs),
    /// Hostile clients: the daemon's resident memory before, during and after
    /// 1 500 streaming calls that never read, and GetStatus latency (p50/p99)
    /// while 1 000 idle connections and 16 ScanTarget calls on FIFOs are held
    /// open. Runs the real defenseclawd with its shipped limits; one JSON
    /// document on stdout.
    Hostile(hostile::HostileArgs),
    /// Store scale: `defenseclawctl status`, `audit list --limit 20`, `audit
    /// verify` and `audit export` (entries/s), CheckTarget throughput, database
    /// bytes per entry and RSS, on an empty store and on one filled (default
    /// 1M audit entries, 100k targets) through the store's own writer (same
    /// hash chain). One JSON document on stdout.
    Scale(scale::ScaleArgs),
    /// The OpenClaw gate: decision latency of a plugin call (p50/p99 at 1 and
    /// 16 concurrent calls on one connection) against a bare `ping` round
    /// trip on the same socket. The daemon runs in process; one JSON document
    /// on stdout.
    Gate {
        /// Calls measured per series.
        #[arg(long, default_value_t = 5_000)]
        samples: usize,
        /// Unmeasured calls before measuring.
        #[arg(long, default_value_t = 500)]
        warmup: usize,
    },
    /// Audit exporters: SetEnforcement throughput at 1 and 64 clients with no
    /// sink, one (syslog to a real rsyslogd) and three (file + syslog +
    /// signed webhook to a local receiver) on, the ratio to none, and each
    /// network sink's delivery lag (reply -> receiver) p50/p99 under that
    /// load. Needs rsyslogd (Debian's rsyslog). One JSON document on stdout.
    Exporters(exporters::ExportersArgs),
    /// Evaluates the scanner against a labelled corpus (labels.csv): recall,
    /// false positives and time, side by side with Cisco's skill-scanner when
    /// it is on PATH (or at $DEFENSECLAW_CISCO_SKILL_SCANNER).
    ScanEval {
        /// Corpus directory.
        corpus: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::EchoServer { socket }) => echo::serve(&socket),
        Some(Command::OpenclawApprovals { approvals, events }) => {
            openclaw_approvals(approvals, events)
        }
        Some(Command::TokenVault(args)) => token_vault::run(&args),
        Some(Command::Hostile(args)) => hostile::run(&args),
        Some(Command::Scale(args)) => scale::run(&args),
        Some(Command::Gate { samples, warmup }) => gate::run(samples, warmup),
        Some(Command::Exporters(args)) => exporters::run(&args),
        Some(Command::ScanEval { corpus }) => {
            scan_eval::run(&corpus).and_then(|v| report::print_json(&v))
        }
        None => control::run(&cli.control),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("defenseclaw-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn openclaw_approvals(approvals: usize, events: usize) -> anyhow::Result<()> {
    let f = openclaw::run(approvals, events).map_err(|e| anyhow::anyhow!("{e}"))?;
    let v = serde_json::json!({
        "benchmark": "openclaw approvals",
        "approvals": f.approvals,
        "events": f.events,
        "approval_p50_us": f.p50_us,
        "approval_p99_us": f.p99_us,
        "approval_max_us": f.max_us,
        "session_tool_events_per_sec": f.events_per_sec,
        "audits_committed": f.audits_committed,
        "targets": {
            "approval_p99_us": {"target": "<= 1000", "met": f.p99_us <= 1000.0},
            "session_tool_events_per_sec": {"target": ">= 50000", "met": f.events_per_sec >= 50_000.0},
        },
    });
    report::print_json(&v)
}
