//! Audit export transports: the sink settings, the exported record, the
//! sinks themselves (`file`, `syslog`, `webhook`, `otlp`), the head records'
//! signing key and the sinks' in-memory status. The loop
//! that reads the log and advances each sink's cursor is
//! [`crate::governance::exporting`].

pub mod file;
pub mod otlp;
pub mod record;
pub mod settings;
pub mod signing;
pub mod state;
pub mod syslog;
pub mod webhook;

use std::time::Duration;

use serde_json::Value;

pub use settings::{Endpoint, SinkKind, SinkSettings};
pub use state::{Exporters, SinkHealth, SinkStatus};

/// One configured sink's transport.
#[derive(Debug)]
pub enum Sink {
    /// JSON lines.
    File(std::sync::Arc<file::FileSink>),
    /// RFC 5424 over TCP.
    Syslog(syslog::SyslogSink),
    /// Signed JSON POSTs.
    Webhook(webhook::WebhookSink),
    /// OTLP/HTTP protobuf logs.
    Otlp(otlp::OtlpSink),
}

/// How a delivery went.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The receiver acknowledged it (the file is synced, a 2xx answer).
    Ok,
    /// Written to a connection without acknowledgement (syslog over TCP):
    /// delivered only once [`Sink::confirm`] succeeds.
    Written,
}

impl Sink {
    /// The transport for `settings` (already validated).
    pub fn new(
        settings: &SinkSettings,
        secret: Option<crate::secrets::SecretString>,
    ) -> Result<Self, String> {
        match settings.endpoint()? {
            Endpoint::Otlp(url) => Ok(Self::Otlp(otlp::OtlpSink::new(
                url,
                secret,
                settings.auth_header.as_deref(),
                Duration::from_secs(settings.timeout_secs),
            )?)),
            Endpoint::Http(url) => {
                let secret = secret.ok_or_else(|| {
                    "a webhook sink needs its signing secret: DEFENSECLAW_EXPORT_<NAME>_TOKEN, the credential export-<name>-token, or <state dir>/.env".to_owned()
                })?;
                Ok(Self::Webhook(webhook::WebhookSink::new(
                    url,
                    secret,
                    Duration::from_secs(settings.timeout_secs),
                )?))
            }
            Endpoint::File(path) => Ok(Self::File(std::sync::Arc::new(file::FileSink::new(
                path,
                settings.max_file_bytes,
                settings.keep_files,
            )))),
            Endpoint::Tcp {
                host,
                port,
                tls_pin,
            } => {
                let tls = tls_pin
                    .map(|pin| crate::openclaw::pinned_tls_config(pin).map_err(|e| e.to_string()))
                    .transpose()?;
                Ok(Self::Syslog(syslog::SyslogSink::new(
                    host,
                    port,
                    tls,
                    settings.facility,
                    Duration::from_secs(settings.timeout_secs),
                )))
            }
        }
    }

    /// Confirms every [`Delivered::Written`] delivery since the last
    /// confirmation; on error none of them counts as delivered.
    pub async fn confirm(&mut self) -> Result<(), String> {
        match self {
            Self::File(_) | Self::Webhook(_) | Self::Otlp(_) => Ok(()),
            Self::Syslog(s) => s.confirm().await,
        }
    }

    /// Delivers `records` in order: `Ok(Delivered::Ok)` once the receiver
    /// has them, `Ok(Delivered::Written)` when that is known only after
    /// [`Self::confirm`].
    pub async fn deliver(&mut self, records: &[Value]) -> Result<Delivered, String> {
        match self {
            Self::File(file) => {
                let lines: Vec<String> = records.iter().map(Value::to_string).collect();
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.write(&lines))
                    .await
                    .map_err(|e| format!("file writer task: {e}"))??;
                Ok(Delivered::Ok)
            }
            Self::Webhook(w) => w.send(records).await.map(|()| Delivered::Ok),
            Self::Otlp(o) => o.send(records).await.map(|()| Delivered::Ok),
            Self::Syslog(s) => s.send(records).await.map(|()| Delivered::Written),
        }
    }
}
