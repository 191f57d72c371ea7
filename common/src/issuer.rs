//! How a configured OpenID Connect issuer becomes the exact `iss` value tokens carry.
//!
//! The daemon verifies tokens against it and the CLI logs in at it, so both must
//! normalise it the same way and refuse the same values.

use crate::loopback::is_loopback_host;

/// Why an issuer setting is refused, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IssuerError(pub String);

/// Turns a configured issuer into the exact `iss` value tokens must carry.
///
/// A bare domain (`tenant.us.auth0.com`, optionally with one trailing `/`) becomes
/// `https://tenant.us.auth0.com/`. A URL is kept verbatim (its trailing slash, or lack of
/// one, is significant) after checking it is `https`, or `http` on a loopback host, and
/// that it holds no `user:password@`, query or fragment.
pub fn normalize_issuer(raw: &str) -> Result<String, IssuerError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(IssuerError("issuer is empty".into()));
    }
    let candidate = if raw.contains("://") {
        raw.to_owned()
    } else {
        let domain = raw.strip_suffix('/').unwrap_or(raw);
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !valid {
            return Err(IssuerError(format!(
                "issuer {raw:?} is neither an https URL nor a domain name"
            )));
        }
        format!("https://{domain}/")
    };
    let url = url::Url::parse(&candidate)
        .map_err(|e| IssuerError(format!("issuer {raw:?} is not a valid URL: {e}")))?;
    // Before any message that quotes the setting: it would echo the password.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(IssuerError(
            "issuer must not contain user:password@ credentials".into(),
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| IssuerError(format!("issuer {raw:?} has no host")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => {
            return Err(IssuerError(format!(
                "issuer {raw:?} uses plain http; only https is allowed (http only for loopback hosts)"
            )));
        }
        other => {
            return Err(IssuerError(format!(
                "issuer {raw:?} has scheme {other:?}; https is required"
            )));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(IssuerError(format!(
            "issuer {raw:?} must not have a query or fragment"
        )));
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_expand_and_urls_stay_verbatim() {
        assert_eq!(
            normalize_issuer("tenant.us.auth0.com").ok().as_deref(),
            Some("https://tenant.us.auth0.com/")
        );
        assert_eq!(
            normalize_issuer(" tenant.us.auth0.com/ ").ok().as_deref(),
            Some("https://tenant.us.auth0.com/")
        );
        assert_eq!(
            normalize_issuer("https://login.example.com")
                .ok()
                .as_deref(),
            Some("https://login.example.com")
        );
        assert_eq!(
            normalize_issuer("http://127.0.0.1:4000/").ok().as_deref(),
            Some("http://127.0.0.1:4000/")
        );
        assert!(normalize_issuer("http://[::1]:8080/").is_ok());
        assert!(normalize_issuer("http://localhost:8080/").is_ok());
    }

    #[test]
    fn unsafe_issuers_are_refused() {
        for bad in [
            "",
            "   ",
            "not a domain",
            "http://idp.example.com/",
            "ftp://x.example/",
            "https://u:p@x.example/",
            "https://u@x.example/",
            "https://x.example/?a=b",
            "https://x.example/#frag",
            "tenant.example.com/path",
        ] {
            assert!(normalize_issuer(bad).is_err(), "{bad:?}");
        }
        let err = normalize_issuer("http://tenant.auth0.com/").unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn credentials_are_not_echoed() {
        for raw in [
            "https://user:hunter2@x.example/",
            "http://user:hunter2@idp.example.com/",
            "ftp://user:hunter2@x.example/",
        ] {
            let err = normalize_issuer(raw).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
