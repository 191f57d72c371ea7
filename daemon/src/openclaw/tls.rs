//! TLS certificate pinning for `wss://` gateways (`tls_pin_sha256`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::settings::OpenClawError;

/// Parses a SHA-256 fingerprint: 64 hex digits, colons/spaces ignored.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], OpenClawError> {
    let cleaned: String = pin.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let bytes = hex::decode(cleaned.to_ascii_lowercase())
        .map_err(|_| OpenClawError::Config("tls_pin_sha256 must be hex".into()))?;
    bytes.try_into().map_err(|_| {
        OpenClawError::Config("tls_pin_sha256 must be 32 bytes (64 hex digits)".into())
    })
}

#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate does not match tls_pin_sha256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connector accepting exactly the pinned certificate.
pub(crate) fn pinned_connector(
    pin: [u8; 32],
) -> Result<tokio_tungstenite::Connector, OpenClawError> {
    Ok(tokio_tungstenite::Connector::Rustls(pinned_config(pin)?))
}

/// A client configuration accepting exactly the pinned certificate (also
/// used by `tls://` syslog export sinks).
pub fn pinned_config(pin: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, OpenClawError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| OpenClawError::Config(format!("tls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let hexpin = "AB".repeat(32);
        assert_eq!(parse_pin(&hexpin).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin("zz").is_err());
        assert!(pinned_connector([0; 32]).is_ok());
    }
}
