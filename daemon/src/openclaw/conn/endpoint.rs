//! The gateway endpoint policy: which URLs are acceptable (`ws://` only to a
//! loopback host, no credentials in the URL, a TLS pin only with `wss://`)
//! and the TLS connector that goes with them.

use defenseclaw_common::loopback::is_loopback_host;
use std::fmt;

use tokio_tungstenite::Connector;

use crate::openclaw::settings::{OpenClawError, OpenClawSettings};
use crate::openclaw::tls;

/// The validated gateway endpoint.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(super) url: String,
    pub(super) connector: Option<Connector>,
    /// `ws://`: the listener's owner is checked before the token is sent.
    pub(super) plain: bool,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `ws://` only for loopback hosts; no credentials in the URL; a pin needs `wss://`.
    pub(crate) fn parse(s: &OpenClawSettings) -> Result<Self, OpenClawError> {
        let url =
            url::Url::parse(&s.url).map_err(|e| OpenClawError::Config(format!("url: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OpenClawError::Config(
                "url must not contain credentials".into(),
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| OpenClawError::Config("url has no host".into()))?;
        let connector = match url.scheme() {
            "ws" => {
                if !is_loopback_host(&host) {
                    return Err(OpenClawError::Config(format!(
                        "ws:// is only allowed for loopback hosts (got {host}); use wss://"
                    )));
                }
                if s.tls_pin_sha256.is_some() {
                    return Err(OpenClawError::Config(
                        "tls_pin_sha256 requires a wss:// url".into(),
                    ));
                }
                None
            }
            "wss" => match &s.tls_pin_sha256 {
                Some(pin) => Some(tls::pinned_connector(tls::parse_pin(pin)?)?),
                None => None,
            },
            other => {
                return Err(OpenClawError::Config(format!(
                    "url scheme must be ws or wss, not {other}"
                )));
            }
        };
        Ok(Self {
            plain: url.scheme() == "ws",
            url: url.to_string(),
            connector,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str, pin: Option<&str>) -> Result<Endpoint, OpenClawError> {
        Endpoint::parse(&OpenClawSettings {
            url: url.into(),
            tls_pin_sha256: pin.map(str::to_owned),
            ..OpenClawSettings::default()
        })
    }

    #[test]
    fn ws_only_for_loopback() {
        assert!(ep("ws://127.0.0.1:18789/", None).is_ok());
        assert!(ep("ws://localhost:1/", None).is_ok());
        assert!(ep("ws://[::1]:1/", None).is_ok());
        assert!(ep("ws://10.0.0.5:18789/", None).is_err());
        assert!(ep("ws://gateway.example:18789/", None).is_err());
        assert!(ep("wss://gateway.example:18789/", None).is_ok());
        assert!(ep("http://127.0.0.1/", None).is_err());
        assert!(ep("ws://user:pw@127.0.0.1/", None).is_err());
        assert!(ep("ws://127.0.0.1/", Some(&"ab".repeat(32))).is_err());
        assert!(ep("wss://gw.example/", Some(&"ab".repeat(32))).is_ok());
    }
}
