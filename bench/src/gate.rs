//! The gate benchmark (`gate`): latency of a plugin call, from the request
//! line written on the gate socket to its answer, against a bare round trip of
//! the same transport (the `ping` op: same socket, framing and JSON, no
//! decision). One persistent connection with requests multiplexed by id, as
//! the plugin does, at 1 and 16 concurrent calls. The daemon runs in process
//! (testkit), with the shipped `[openclaw]` defaults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::report;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A multiplexed client of the gate socket.
struct Client {
    out: mpsc::Sender<String>,
    waiters: Waiters,
    next: std::sync::atomic::AtomicU64,
}

impl Client {
    async fn connect(path: &std::path::Path) -> anyhow::Result<Arc<Self>> {
        let s = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting {}", path.display()))?;
        let (rd, mut wr) = s.into_split();
        let (out, mut rx) = mpsc::channel::<String>(256);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if wr.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(id) = v["id"].as_u64() else { continue };
                let tx = w.lock().ok().and_then(|mut m| m.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(v);
                }
            }
        });
        Ok(Arc::new(Self {
            out,
            waiters,
            next: std::sync::atomic::AtomicU64::new(1),
        }))
    }

    /// One request; returns the answer and its latency.
    async fn call(&self, mut body: Value) -> anyhow::Result<(Value, Duration)> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        body["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        let line = format!("{body}\n");
        let started = Instant::now();
        self.out
            .send(line)
            .await
            .map_err(|_| anyhow!("connection closed"))?;
        let v = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("no answer within 10 s")??;
        Ok((v, started.elapsed()))
    }
}

fn decide_body() -> Value {
    json!({"op": "decide", "plugin_version": env!("CARGO_PKG_VERSION"), "call": {
        "tool": "exec", "params": {"command": "echo bench"}, "agentId": "main",
        "sessionKey": "agent:main:bench", "runId": "r1", "toolCallId": "c1"}})
}

/// `samples` calls of `body` by `concurrency` workers on one connection.
async fn series(
    client: &Arc<Client>,
    body: &Value,
    concurrency: usize,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let per = samples.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                let (v, d) = client.call(body.clone()).await?;
                if v["ok"] != true {
                    return Err(anyhow!("gate answered an error: {v}"));
                }
                out.push(d.as_secs_f64() * 1e6);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut all = Vec::with_capacity(samples);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the benchmark and prints one JSON document.
pub fn run(samples: usize, warmup: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let doc = runtime.block_on(async {
        let d = defenseclaw_testkit::daemon::TestDaemon::start()
            .await
            .map_err(|e| anyhow!("{e:#}"))?;
        let gate = d.socket.with_file_name("gate.sock");
        let client = Client::connect(&gate).await?;
        let ping = json!({"op": "ping"});
        series(&client, &ping, 1, warmup).await?;
        series(&client, &decide_body(), 1, warmup).await?;
        let mut rows = Vec::new();
        let mut targets = serde_json::Map::new();
        for c in [1usize, 16] {
            say!("gate: {samples} calls at concurrency {c}");
            let bare = series(&client, &ping, c, samples).await?;
            let gated = series(&client, &decide_body(), c, samples).await?;
            let (bp99, gp99) = (pct(&bare, 0.99), pct(&gated, 0.99));
            rows.push(json!({
                "concurrency": c,
                "samples": samples,
                "bare_p50_us": report::round(pct(&bare, 0.5), 1),
                "bare_p99_us": report::round(bp99, 1),
                "decide_p50_us": report::round(pct(&gated, 0.5), 1),
                "decide_p99_us": report::round(gp99, 1),
                "p99_ratio": report::round(if bp99 > 0.0 { gp99 / bp99 } else { 0.0 }, 2),
            }));
            targets.insert(
                format!("c{c}_p99"),
                json!({"target": "<= 2x bare and <= 2000 us",
                       "met": gp99 <= 2.0 * bp99 && gp99 <= 2000.0}),
            );
        }
        Ok::<_, anyhow::Error>(json!({
            "benchmark": "gate decision latency (plugin protocol on the gate socket)",
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "series": rows,
            "targets": targets,
        }))
    })?;
    report::print_json(&doc)
}
