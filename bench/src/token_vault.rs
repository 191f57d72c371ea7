//! The Token Vault benchmark (`token-vault`): the real `defenseclawd` against
//! the local identity provider (`tests/idp`), with provider-token caching off.
//!
//! - Coalescing: bursts of concurrent `GetConnectionToken` calls for one
//!   server, connection and operator; the provider's exchange counter says how
//!   many upstream exchanges each burst cost. In the *held* series the provider
//!   holds its answer until the whole burst has had time to reach the daemon
//!   (the target is exactly one exchange per burst); in the *free* series
//!   nothing is held (informational: callers arriving after an exchange has
//!   finished start a new one, since nothing is cached).
//! - Overhead: sequential `GetConnectionToken` calls (each a real exchange)
//!   against the same exchange POSTed directly to the provider's token
//!   endpoint, alternating, after a warm-up.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use defenseclaw_proto::v1 as pb;
use defenseclaw_proto::v1::control_client::ControlClient;
use defenseclaw_testkit::idp::{IdentityProvider, IdpOptions, TOKEN_VAULT_GRANT};
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::control::{cpu_model, loadavg};
use crate::load;
use crate::procs::{self, DaemonLayout, Guarded};
use crate::report;
use crate::uds;

/// The operator whose account is linked and whose token is exchanged.
const OPERATOR: &str = "auth0|operator1";
/// The MCP server allowed with the connection.
const SERVER: &str = "bench-github-mcp";
/// The connection exchanged for.
const CONNECTION: &str = "github";
/// Calls of a burst per HTTP/2 connection (as in the control-plane benchmark).
const CALLS_PER_CONNECTION: usize = 16;
/// How long the provider may hold one exchange before it answers anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(60);
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const FEDERATED_TOKEN_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";

/// Options of `token-vault`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenVaultArgs {
    /// The defenseclawd binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub daemon_bin: Option<PathBuf>,
    /// Directory for the daemon's state and socket (a fresh subdirectory is
    /// made inside it) [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the benchmark directory (daemon log, database) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Bursts in each series (held and free).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub bursts: u32,
    /// Concurrent calls per burst.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub burst_size: u32,
    /// Held series: how long the provider keeps holding the exchange after it
    /// arrived, so every call of the burst can reach the daemon, in ms.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub hold_ms: u64,
    /// Sequential calls measured on each side of the overhead comparison.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub samples: u32,
    /// Unmeasured calls on each side before the overhead comparison.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub warmup: u32,
}

/// Runs the benchmark: a summary on stderr, one JSON line on stdout.
pub fn run(args: &TokenVaultArgs) -> anyhow::Result<()> {
    let daemon_bin = match &args.daemon_bin {
        Some(p) => p.clone(),
        None => procs::sibling_binary("defenseclawd")?,
    };
    procs::require_binary(&daemon_bin, "defenseclawd", "--daemon-bin")?;
    let dir = procs::bench_dir(args.dir.as_deref(), "dcbench-tv-")?;
    let runtime = procs::client_runtime()?;
    let layout = DaemonLayout::under(dir.path());
    let result = runtime.block_on(measure(args, &daemon_bin, &layout));
    if args.keep {
        let kept = dir.keep();
        say!("kept {}", kept.display());
    }
    let doc = result?;
    print_summary(&doc);
    let line = serde_json::to_string(&doc).context("serialising the report")?;
    println!("{line}");
    Ok(())
}

/// What the calls of one burst saw.
#[derive(Debug)]
struct Burst {
    /// Upstream exchanges the provider answered during the burst.
    exchanges: u64,
    /// Distinct provider tokens handed to the burst's callers.
    distinct_tokens: usize,
    /// Callers told the token came from the cache (none expected: caching is off).
    cached: usize,
    /// First call issued → last reply (free), or release → last reply (held).
    wall: Duration,
}

/// The daemon, the provider and everything needed to call both.
struct Rig {
    idp: IdentityProvider,
    daemon: Guarded,
    socket: PathBuf,
    bearer: AsciiMetadataValue,
    operator_token: String,
}

async fn measure(
    args: &TokenVaultArgs,
    daemon_bin: &std::path::Path,
    layout: &DaemonLayout,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let loadavg_start = loadavg();
    let mut rig = start(daemon_bin, layout).await?;
    let burst_size = args.burst_size as usize;
    let conns = burst_size.div_ceil(CALLS_PER_CONNECTION);
    let channels = uds::channels(&rig.socket, conns).await?;

    // ---- coalescing, held: one exchange per burst is the target
    let t = Instant::now();
    let mut held = Vec::with_capacity(args.bursts as usize);
    for i in 0..args.bursts {
        rig.daemon.ensure_running()?;
        let b = burst(&rig, &channels, burst_size, Some(args.hold_ms))
            .await
            .with_context(|| format!("held burst {}", i + 1))?;
        held.push(b);
    }
    let held_s = t.elapsed().as_secs_f64();
    say!(
        "held bursts: {} × {} calls, exchanges per burst {}",
        args.bursts,
        burst_size,
        distribution(&held)
    );

    // ---- coalescing, free: nothing held (informational)
    let t = Instant::now();
    let mut free = Vec::with_capacity(args.bursts as usize);
    for i in 0..args.bursts {
        rig.daemon.ensure_running()?;
        let b = burst(&rig, &channels, burst_size, None)
            .await
            .with_context(|| format!("free burst {}", i + 1))?;
        free.push(b);
    }
    let free_s = t.elapsed().as_secs_f64();
    say!(
        "free bursts: {} × {} calls, exchanges per burst {}",
        args.bursts,
        burst_size,
        distribution(&free)
    );

    // ---- overhead: daemon vs direct POST, sequential, alternating
    let t = Instant::now();
    let (daemon_ns, direct_ns) = overhead(&rig, args.warmup, args.samples).await?;
    let overhead_s = t.elapsed().as_secs_f64();
    rig.daemon.ensure_running()?;
    let memory = rig.daemon.memory_mib()?;
    let audit_entries = audit_entries(&rig.socket).await.ok();
    let stats = rig.idp.token_vault_stats().await?;
    let _ = rig.idp.stop().await;

    Ok(document(Doc {
        args,
        held: &held,
        free: &free,
        daemon_ns,
        direct_ns,
        connections: conns,
        phases: json!({
            "held_bursts": report::round(held_s, 2),
            "free_bursts": report::round(free_s, 2),
            "overhead": report::round(overhead_s, 2),
            "total": report::round(started.elapsed().as_secs_f64(), 2),
        }),
        machine: json!({
            "cores": std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            "cpu": cpu_model(),
            "loadavg_start": loadavg_start,
            "loadavg_end": loadavg(),
        }),
        extra: json!({
            "provider_exchanges_total": stats.exchanges,
            "provider_failures_total": stats.failures,
            "daemon_rss_mib": report::round(memory.rss_mib, 1),
            "daemon_audit_entries": audit_entries,
        }),
    }))
}

/// Starts the provider and the daemon (caching off), links the operator's
/// account and allows the MCP server with the connection.
async fn start(daemon_bin: &std::path::Path, layout: &DaemonLayout) -> anyhow::Result<Rig> {
    let idp = IdentityProvider::start(IdpOptions::default())
        .await
        .context("starting the local identity provider (tests/idp; needs node and npm)")?;
    idp.link_account(OPERATOR, CONNECTION, "repo read:org")
        .await
        .context("linking the operator's github account")?;
    let mut env = idp.daemon_oidc_env();
    env.extend(
        [
            ("DEFENSECLAW_TOKEN_VAULT__CACHE_MAX_SECS", "0"),
            ("DEFENSECLAW_OPENCLAW__ENABLED", "false"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    std::fs::create_dir_all(layout.socket.parent().unwrap_or(&layout.home))
        .context("creating run/")?;
    let mut daemon = procs::spawn_daemon(daemon_bin, layout, &env)?;
    let ready = procs::wait_ready(&mut daemon, || {
        let socket = layout.socket.clone();
        async move {
            let mut c = ControlClient::new(uds::channel(&socket).await?);
            c.get_status(pb::GetStatusRequest {}).await?;
            Ok(())
        }
    })
    .await?;
    say!(
        "identity provider at {}; daemon pid {} ready in {} ms (token vault cache off)",
        idp.issuer(),
        daemon.pid(),
        ready.as_millis()
    );
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs()
        + 3600;
    let operator_token = idp
        .sign_token(
            json!({}),
            json!({"sub": OPERATOR, "aud": idp.audience(), "scope": "openid skills:write",
                   "azp": idp.cli_client_id(), "exp": exp}),
        )
        .await
        .context("signing the operator's access token")?;
    let bearer = load::bearer(&operator_token)?;
    let mut c = ControlClient::new(uds::channel(&layout.socket).await?);
    let mut allow = tonic::Request::new(pb::SetEnforcementRequest {
        target: Some(pb::TargetRef {
            kind: pb::TargetKind::Mcp as i32,
            name: SERVER.to_owned(),
        }),
        action: pb::EnforcementAction::Allow as i32,
        reason: "defenseclaw-bench token vault".into(),
        connections: vec![pb::ConnectionDeclaration {
            connection: CONNECTION.to_owned(),
            scopes: Vec::new(),
        }],
    });
    allow.metadata_mut().insert("authorization", bearer.clone());
    let reply = c
        .set_enforcement(allow)
        .await
        .with_context(|| format!("allowing mcp {SERVER} with {CONNECTION}"))?
        .into_inner();
    if reply.pending.is_some() {
        bail!("allowing mcp {SERVER} went to step-up; the benchmark needs it committed at once");
    }
    Ok(Rig {
        idp,
        daemon,
        socket: layout.socket.clone(),
        bearer,
        operator_token,
    })
}

fn request(bearer: &AsciiMetadataValue) -> tonic::Request<pb::GetConnectionTokenRequest> {
    let mut r = tonic::Request::new(pb::GetConnectionTokenRequest {
        server: SERVER.to_owned(),
        connection: CONNECTION.to_owned(),
        fresh: false,
    });
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

/// One burst of `size` concurrent calls. With `hold_ms`, the provider holds
/// the exchange from before the first call until `hold_ms` after an exchange
/// has arrived, then answers.
async fn burst(
    rig: &Rig,
    channels: &[Channel],
    size: usize,
    hold_ms: Option<u64>,
) -> anyhow::Result<Burst> {
    let before = rig.idp.token_vault_stats().await?;
    if before.in_flight != 0 {
        bail!(
            "{} exchanges still in flight at the provider",
            before.in_flight
        );
    }
    if hold_ms.is_some() {
        rig.idp.set_token_vault_delay(HOLD_LIMIT).await?;
    }
    let issued = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..size {
        let channel = channels
            .get(i % channels.len().max(1))
            .cloned()
            .context("no channel to the daemon")?;
        let bearer = rig.bearer.clone();
        calls.spawn(async move {
            ControlClient::new(channel)
                .get_connection_token(request(&bearer))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut from = issued;
    if let Some(ms) = hold_ms {
        let held = wait_in_flight(rig).await;
        // Give every call time to reach the daemon and join the one flight,
        // then let the provider answer.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let released = rig.idp.set_token_vault_delay(Duration::ZERO).await;
        held?;
        released?;
        from = Instant::now();
    }
    let mut tokens = HashSet::new();
    let mut cached = 0;
    while let Some(joined) = calls.join_next().await {
        let reply = joined
            .context("a burst task failed")?
            .map_err(|s| anyhow::anyhow!("GetConnectionToken: {:?}: {}", s.code(), s.message()))?;
        if reply.cached {
            cached += 1;
        }
        tokens.insert(reply.access_token);
    }
    let wall = from.elapsed();
    let after = rig.idp.token_vault_stats().await?;
    if after.failures != before.failures {
        bail!(
            "the provider refused {} exchanges",
            after.failures - before.failures
        );
    }
    Ok(Burst {
        exchanges: after.exchanges.saturating_sub(before.exchanges),
        distinct_tokens: tokens.len(),
        cached,
        wall,
    })
}

/// Waits until the provider holds an exchange (at most 30 s).
async fn wait_in_flight(rig: &Rig) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if rig.idp.token_vault_stats().await?.in_flight > 0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no exchange reached the provider within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The exchange as the daemon sends it, POSTed straight to the provider.
struct Direct {
    http: reqwest::Client,
    endpoint: String,
    form: Vec<(&'static str, String)>,
}

impl Direct {
    async fn new(rig: &Rig) -> anyhow::Result<Self> {
        // Built like the daemon's provider client (no redirects, the same
        // timeouts, no proxy for a loopback issuer; connections kept alive).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        let discovery: Value = http
            .get(rig.idp.url(".well-known/openid-configuration"))
            .send()
            .await
            .context("fetching the discovery document")?
            .error_for_status()
            .context("fetching the discovery document")?
            .json()
            .await
            .context("reading the discovery document")?;
        let endpoint = discovery
            .get("token_endpoint")
            .and_then(Value::as_str)
            .context("the discovery document has no token_endpoint")?
            .to_owned();
        let form = vec![
            ("grant_type", TOKEN_VAULT_GRANT.to_owned()),
            ("client_id", rig.idp.daemon_client_id().to_owned()),
            ("client_secret", rig.idp.daemon_client_secret().to_owned()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
            ("subject_token", rig.operator_token.clone()),
            ("requested_token_type", FEDERATED_TOKEN_TYPE.to_owned()),
            ("connection", CONNECTION.to_owned()),
        ];
        Ok(Self {
            http,
            endpoint,
            form,
        })
    }

    /// One exchange; the answer is read whole and checked.
    async fn exchange(&self) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&self.form)
            .send()
            .await
            .context("POST the Token Vault exchange")?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the exchange answer")?;
        if !status.is_success() {
            bail!(
                "the provider answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body).context("parsing the exchange answer")?;
        if v.get("access_token")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            bail!("the exchange answer has no access_token");
        }
        Ok(())
    }
}

/// One `GetConnectionToken` through the daemon; must be a real exchange.
async fn via_daemon(
    c: &mut ControlClient<Channel>,
    bearer: &AsciiMetadataValue,
) -> anyhow::Result<()> {
    let reply = c
        .get_connection_token(request(bearer))
        .await
        .map_err(|s| anyhow::anyhow!("GetConnectionToken: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if reply.cached {
        bail!("GetConnectionToken answered from the cache although caching is off");
    }
    Ok(())
}

/// Sequential calls through the daemon and direct POSTs, alternating which
/// goes first; latencies in ns.
async fn overhead(rig: &Rig, warmup: u32, samples: u32) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let direct = Direct::new(rig).await?;
    let mut c = ControlClient::new(uds::channel(&rig.socket).await?);
    for _ in 0..warmup {
        via_daemon(&mut c, &rig.bearer).await?;
        direct.exchange().await?;
    }
    let before = rig.idp.token_vault_stats().await?.exchanges;
    let mut daemon_ns = Vec::with_capacity(samples as usize);
    let mut direct_ns = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        for daemon_side in [i % 2 == 0, i % 2 != 0] {
            let t = Instant::now();
            if daemon_side {
                via_daemon(&mut c, &rig.bearer).await?;
                daemon_ns.push(ns(t.elapsed()));
            } else {
                direct.exchange().await?;
                direct_ns.push(ns(t.elapsed()));
            }
        }
    }
    let exchanged = rig.idp.token_vault_stats().await?.exchanges - before;
    if exchanged != 2 * u64::from(samples) {
        bail!(
            "expected {} exchanges at the provider during the overhead runs, saw {exchanged}",
            2 * u64::from(samples)
        );
    }
    say!(
        "overhead: {samples} sequential calls each side after {warmup} warm-up calls, every one an exchange"
    );
    Ok((daemon_ns, direct_ns))
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `min–max (n bursts with k exchanges, …)`.
fn distribution(bursts: &[Burst]) -> String {
    let hist = histogram(bursts);
    let parts: Vec<String> = hist.iter().map(|(k, n)| format!("{n}×{k}")).collect();
    format!(
        "min {} max {} ({})",
        bursts.iter().map(|b| b.exchanges).min().unwrap_or(0),
        bursts.iter().map(|b| b.exchanges).max().unwrap_or(0),
        parts.join(", ")
    )
}

fn histogram(bursts: &[Burst]) -> BTreeMap<u64, usize> {
    let mut hist = BTreeMap::new();
    for b in bursts {
        *hist.entry(b.exchanges).or_insert(0) += 1;
    }
    hist
}

fn series(bursts: &[Burst]) -> Value {
    let mut wall: Vec<u64> = bursts.iter().map(|b| ns(b.wall)).collect();
    let total: u64 = bursts.iter().map(|b| b.exchanges).sum();
    json!({
        "bursts": bursts.len(),
        "exchanges_min": bursts.iter().map(|b| b.exchanges).min(),
        "exchanges_max": bursts.iter().map(|b| b.exchanges).max(),
        "exchanges_mean": report::round(total as f64 / bursts.len().max(1) as f64, 2),
        "exchanges_histogram": histogram(bursts)
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "exchanges_per_burst": bursts.iter().map(|b| b.exchanges).collect::<Vec<_>>(),
        "distinct_tokens_max": bursts.iter().map(|b| b.distinct_tokens).max(),
        "cached_replies": bursts.iter().map(|b| b.cached).sum::<usize>(),
        "wall_p50_ms": ms(load::percentile_us(&mut wall, 50.0)),
        "wall_max_ms": ms(load::percentile_us(&mut wall, 100.0)),
    })
}

fn ms(us: Option<f64>) -> Value {
    us.map_or(Value::Null, |u| report::round(u / 1000.0, 2))
}

/// Whole microseconds.
fn us(v: Option<f64>) -> Value {
    v.filter(|u| u.is_finite())
        .map_or(Value::Null, |u| json!(u.round() as i64))
}

struct Doc<'a> {
    args: &'a TokenVaultArgs,
    held: &'a [Burst],
    free: &'a [Burst],
    daemon_ns: Vec<u64>,
    direct_ns: Vec<u64>,
    connections: usize,
    phases: Value,
    machine: Value,
    extra: Value,
}

fn document(d: Doc<'_>) -> Value {
    let mut daemon_ns = d.daemon_ns;
    let mut direct_ns = d.direct_ns;
    let dp50 = load::percentile_us(&mut daemon_ns, 50.0);
    let dp99 = load::percentile_us(&mut daemon_ns, 99.0);
    let xp50 = load::percentile_us(&mut direct_ns, 50.0);
    let xp99 = load::percentile_us(&mut direct_ns, 99.0);
    let diff = |a: Option<f64>, b: Option<f64>| us(a.zip(b).map(|(a, b)| a - b));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => report::round(a / b, 2),
        _ => Value::Null,
    };
    let held_max = d.held.iter().map(|b| b.exchanges).max();
    let held_min = d.held.iter().map(|b| b.exchanges).min();
    json!({
        "benchmark": "token vault",
        "config": {
            "bursts": d.args.bursts,
            "burst_size": d.args.burst_size,
            "burst_connections": d.connections,
            "hold_ms": d.args.hold_ms,
            "samples": d.args.samples,
            "warmup": d.args.warmup,
            "cache_max_secs": 0,
        },
        "held": series(d.held),
        "free": series(d.free),
        "overhead": {
            "daemon_p50_us": us(dp50),
            "daemon_p99_us": us(dp99),
            "direct_p50_us": us(xp50),
            "direct_p99_us": us(xp99),
            "overhead_p50_us": diff(dp50, xp50),
            "overhead_p99_us": diff(dp99, xp99),
            "ratio_p50": ratio(dp50, xp50),
            "ratio_p99": ratio(dp99, xp99),
            "samples_each": daemon_ns.len(),
        },
        "targets": {
            "held_exchanges_per_burst": {
                "target": "== 1",
                "met": held_min == Some(1) && held_max == Some(1),
            },
        },
        "provider": d.extra,
        "machine": d.machine,
        "phases_s": d.phases,
    })
}

/// The human summary, on stderr.
fn print_summary(doc: &Value) {
    let get = |path: &[&str]| -> String {
        let mut cur = doc;
        for p in path {
            match cur.get(p) {
                Some(next) => cur = next,
                None => return "-".into(),
            }
        }
        match cur {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            // A histogram: "n×k" is n bursts with k exchanges each.
            Value::Object(hist) => hist
                .iter()
                .map(|(k, n)| format!("{n}×{k}"))
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        }
    };
    eprintln!();
    eprintln!(
        "Token Vault benchmark ({} cores, {}; load {} → {})",
        get(&["machine", "cores"]),
        get(&["machine", "cpu"]),
        get(&["machine", "loadavg_start"]),
        get(&["machine", "loadavg_end"]),
    );
    for (name, key) in [
        ("held (provider answer held)", "held"),
        ("free (nothing held)", "free"),
    ] {
        eprintln!(
            "  {name:<30} {} bursts × {}: exchanges per burst min {} max {} mean {} (bursts×exchanges: {}); burst p50 {} ms",
            get(&[key, "bursts"]),
            get(&["config", "burst_size"]),
            get(&[key, "exchanges_min"]),
            get(&[key, "exchanges_max"]),
            get(&[key, "exchanges_mean"]),
            get(&[key, "exchanges_histogram"]),
            get(&[key, "wall_p50_ms"]),
        );
    }
    eprintln!(
        "  {:<30} daemon p50 {} µs p99 {} µs; direct p50 {} µs p99 {} µs",
        format!("sequential ({} each)", get(&["overhead", "samples_each"])),
        get(&["overhead", "daemon_p50_us"]),
        get(&["overhead", "daemon_p99_us"]),
        get(&["overhead", "direct_p50_us"]),
        get(&["overhead", "direct_p99_us"]),
    );
    eprintln!(
        "  {:<30} +{} µs at p50 (×{}), +{} µs at p99 (×{})",
        "daemon overhead",
        get(&["overhead", "overhead_p50_us"]),
        get(&["overhead", "ratio_p50"]),
        get(&["overhead", "overhead_p99_us"]),
        get(&["overhead", "ratio_p99"]),
    );
    eprintln!(
        "  {:<30} {}",
        "target: 1 exchange per burst",
        if get(&["targets", "held_exchanges_per_burst", "met"]) == "true" {
            "met"
        } else {
            "NOT met"
        }
    );
}

async fn audit_entries(socket: &std::path::Path) -> anyhow::Result<u64> {
    let mut c = ControlClient::new(uds::channel(socket).await?);
    let status = c.get_status(pb::GetStatusRequest {}).await?.into_inner();
    Ok(status.counts.map_or(0, |c| c.audit_entries))
}
