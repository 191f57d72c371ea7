//! Which hosts are this machine: `localhost`, `127.0.0.0/8` and `::1`.
//!
//! Plain `http` is accepted only towards these (tests, local providers), so every
//! caller must draw the line at the same place. IPv4-mapped IPv6 (`::ffff:127.0.0.1`)
//! and subdomains of `localhost` are not loopback here: the rule stays narrow.

use std::net::IpAddr;

/// True for the host `localhost` (any case), an address in `127.0.0.0/8`, or `::1`.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// True when `url` has a host and it is loopback ([`is_loopback_host`]).
pub fn is_loopback_url(url: &url::Url) -> bool {
    url.host().as_ref().is_some_and(is_loopback_host)
}

/// True when `text` parses as a URL whose host is loopback. Text that is not a
/// URL is not loopback, so a caller deciding whether plain http is acceptable
/// errs on the side of refusing.
pub fn is_loopback_url_str(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| is_loopback_url(&u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for yes in [
            "http://localhost:8080/",
            "http://LocalHost/",
            "http://127.0.0.1/",
            "http://127.1.2.3:9/x",
            "http://[::1]:8080/",
        ] {
            assert!(is_loopback_url_str(yes), "{yes}");
        }
        for no in [
            "http://example.com/",
            "http://localhost.evil.example/",
            "http://evil.localhost/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.0.0.1/",
            "not a url",
            "",
            "file:///etc/passwd",
        ] {
            assert!(!is_loopback_url_str(no), "{no}");
        }
    }

    #[test]
    fn host_form_agrees_with_the_url_form() {
        assert!(is_loopback_host(&url::Host::Domain("localhost")));
        assert!(is_loopback_host(&url::Host::Ipv4([127, 0, 0, 1].into())));
        assert!(!is_loopback_host(&url::Host::Domain("example.com")));
    }
}
