//! `[metrics]`: where the Prometheus endpoint listens, if anywhere, and how
//! many scrapes it serves at once. Only loopback TCP or a Unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served: a loopback `IP:PORT` (`127.0.0.1:9464`,
    /// `[::1]:9464`) or `unix:/absolute/path` (a second Unix socket, mode
    /// `[server] socket_mode`). Unset: no endpoint.
    pub listen: Option<String>,
    /// Scrapes served at once; a connection beyond them is closed at once.
    pub max_scrapers: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: None,
            max_scrapers: 4,
        }
    }
}

/// A checked `[metrics] listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path (absolute).
    Unix(PathBuf),
}

impl MetricsSettings {
    /// The endpoint, if configured; a non-loopback or unparsable address is a
    /// configuration error that names the key.
    pub fn endpoint(&self) -> Result<Option<MetricsListen>, ConfigError> {
        let Some(listen) = self.listen.as_deref() else {
            return Ok(None);
        };
        let value = |reason: String| ConfigError::Value {
            field: "metrics.listen",
            reason,
        };
        if self.max_scrapers == 0 {
            return Err(ConfigError::Value {
                field: "metrics.max_scrapers",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(path) = listen.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(value(format!(
                    "unix:{} is not an absolute path",
                    path.display()
                )));
            }
            return Ok(Some(MetricsListen::Unix(path)));
        }
        let addr: SocketAddr = listen.parse().map_err(|_| {
            value(format!(
                "{} is neither IP:PORT nor unix:/path (e.g. 127.0.0.1:9464)",
                crate::error::quoted(listen)
            ))
        })?;
        if !addr.ip().is_loopback() {
            return Err(value(format!(
                "{addr} is not a loopback address: metrics are served only on 127.0.0.0/8, [::1] or a Unix socket (put a proxy in front to expose them)"
            )));
        }
        Ok(Some(MetricsListen::Tcp(addr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> Result<Option<MetricsListen>, ConfigError> {
        MetricsSettings {
            listen: Some(s.into()),
            ..Default::default()
        }
        .endpoint()
    }

    #[test]
    fn loopback_and_unix_are_accepted() {
        assert_eq!(MetricsSettings::default().endpoint().unwrap(), None);
        assert!(matches!(
            listen("127.0.0.1:9464"),
            Ok(Some(MetricsListen::Tcp(_)))
        ));
        assert!(matches!(listen("[::1]:0"), Ok(Some(MetricsListen::Tcp(_)))));
        assert!(matches!(
            listen("unix:/run/dc/metrics.sock"),
            Ok(Some(MetricsListen::Unix(_)))
        ));
    }

    #[test]
    fn everything_else_is_refused_with_the_key_named() {
        for bad in [
            "0.0.0.0:9464",
            "[::]:9464",
            "10.0.0.1:80",
            "localhost:9464",
            "9464",
            "unix:rel.sock",
            "unix:",
        ] {
            let err = listen(bad).unwrap_err().to_string();
            assert!(err.contains("metrics.listen"), "{bad}: {err}");
        }
        let err = listen("0.0.0.0:9464").unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
    }
}
