//! Closed-loop load: N calls in flight over M HTTP/2 connections, a warm-up,
//! then a measured window. The same harness drives the echo baseline and the
//! daemon, so its own overhead cancels out of the ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use defenseclaw_proto::bench::EchoMessage;
use defenseclaw_proto::bench::echo_client::EchoClient;
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

/// What each in-flight slot calls, over and over.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `Echo(EchoMessage { kind: 1, name })` on the echo server.
    Echo {
        /// Names cycled through (the same ones `Check` uses).
        names: Arc<Vec<String>>,
    },
    /// `CheckTarget(TargetRef { kind: skill, name })` on the daemon.
    Check {
        /// Names cycled through.
        names: Arc<Vec<String>>,
        /// Sent as `authorization` metadata on every call when set.
        token: Option<AsciiMetadataValue>,
    },
    /// `SetEnforcement(block, skill "<prefix>-<n>")`, a fresh name every call, so
    /// each call writes a target row and an audit entry.
    Block {
        /// Name prefix, unique per benchmark run.
        prefix: Arc<str>,
        /// Next name number, shared by every slot and every run.
        counter: Arc<AtomicU64>,
        /// Sent as `authorization` metadata on every call when set.
        token: Option<AsciiMetadataValue>,
    },
}

/// `Bearer <token>` as a metadata value.
pub fn bearer(token: &str) -> anyhow::Result<AsciiMetadataValue> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))
}

/// Result of one measured window.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Calls that completed inside the window.
    pub completed: u64,
    /// Window length in seconds.
    pub secs: f64,
    /// Latencies in ns of calls that started and ended inside the window.
    pub latencies_ns: Vec<u64>,
}

impl Sample {
    /// Completed calls per second.
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.completed as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Interleaved runs of the two sides of a comparison.
#[derive(Debug, Default)]
pub struct Pair {
    /// The baseline's runs.
    pub base: Vec<Sample>,
    /// The measured side's runs.
    pub subject: Vec<Sample>,
}

enum Client {
    Echo(EchoClient<Channel>),
    Control(ControlClient<Channel>),
}

fn with_token<T>(msg: T, token: &Option<AsciiMetadataValue>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", t.clone());
    }
    req
}

async fn call(client: &mut Client, work: &Workload, i: u64) -> Result<(), tonic::Status> {
    match (client, work) {
        (Client::Echo(c), Workload::Echo { names }) => {
            let name = pick(names, i);
            c.echo(tonic::Request::new(EchoMessage { kind: 1, name }))
                .await
                .map(|_| ())
        }
        (Client::Control(c), Workload::Check { names, token }) => {
            let name = pick(names, i);
            let target = pb::TargetRef {
                kind: pb::TargetKind::Skill as i32,
                name,
            };
            c.check_target(with_token(target, token)).await.map(|_| ())
        }
        (
            Client::Control(c),
            Workload::Block {
                prefix,
                counter,
                token,
            },
        ) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let req = pb::SetEnforcementRequest {
                target: Some(pb::TargetRef {
                    kind: pb::TargetKind::Skill as i32,
                    name: format!("{prefix}-{n}"),
                }),
                action: pb::EnforcementAction::Block as i32,
                reason: "defenseclaw-bench durable mutation".to_owned(),
                connections: Vec::new(),
            };
            let reply = c.set_enforcement(with_token(req, token)).await?;
            if reply.get_ref().changed {
                Ok(())
            } else {
                Err(tonic::Status::internal(
                    "SetEnforcement reported no change for a fresh target",
                ))
            }
        }
        _ => Err(tonic::Status::internal("workload and client do not match")),
    }
}

fn pick(names: &[String], i: u64) -> String {
    let len = names.len().max(1) as u64;
    names
        .get(usize::try_from(i % len).unwrap_or(0))
        .cloned()
        .unwrap_or_default()
}

struct SlotResult {
    completed: u64,
    latencies_ns: Vec<u64>,
    error: Option<tonic::Status>,
}

/// Runs `inflight` closed-loop callers spread evenly over `channels` for
/// `warmup` (not counted) and then `window` (counted). Calls that complete
/// inside the window count towards throughput; calls that also started inside
/// it give latencies. Fails if any call fails.
pub async fn run(
    channels: &[Channel],
    inflight: usize,
    work: &Workload,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Sample> {
    if channels.is_empty() || inflight == 0 {
        bail!("load needs at least one connection and one call in flight");
    }
    let begin = Instant::now() + warmup;
    let end = begin + window;
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..inflight {
        let channel = channels[slot % channels.len()].clone();
        let mut client = match work {
            Workload::Echo { .. } => Client::Echo(EchoClient::new(channel)),
            Workload::Check { .. } | Workload::Block { .. } => {
                Client::Control(ControlClient::new(channel))
            }
        };
        let work = work.clone();
        tasks.spawn(async move {
            let mut out = SlotResult {
                completed: 0,
                latencies_ns: Vec::with_capacity(4096),
                error: None,
            };
            let mut i = slot as u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if let Err(status) = call(&mut client, &work, i).await {
                    out.error = Some(status);
                    break;
                }
                let t1 = Instant::now();
                if t1 >= begin && t1 <= end {
                    out.completed += 1;
                    if t0 >= begin {
                        out.latencies_ns
                            .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                    }
                }
                i = i.wrapping_add(inflight as u64);
            }
            out
        });
    }
    let mut sample = Sample {
        secs: window.as_secs_f64(),
        ..Sample::default()
    };
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let slot = joined.context("a load task failed")?;
        sample.completed += slot.completed;
        sample.latencies_ns.extend(slot.latencies_ns);
        if first_error.is_none() {
            first_error = slot.error;
        }
    }
    if let Some(status) = first_error {
        bail!(
            "a call failed: {:?}: {}",
            status.code(),
            status.message().trim()
        );
    }
    Ok(sample)
}

/// Percentile (0..=100) of `values` in microseconds (nearest rank).
pub fn percentile_us(values: &mut [u64], pct: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((pct / 100.0) * values.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, values.len()) - 1;
    values.get(idx).map(|ns| *ns as f64 / 1000.0)
}

/// Median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}
