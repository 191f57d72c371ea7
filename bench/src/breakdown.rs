//! Where a durable write's time goes: runs a separate daemon with its
//! write-path profile on (`DEFENSECLAW_PROFILE_OUT`), drives `SetEnforcement`
//! at 1 client (the per-phase breakdown) or at 64 clients (the group-commit
//! batch sizes and fsyncs per second), stops it with SIGTERM and reads the
//! profile it writes on shutdown.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;

use crate::load::{self, Workload};
use crate::procs::{self, DaemonLayout};
use crate::report;
use crate::uds;

/// What one profiled run measured.
#[derive(Debug)]
pub struct Profiled {
    /// The daemon's profile as it wrote it.
    pub profile: Value,
    /// The client's samples in the measured window.
    pub sample: load::Sample,
}

/// Starts a profiled daemon under `dir`, runs `clients` SetEnforcement callers
/// for `warmup` + `window`, stops the daemon and returns its profile.
pub async fn run(
    daemon_bin: &Path,
    dir: &Path,
    daemon_env: &[(String, String)],
    token: Option<AsciiMetadataValue>,
    clients: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Profiled> {
    std::fs::create_dir_all(dir.join("run"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let layout = DaemonLayout::under(dir);
    let out = dir.join("profile.json");
    let mut env = daemon_env.to_vec();
    env.push((
        defenseclawd::store::profile::PROFILE_ENV.to_owned(),
        out.display().to_string(),
    ));
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
    let work = Workload::Block {
        prefix: Arc::from(format!("bench-p{clients}-{}", std::process::id())),
        counter: Arc::new(AtomicU64::new(0)),
        token,
    };
    let conns = clients.div_ceil(16);
    let channels = uds::channels(&layout.socket, conns).await?;
    let sample = load::run(&channels, clients, &work, warmup, window).await?;
    drop(channels);
    daemon.terminate(Duration::from_secs(20))?;
    let text = std::fs::read_to_string(&out).with_context(|| {
        format!(
            "the profiled daemon wrote no profile at {} (is it a build with store::profile?)",
            out.display()
        )
    })?;
    let profile: Value = serde_json::from_str(&text).context("parsing the daemon's profile")?;
    Ok(Profiled { profile, sample })
}

fn phase(profile: &Value, name: &str) -> (f64, f64) {
    let p = &profile["phases"][name];
    (
        p["total_ns"].as_f64().unwrap_or(0.0),
        p["count"].as_f64().unwrap_or(0.0),
    )
}

/// The per-phase breakdown of one write at 1 client, in µs per write (means
/// over every write of the run, warm-up included), beside the client's mean
/// round trip; what is left over is the gRPC transport, decode, validation
/// and encode (compare with the echo round trip).
pub fn breakdown_json(p: &Profiled) -> Value {
    let jobs = p.profile["jobs"].as_f64().unwrap_or(0.0).max(1.0);
    let mut phases = serde_json::Map::new();
    let mut inside = 0.0;
    for name in [
        "authorize",
        "handoff_to_writer",
        "begin",
        "statements",
        "commit_fsync",
        "publish",
        "caller_wakeup",
        "fan_out",
    ] {
        let (ns, _) = phase(&p.profile, name);
        let us = ns / jobs / 1000.0;
        inside += us;
        phases.insert(format!("{name}_us"), report::round(us, 1));
    }
    let mut lat = p.sample.latencies_ns.clone();
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|n| *n as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let p50 = load::percentile_us(&mut lat, 50.0);
    phases.insert(
        "rpc_transport_decode_encode_us".into(),
        report::round((mean - inside).max(0.0), 1),
    );
    json!({
        "clients": 1,
        "writes_profiled": jobs,
        "client_mean_us": report::round(mean, 1),
        "client_p50_us": p50.map_or(Value::Null, |v| report::round(v, 1)),
        "per_write_mean_us": Value::Object(phases),
        "note": "a separate daemon with its write-path profile on; means per write over the whole run. rpc_transport_decode_encode is the client's mean round trip minus the timed phases inside the daemon (gRPC over the socket, HTTP/2 and protobuf decode/encode, request validation, the step-up gate); set it beside the echo round trip",
    })
}

/// Group commit at many clients: batch-size histogram, fsyncs per second and
/// the throughput of the same run.
pub fn groups_json(p: &Profiled, clients: usize) -> Value {
    let (commit_ns, groups) = phase(&p.profile, "commit_fsync");
    let jobs = p.profile["jobs"].as_f64().unwrap_or(0.0);
    let span_s = p.profile["commit_span_ns"].as_f64().unwrap_or(0.0) / 1e9;
    json!({
        "clients": clients,
        "calls_per_s": report::round(p.sample.per_sec(), 0),
        "groups": groups,
        "jobs": jobs,
        "mean_group_size": report::round(if groups > 0.0 { jobs / groups } else { 0.0 }, 1),
        "fsyncs_per_s": report::round(if span_s > 0.0 { groups / span_s } else { 0.0 }, 0),
        "commit_fsync_mean_us": report::round(if groups > 0.0 { commit_ns / groups / 1000.0 } else { 0.0 }, 1),
        "group_size_histogram": p.profile["group_sizes"].clone(),
        "note": "a separate daemon with its write-path profile on, over the whole run (warm-up included); fsyncs_per_s is commits over the span from the first commit to the last",
    })
}
