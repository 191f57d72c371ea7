//! Logging: an `EnvFilter` from config (reloadable on SIGHUP), plain lines
//! without timestamps under journald.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogFormat, LogSettings};

/// Environment variable that overrides `log.level` (outside the config prefix,
/// so it is never mistaken for a config key).
pub const LOG_ENV: &str = "DEFENSECLAWD_LOG";

/// Libraries that print raw WebSocket frames (the gateway's `connect` frame
/// holds its token), HTTP headers (bearer tokens, client secrets) or TLS
/// details at trace level. They are capped at debug whatever `DEFENSECLAWD_LOG`
/// or `[log] level` ask for: the cap is a separate filter, not a directive a
/// more specific one could override.
pub const PINNED_BELOW_TRACE: [&str; 12] = [
    "tungstenite",
    "tokio_tungstenite",
    "h2",
    "hyper",
    "hyper_util",
    "http",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "tonic",
    "tower",
    "jsonwebtoken",
];

fn pinned_libraries() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(PINNED_BELOW_TRACE.map(|t| (t, LevelFilter::DEBUG)))
}

/// Changes the log filter of a running daemon.
#[derive(Clone)]
pub struct LogReload(reload::Handle<EnvFilter, Registry>);

impl std::fmt::Debug for LogReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReload")
    }
}

/// A log filter that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LogReloadError {
    /// The filter string does not parse.
    #[error(transparent)]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// The running subscriber is gone.
    #[error(transparent)]
    Reload(#[from] reload::Error),
}

impl LogReload {
    /// Applies a new filter string.
    pub fn apply(&self, level: &str) -> Result<(), LogReloadError> {
        let filter = EnvFilter::try_new(level)?;
        Ok(self.0.reload(filter)?)
    }
}

fn filter_string(settings: &LogSettings) -> String {
    std::env::var(LOG_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| settings.level.clone())
}

/// Installs the global subscriber. Returns `None` if one is already installed
/// (tests that start several daemons in one process).
pub fn init(settings: &LogSettings) -> Option<LogReload> {
    let filter =
        EnvFilter::try_new(filter_string(settings)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(pinned_libraries());
    let installed = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text if journald => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.ok().map(|()| LogReload(handle))
}

/// The filter to apply on reload.
pub fn reload_filter(settings: &LogSettings) -> String {
    filter_string(settings)
}
