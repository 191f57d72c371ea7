//! Starting, running and stopping the daemon. `main` and the tests use the
//! same entry points.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use defenseclaw_proto::v1::control_server::ControlServer;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigFile, Settings};
use crate::events::EnforcementChanged;
use crate::governance::admission::Admission;
use crate::governance::enforcer::Enforcer;
use crate::governance::openclaw_host::{GovernanceHost, forward_enforcement};
use crate::governance::scanning::{ScanService, SkillWatcher, record_refused_link};
use crate::governance::skill_coverage::{Attempt, CoverageInbox, SkillScans};
use crate::governance::{Governance, Parts};
use crate::openclaw::{GatewayToken, OpenClawMonitor};
use crate::rpc::ControlService;
use crate::rpc::access::AccessPolicy;
use crate::rpc::authn::Authenticator;
use crate::secrets::SecretSources;
use crate::state::StateCache;
use crate::store::{Store, WriterContext};
use crate::telemetry::LogReload;
use crate::{listener, paths};

/// Why the daemon did not start or stopped with an error. The messages are the
/// operator's: each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory could not be resolved or made private.
    #[error("{0}")]
    StateDir(String),
    /// A secret source (the environment, systemd credentials, `.env`) could not be read.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The socket could not be bound (or another daemon already answers on it).
    #[error(transparent)]
    Socket(#[from] crate::listener::BindError),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] crate::store::OpenError),
    /// The store could not be read (pending step-ups were not resumed).
    #[error(transparent)]
    Store(#[from] crate::error::Error),
    /// The OpenClaw monitor could not start.
    #[error(transparent)]
    OpenClaw(#[from] crate::openclaw::OpenClawError),
    /// The Token Vault key could not be loaded.
    #[error(transparent)]
    Seal(#[from] crate::governance::vault::seal::SealError),
    /// The authenticator could not be built from `[auth]`.
    #[error(transparent)]
    Auth(#[from] crate::rpc::authn::AuthSetupError),
    /// The scanners or the skill watcher could not be set up.
    #[error(transparent)]
    Scanner(#[from] crate::governance::scanning::ScannerSetupError),
    /// The LLM analyzer (`[scanner.llm]`) could not be set up.
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmSetupError),
    /// The scan pool could not start.
    #[error(transparent)]
    ScanPool(#[from] crate::governance::scan_pool::PoolError),
    /// An `[export.<name>]` sink could not be started.
    #[error("audit export: {0}")]
    Export(String),
    /// The metrics endpoint (`[metrics] listen`) could not be bound.
    #[error("{0}")]
    Metrics(String),
    /// Step-up is on but what it needs is missing.
    #[error("{0}")]
    StepUp(&'static str),
    /// A task of the daemon failed.
    #[error("{what}: {reason}")]
    Task {
        /// Which task.
        what: &'static str,
        /// What it reported.
        reason: String,
    },
    /// A signal handler could not be installed.
    #[error("{signal} handler: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Everything needed to start a daemon.
#[derive(Debug)]
pub struct DaemonOptions {
    /// Effective settings: defaults, then the file, then the environment.
    pub settings: Settings,
    /// Where the config file layer came from (re-read on SIGHUP).
    pub config_file: ConfigFile,
    /// The environment (the process's in production, a map in tests).
    pub env: HashMap<String, String>,
    /// State directory (store, device key, `.env`), private to the daemon.
    pub state_dir: PathBuf,
}

impl DaemonOptions {
    /// Options for `settings`, resolving the state directory from `env`.
    pub fn new(
        settings: Settings,
        config_file: ConfigFile,
        env: HashMap<String, String>,
    ) -> Result<Self, StartError> {
        let state_dir = paths::state_dir(&env).map_err(StartError::StateDir)?;
        Ok(Self {
            settings,
            config_file,
            env,
            state_dir,
        })
    }
}

/// A running daemon.
pub struct DaemonHandle {
    /// Socket path clients connect to.
    pub socket: PathBuf,
    /// Database path, for callers that inspect the store after a stop.
    pub store_path: PathBuf,
    cancel: CancellationToken,
    supervisor: JoinHandle<Result<(), StartError>>,
    enforcement: broadcast::Sender<EnforcementChanged>,
    store: Store,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonHandle")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl DaemonHandle {
    /// Asks the daemon to stop (what SIGTERM does).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// The cancellation token that stops everything.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The bound TCP address of `[metrics] listen` (port 0 resolved), if any.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Committed enforcement changes, for runtime enforcers.
    pub fn enforcement_changes(&self) -> broadcast::Receiver<EnforcementChanged> {
        self.enforcement.subscribe()
    }

    /// The store (for in-process integrations and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits until the daemon has stopped and its store is closed.
    pub async fn wait(self) -> Result<(), StartError> {
        drop(self.store);
        self.supervisor.await.map_err(|e| StartError::Task {
            what: "daemon task failed",
            reason: e.to_string(),
        })?
    }
}

/// Opens the store, binds the socket and starts serving. Returns once the
/// socket accepts connections.
pub async fn start(opts: DaemonOptions) -> Result<DaemonHandle, StartError> {
    let DaemonOptions {
        settings,
        state_dir,
        env,
        config_file,
    } = opts;
    paths::ensure_private_dir(&state_dir).map_err(StartError::StateDir)?;
    // One daemon per store, decided before the socket or the store is touched.
    let state_lock = paths::lock_state_dir(&state_dir).map_err(StartError::StateDir)?;
    // Read now so a bad .env stops the start, not a later request.
    let secrets = SecretSources::load(&env, &state_dir).map_err(StartError::Secrets)?;
    // A daemon on another state directory may still hold this socket: it is checked here.
    let mode = settings.server.socket_mode_bits()?;
    let bound = listener::bind(&settings.socket_path(), mode).map_err(StartError::Socket)?;
    let socket = bound.path.clone();
    let cleanup = listener::BoundSocket::cleanup_token(&bound.path, bound.owned_id());
    let store_path = settings.store_path(&state_dir);
    let cache = Arc::new(StateCache::default());
    let (store, writer_thread) = {
        let path = store_path.clone();
        let ctx = WriterContext {
            cache: cache.clone(),
            head_log_every: settings.audit.head_log_every,
            clock: crate::clock::Clock::system(),
        };
        tokio::task::spawn_blocking(move || Store::open(&path, ctx))
            .await
            .map_err(|e| StartError::Task {
                what: "store open task failed",
                reason: e.to_string(),
            })
            .and_then(|r| r.map_err(StartError::from))
            .inspect_err(|_| cleanup.run())?
    };

    let cancel = CancellationToken::new();
    let (enforcement, _) = broadcast::channel(1024);
    let metrics = Arc::new(crate::metrics::Metrics::new(&[
        defenseclaw_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ]));
    let enforcer = Enforcer::new(store.clone(), enforcement.clone(), metrics.clone());
    let gateway_token = secrets
        .get(crate::secrets::OPENCLAW_GATEWAY_TOKEN)
        .map_err(StartError::Secrets)?
        .map(|(token, _)| GatewayToken::new(token.expose()));
    // What OpenClaw reports (skills, tool catalog), for runtime coverage.
    let (coverage_inbox, coverage_reports) = CoverageInbox::new(
        settings.openclaw.scan_skills || settings.openclaw.watch_skill_dirs,
        settings.openclaw.scan_tool_catalog,
    );
    let monitor = OpenClawMonitor::start(
        settings.openclaw.clone(),
        gateway_token,
        &state_dir,
        Arc::new(
            GovernanceHost::new(cache.clone(), store.clone())
                .with_coverage(Arc::new(coverage_inbox)),
        ),
        cancel.child_token(),
    )
    .inspect_err(|_| cleanup.run())?;
    if settings.openclaw.enabled {
        monitor.set_mcp_wrapper(
            settings.openclaw.ctl_path.display().to_string(),
            socket.display().to_string(),
        );
        // A setup done before (and not undone) is kept by reconciliation.
        match store.gate_setup().await {
            Ok(Some(row)) if row.active => monitor.set_gate_spec(Some(row.spec)),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not read the openclaw setup record"),
        }
        tokio::spawn(forward_enforcement(
            monitor.clone(),
            enforcer.subscribe(),
            cache.clone(),
        ));
    }
    let authn = Arc::new(
        Authenticator::new(
            settings.auth.clone(),
            AccessPolicy::from_settings(&settings.access),
        )
        .inspect_err(|_| cleanup.run())?,
    );
    // The daemon's confidential client (CIBA step-up and Token Vault).
    let client_secret = secrets
        .get(crate::secrets::AUTH_CLIENT_SECRET)
        .map_err(StartError::Secrets)
        .inspect_err(|_| cleanup.run())?
        .map(|(secret, _)| crate::oidc::ClientSecret::new(secret.expose()));
    let ciba: Option<Arc<crate::oidc::CibaClient>> = if settings.stepup.enabled {
        let secret = client_secret.clone().ok_or_else(|| {
            cleanup.run();
            StartError::StepUp("[stepup] enabled needs the daemon's client secret: set DEFENSECLAW_AUTH_CLIENT_SECRET, the credential auth-client-secret, or <state dir>/.env")
        })?;
        let provider = authn
            .provider()
            .ok_or_else(|| StartError::StepUp("[stepup] needs [auth] mode = \"oidc\""))?;
        let client_id = settings.auth.daemon_client_id.clone().unwrap_or_default();
        Some(Arc::new(crate::oidc::CibaClient::new(
            provider, client_id, secret,
        )))
    } else {
        None
    };
    // Tool calls an ask rule holds go to the first listed [stepup] approver.
    if let (Some(ciba), Some(approver)) = (&ciba, settings.stepup.listed().first()) {
        monitor
            .gate()
            .set_backend(crate::governance::tool_gate::AskBackend::new(
                ciba.clone(),
                (*approver).to_owned(),
                settings.stepup.requested_expiry_secs,
                cancel.child_token(),
            ));
    }
    let sealer = crate::governance::vault::seal::Sealer::load(
        secrets.credentials_dir(),
        settings.token_vault.key_file.as_deref(),
        &state_dir,
    )
    .inspect_err(|_| cleanup.run())?
    .map(Arc::new);
    // Reported by `Diagnose` (presence only, never the values).
    let has_client_secret = client_secret.is_some();
    let has_sealer = sealer.is_some();
    let stepups = crate::governance::stepup::StepUps::new(
        settings.stepup.clone(),
        store.clone(),
        cache.clone(),
        ciba,
        sealer.clone(),
        enforcer.clone(),
        cancel.child_token(),
    );
    let vault_client = match (
        settings.token_vault.enabled,
        authn.provider(),
        &settings.auth.daemon_client_id,
        client_secret,
    ) {
        (true, Some(provider), Some(client_id), Some(secret)) => {
            Some(Arc::new(crate::oidc::token_vault::TokenVaultClient::new(
                provider,
                client_id.clone(),
                secret,
                Duration::from_secs(settings.token_vault.request_timeout_secs),
            )))
        }
        _ => None,
    };
    // Refusals and cached hand-outs: one audit entry per key and window, with a count.
    let coalescer = crate::audit_coalesce::AuditCoalescer::new(
        store.clone(),
        Duration::from_secs(settings.audit.coalesce_window_secs),
        crate::audit_coalesce::DEFAULT_MAX_KEYS,
    );
    let vault = crate::governance::vault::TokenBroker::new(
        settings.token_vault.clone(),
        store.clone(),
        cache.clone(),
        vault_client,
        sealer,
        stepups.clone(),
        coalescer.clone(),
    )
    .inspect_err(|_| cleanup.run())?;
    tokio::spawn(
        vault
            .clone()
            .forget_blocked(enforcer.subscribe(), cancel.child_token()),
    );
    stepups.resume_pending().await?;
    let llm = crate::llm::LlmReviewer::new(&settings.scanner.llm, &secrets)
        .inspect_err(|_| cleanup.run())?;
    let scanners = Arc::new(
        crate::governance::scanning::Scanners::new(&settings.scanner, llm)
            .inspect_err(|_| cleanup.run())?,
    );
    // Where skills are known to be: quarantine moves only those folders.
    let known_skills = Arc::new(crate::governance::skill_dirs::KnownSkills::new(
        settings
            .scanner
            .watch_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect(),
    ));
    let quarantine = Arc::new(crate::governance::quarantine::Quarantine::new(
        store.clone(),
        &state_dir,
        known_skills.clone(),
        settings.admission.quarantine_max_bytes,
    ));
    let admission = Admission {
        quarantine: settings.admission.quarantine.then(|| quarantine.clone()),
        store: store.clone(),
        cache: cache.clone(),
        scan: Arc::new(ScanService {
            scanners,
            pool: crate::governance::scan_pool::ScanPool::new(
                settings.scanner.scan_workers,
                settings.scanner.scan_queue,
            )
            .inspect_err(|_| cleanup.run())?,
            admission: settings.admission.clone(),
        }),
        enforcer: enforcer.clone(),
        stepups: stepups.clone(),
    };
    // Skill folders are scanned only when their content changed since the last scan.
    let skill_scans = Arc::new(SkillScans::new(admission.clone()));
    let watch_openclaw = settings.openclaw.enabled && settings.openclaw.watch_skill_dirs;
    let mut watch_handle = None;
    if !settings.scanner.watch_dirs.is_empty() || watch_openclaw {
        let watcher = SkillWatcher::new(
            &settings.scanner.watch_dirs,
            Duration::from_millis(settings.scanner.watch_debounce_ms),
        )
        .inspect_err(|_| cleanup.run())?;
        watch_handle = Some(watcher.handle());
        let watch_scans = skill_scans.clone();
        let refuse_store = store.clone();
        let watcher_actor = || crate::model::Actor {
            id: "system:watcher".into(),
            name: "skill-watcher".into(),
            ..crate::model::Actor::system()
        };
        tokio::spawn(watcher.run(
            cancel.child_token(),
            move |skill| {
                let scans = watch_scans.clone();
                async move {
                    match scans.scan(skill.clone(), watcher_actor()).await {
                        Attempt::Scanned(results) => {
                            for r in results {
                                tracing::info!(skill = %skill.display(), decision = %r.decision, findings = r.findings.len(), "rescanned a changed skill");
                            }
                            true
                        }
                        Attempt::Busy => {
                            tracing::debug!(skill = %skill.display(), "scan pool full; rescanning later");
                            false
                        }
                        Attempt::Failed(e) => {
                            tracing::warn!(skill = %skill.display(), error = %e, "rescan failed");
                            true
                        }
                        Attempt::Unchanged | Attempt::Skipped(_) => true,
                    }
                }
            },
            move |skill| {
                let store = refuse_store.clone();
                async move { record_refused_link(&store, &skill, watcher_actor()).await }
            },
        ));
    }
    if settings.openclaw.enabled {
        tokio::spawn(crate::governance::skill_coverage::run_skills(
            settings.openclaw.scan_skills,
            skill_scans,
            known_skills.clone(),
            watch_handle.filter(|_| watch_openclaw),
            coverage_reports.skills,
            cancel.child_token(),
        ));
        tokio::spawn(crate::governance::skill_coverage::run_tools(
            admission.clone(),
            coverage_reports.tools,
            cancel.child_token(),
        ));
    }
    // Audit export: one task per sink, reading after its stored cursor.
    // Head records are signed with the host's key (created once, 0600).
    let head_signer = std::sync::Arc::new(
        crate::export::signing::HeadSigner::load_or_create(&state_dir)
            .map_err(StartError::Export)
            .inspect_err(|_| cleanup.run())?,
    );
    let exporters = crate::export::Exporters::with_signing_key(head_signer.public_key());
    crate::governance::exporting::start(
        &store,
        &settings.export,
        &secrets,
        &exporters,
        &head_signer,
        &metrics,
        &cancel,
    )
    .await
    .map_err(StartError::Export)
    .inspect_err(|_| cleanup.run())?;
    // The gate socket the OpenClaw plugin asks, beside the control socket.
    let gate_path = crate::gate::socket_path(&settings.openclaw, &socket);
    let gov = Governance::new(Parts {
        store: store.clone(),
        cache,
        enforcer,
        openclaw: monitor.clone(),
        admission,
        stepups,
        vault,
        coalescer: coalescer.clone(),
        quarantine,
        exporters: exporters.clone(),
        gate_spec: crate::governance::openclaw_setup::gate_spec(&settings.openclaw, &gate_path),
    });
    let gate_bound = listener::bind_path(&gate_path, mode)
        .inspect_err(|_| cleanup.run())
        .map_err(StartError::Socket)?;
    let gate_cleanup =
        listener::BoundSocket::cleanup_token(&gate_bound.path, gate_bound.owned_id());
    let metrics_bound = match settings.metrics.endpoint()? {
        Some(listen) => Some(
            crate::metrics::serve::bind(&listen, mode)
                .await
                .inspect_err(|_| {
                    cleanup.run();
                    gate_cleanup.run();
                })
                .map_err(StartError::Metrics)?,
        ),
        None => None,
    };
    // Agents must not reach DefenseClaw's own files and sockets.
    let mut protected = vec![
        socket.clone(),
        gate_bound.path.clone(),
        state_dir.clone(),
        store_path.clone(),
        // The gate plugin `openclaw setup` installs.
        settings.openclaw.plugin_dir.clone(),
    ];
    if let ConfigFile::Explicit(path) | ConfigFile::User(path) = &config_file {
        protected.push(path.clone());
    }
    if let Some(path) = metrics_bound.as_ref().and_then(|b| b.unix_path.clone()) {
        protected.push(path);
    }
    monitor.gate().protect_paths(protected);
    let gate_task = crate::gate::spawn(
        gate_bound.listener,
        gov.clone(),
        crate::gate::GateLimits::from_settings(&settings.openclaw),
        cancel.child_token(),
    );
    let setup = crate::doctor::SetupFacts {
        config_source: crate::doctor::config_source(&config_file),
        state_dir: state_dir.clone(),
        store_path: store_path.clone(),
        oidc: settings.auth.mode == crate::oidc::AuthMode::Oidc,
        client_secret: has_client_secret,
        stepup_enabled: settings.stepup.enabled,
        approvers: settings.stepup.listed().len(),
        token_vault_enabled: settings.token_vault.enabled,
        unattended_ready: settings.token_vault.unattended && has_sealer,
        unattended_wanted: settings.token_vault.unattended,
        openclaw_enabled: settings.openclaw.enabled,
        env_names: {
            let mut names: Vec<String> = env
                .keys()
                .filter(|k| k.starts_with("DEFENSECLAW_"))
                .cloned()
                .collect();
            names.sort();
            names
        },
    };
    let service = ControlService::new(
        gov,
        authn,
        socket.display().to_string(),
        cancel.clone(),
        crate::rpc::streams::StreamLimits::new(&settings.server),
    )
    .with_setup(setup);
    let max = settings.server.max_message_bytes;
    let control = ControlServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(64 * 1024 * 1024);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServer<ControlService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(defenseclaw_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Task {
            what: "reflection service",
            reason: e.to_string(),
        })?;
    // Older grpcurl releases only speak v1alpha.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(defenseclaw_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Task {
            what: "reflection service",
            reason: e.to_string(),
        })?;

    // Started last, so a failed start leaves no task holding the store.
    let coalescer_stop = CancellationToken::new();
    let coalescer_task = coalescer.spawn_flusher(coalescer_stop.clone());
    drop(coalescer);
    let incoming = crate::limits::Incoming::new(bound.listener, &settings.server);
    let server_cancel = cancel.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(settings.server.max_streams_per_connection)
            .layer(crate::metrics::rpc::RpcMetricsLayer::new(metrics.clone()))
            .layer(crate::limits::RequestLimitsLayer::new(&settings.server))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(control)
            .serve_with_incoming_shutdown(incoming, server_cancel.cancelled_owned()),
    );
    let metrics_addr = metrics_bound.as_ref().and_then(|b| b.tcp_addr);
    let (metrics_task, metrics_cleanup) = match metrics_bound {
        Some(bound) => {
            tracing::info!(tcp = ?bound.tcp_addr, unix = ?bound.unix_path, "serving metrics at /metrics");
            let task = crate::metrics::serve::spawn(
                bound.endpoint,
                metrics,
                settings.metrics.max_scrapers,
                cancel.child_token(),
            );
            (Some(task), bound.cleanup)
        }
        None => (None, None),
    };
    let drain = Duration::from_secs(settings.server.drain_timeout_secs);
    let supervisor_cancel = cancel.clone();
    let supervisor = tokio::spawn(async move {
        let mut server = server;
        let served = tokio::select! {
            r = &mut server => r
                .map_err(|e| StartError::Task { what: "server task", reason: e.to_string() })
                .and_then(|r| r.map_err(|e| StartError::Task { what: "server", reason: e.to_string() })),
            () = async { supervisor_cancel.cancelled().await; tokio::time::sleep(drain).await; } => {
                tracing::warn!(?drain, "drain timeout: closing the remaining connections");
                server.abort();
                Ok(())
            }
        };
        cleanup.run();
        gate_task.abort();
        gate_cleanup.run();
        if let Some(task) = metrics_task {
            task.abort();
        }
        if let Some(c) = metrics_cleanup {
            c.run();
        }
        // Held until the very end: the store is released below, then the directory.
        let _state_lock = state_lock;
        // No call is left to refuse: write the summaries of the open windows.
        coalescer_stop.cancel();
        if let Err(e) = coalescer_task.await {
            tracing::error!(error = %e, "the audit coalescer did not stop cleanly");
        }
        // The monitor drains its audit queue into the store before it lets go.
        monitor.stopped().await;
        // The writer stops once every store handle is gone; wait for its final checkpoint.
        let joined = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the store writer thread did not stop cleanly");
        }
        served
    });
    tracing::info!(socket = %socket.display(), store = %store_path.display(), version = env!("CARGO_PKG_VERSION"), "defenseclawd ready");
    Ok(DaemonHandle {
        socket,
        store_path,
        cancel,
        supervisor,
        enforcement,
        store,
        metrics_addr,
    })
}

/// Runs until SIGTERM/SIGINT, reloading on SIGHUP, speaking sd_notify.
pub async fn run(opts: DaemonOptions, log: Option<LogReload>) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Register once, before anything can deliver them.
    let mut term = signal(SignalKind::terminate()).map_err(|source| StartError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| StartError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let mut hup = signal(SignalKind::hangup()).map_err(|source| StartError::Signal {
        signal: "SIGHUP",
        source,
    })?;
    let config_file = opts.config_file.clone();
    let env = opts.env.clone();
    let handle = start(opts).await?;
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {}", handle.socket.display())),
    ]);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                let stamp = sd_notify::NotifyState::monotonic_usec_now().ok();
                let mut states = vec![sd_notify::NotifyState::Reloading];
                states.extend(stamp);
                notify(&states);
                match Settings::load(&config_file, &env) {
                    Ok(settings) => {
                        if let Some(log) = &log {
                            match log.apply(&crate::telemetry::reload_filter(&settings.log)) {
                                Ok(()) => tracing::info!(level = %settings.log.level, "configuration reloaded"),
                                Err(e) => tracing::warn!(error = %e, "log level not reloaded"),
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            () = handle.cancel.cancelled() => break,
        }
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
    handle.shutdown();
    handle.wait().await
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
