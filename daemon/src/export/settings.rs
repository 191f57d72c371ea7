//! `[export.<name>]`: one named audit sink's settings and their checks.

use serde::{Deserialize, Serialize};

use crate::model::Severity;

/// Longest sink name (it becomes part of a variable and a credential name).
pub const MAX_NAME_LEN: usize = 32;
/// Largest batch a sink may ask for.
pub const MAX_BATCH: u32 = 1000;

/// What a sink delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// RFC 5424 over TCP with octet-counted framing (RFC 6587).
    Syslog,
    /// OTLP/HTTP protobuf logs to an OpenTelemetry Collector.
    Otlp,
    /// Signed JSON POSTs, one per record.
    Webhook,
    /// JSON lines with size-based rotation.
    File,
}

impl SinkKind {
    /// The kind's config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syslog => "syslog",
            Self::Otlp => "otlp",
            Self::Webhook => "webhook",
            Self::File => "file",
        }
    }
}

/// `[export.<name>]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// `syslog`, `otlp`, `webhook` or `file`.
    pub kind: SinkKind,
    /// `tcp://host:port` or `tls://host:port` (syslog), `file:///abs/path` or
    /// an absolute path (file), the collector's base or `/v1/logs` URL (otlp).
    pub url: String,
    /// Only entries with one of these actions (empty: all).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Only entries with one of these outcomes (empty: all).
    #[serde(default)]
    pub outcomes: Vec<String>,
    /// Only entries at or above this severity (entries without one are left out when set).
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// Only entries about these target kinds, `skill` or `mcp` (empty: all, including none).
    #[serde(default)]
    pub target_kinds: Vec<String>,
    /// Entries per delivery, 1..=1000.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Longest wait before a partial batch is sent and between retries' polls, in milliseconds.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// A head record is sent at most this often (and after the first delivery), in seconds.
    #[serde(default = "default_head_every_secs")]
    pub head_every_secs: u64,
    /// Most time one delivery (connect, write, acknowledgement) may take, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Longest wait between retries, in seconds.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
    /// `file`: rotate when the file would grow beyond this many bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// `file`: rotated files kept (`<file>.1` newest).
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
    /// `syslog`: facility number 0..=23 (default 13, log audit).
    #[serde(default = "default_facility")]
    pub facility: u8,
    /// `tls://` syslog: SHA-256 of the receiver's certificate (64 hex digits,
    /// colons allowed). Required for `tls://`: the receiver is trusted by pin.
    #[serde(default)]
    pub tls_pin_sha256: Option<String>,
    /// `otlp`: the header carrying the token as is (e.g. `x-api-key`); unset,
    /// the token goes as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth_header: Option<String>,
}

fn default_batch_size() -> u32 {
    100
}
fn default_flush_interval_ms() -> u64 {
    200
}
fn default_head_every_secs() -> u64 {
    60
}
fn default_timeout_secs() -> u64 {
    10
}
fn default_max_backoff_secs() -> u64 {
    30
}
fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_keep_files() -> u32 {
    5
}
fn default_facility() -> u8 {
    13
}

impl SinkSettings {
    /// Checks one sink; errors name the key.
    pub fn validate(&self, name: &str) -> Result<(), (String, String)> {
        let field = |k: &str| format!("export.{name}.{k}");
        if !valid_name(name) {
            return Err((
                format!("export.{name}"),
                format!(
                    "sink names are 1-{MAX_NAME_LEN} of a-z, 0-9 and _, starting with a letter"
                ),
            ));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err((field("batch_size"), format!("must be 1..={MAX_BATCH}")));
        }
        for (key, value, min, max) in [
            ("flush_interval_ms", self.flush_interval_ms, 10, 3_600_000),
            ("head_every_secs", self.head_every_secs, 1, 86_400),
            ("timeout_secs", self.timeout_secs, 1, 600),
            ("max_backoff_secs", self.max_backoff_secs, 1, 3600),
            ("max_file_bytes", self.max_file_bytes, 4096, u64::MAX),
        ] {
            if value < min || value > max {
                return Err((field(key), format!("must be {min}..={max}")));
            }
        }
        if self.keep_files == 0 || self.keep_files > 100 {
            return Err((field("keep_files"), "must be 1..=100".into()));
        }
        if self.facility > 23 {
            return Err((field("facility"), "must be 0..=23".into()));
        }
        if let Some(k) = self
            .target_kinds
            .iter()
            .find(|k| !matches!(k.as_str(), "skill" | "mcp"))
        {
            return Err((
                field("target_kinds"),
                format!("{k:?} is not a target kind (skill, mcp)"),
            ));
        }
        if let Some(h) = &self.auth_header {
            if self.kind != SinkKind::Otlp {
                return Err((field("auth_header"), "only otlp sinks take it".into()));
            }
            if h.is_empty()
                || h.len() > 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err((
                    field("auth_header"),
                    format!("{h:?} is not a header name (1-64 of A-Z, a-z, 0-9, - and _)"),
                ));
            }
        }
        self.endpoint().map(drop).map_err(|e| (field("url"), e))
    }

    /// Where the sink delivers, parsed from `url`.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        match self.kind {
            SinkKind::File => {
                let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
                let path = std::path::PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(format!(
                        "{:?} is not an absolute path or file:// URL",
                        self.url
                    ));
                }
                Ok(Endpoint::File(path))
            }
            SinkKind::Syslog => {
                let url = url::Url::parse(&self.url)
                    .map_err(|e| format!("{:?} is not a URL: {e}", self.url))?;
                let pin = match (url.scheme(), &self.tls_pin_sha256) {
                    ("tcp", None) => None,
                    ("tcp", Some(_)) => {
                        return Err(
                            "tls_pin_sha256 is set but the URL is tcp:// (use tls://)".into()
                        );
                    }
                    ("tls", Some(pin)) => {
                        Some(crate::openclaw::parse_tls_pin(pin).map_err(|e| e.to_string())?)
                    }
                    ("tls", None) => {
                        return Err(
                            "tls:// needs tls_pin_sha256 (the receiver's certificate SHA-256)"
                                .into(),
                        );
                    }
                    (other, _) => {
                        return Err(format!(
                            "syslog sinks take tcp://host:port or tls://host:port, not {other}://"
                        ));
                    }
                };
                let host = url
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| "the URL names no host".to_owned())?;
                let port = url
                    .port()
                    .ok_or_else(|| "the URL names no port".to_owned())?;
                Ok(Endpoint::Tcp {
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port,
                    tls_pin: pin,
                })
            }
            SinkKind::Webhook => {
                let url = url::Url::parse(&self.url)
                    .map_err(|e| format!("{:?} is not a URL: {e}", self.url))?;
                if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                    return Err("webhook sinks take an http:// or https:// URL".into());
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err("put the webhook's credentials in its secret, not the URL".into());
                }
                Ok(Endpoint::Http(url))
            }
            SinkKind::Otlp => otlp_logs_url(&self.url).map(Endpoint::Otlp),
        }
    }
}

/// The OTLP/HTTP logs URL for `url`: a base URL gets `/v1/logs` appended (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` does); one already ending in it is kept.
fn otlp_logs_url(url: &str) -> Result<url::Url, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err("otlp sinks take an http:// or https:// URL (OTLP/HTTP)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("put the collector's credentials in the sink's token, not the URL".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("the collector URL takes no query or fragment".into());
    }
    if !parsed.path().ends_with(super::otlp::LOGS_PATH) {
        let path = format!(
            "{}{}",
            parsed.path().trim_end_matches('/'),
            super::otlp::LOGS_PATH
        );
        parsed.set_path(&path);
    }
    Ok(parsed)
}

/// A parsed sink URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An OTLP/HTTP collector's logs URL (ends in `/v1/logs`).
    Otlp(url::Url),
    /// An HTTP(S) receiver.
    Http(url::Url),
    /// A JSON-lines file.
    File(std::path::PathBuf),
    /// A TCP peer.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// `tls://`: the pinned certificate's SHA-256.
        tls_pin: Option<[u8; 32]>,
    },
}

/// 1-32 of `a-z0-9_`, starting with a letter (config keys are lowercased from
/// the environment, and the name becomes `DEFENSECLAW_EXPORT_<NAME>_TOKEN`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The secret's variable and credential names for sink `name`.
pub fn token_names(name: &str) -> (String, String) {
    (
        format!("DEFENSECLAW_EXPORT_{}_TOKEN", name.to_ascii_uppercase()),
        format!("export-{name}-token"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(url: &str) -> SinkSettings {
        toml::from_str(&format!("kind = \"otlp\"\nurl = {url:?}")).unwrap()
    }

    #[test]
    fn otlp_urls_get_the_logs_path_once() {
        for (given, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/logs"),
            ("http://c:4318/", "http://c:4318/v1/logs"),
            ("https://c/otel/", "https://c/otel/v1/logs"),
            ("https://c/otel/v1/logs", "https://c/otel/v1/logs"),
        ] {
            assert_eq!(
                otlp(given).endpoint().unwrap(),
                Endpoint::Otlp(url::Url::parse(want).unwrap()),
                "{given}"
            );
        }
        for bad in [
            "grpc://c:4317",
            "http://u:p@c:4318",
            "http://c:4318/?token=x",
            "c:4318",
        ] {
            assert!(otlp(bad).validate("o").is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_header_is_a_header_name_and_only_for_otlp() {
        let mut s = otlp("http://c:4318");
        s.auth_header = Some("x-api-key".into());
        assert!(s.validate("o").is_ok());
        s.auth_header = Some("bad header\r\n".into());
        assert_eq!(s.validate("o").unwrap_err().0, "export.o.auth_header");
        let mut f: SinkSettings = toml::from_str("kind = \"file\"\nurl = \"/x\"").unwrap();
        f.auth_header = Some("x-api-key".into());
        assert!(f.validate("f").is_err());
    }
}
