//! The rules both sides of the socket (daemon, CLI, testkit, bench, scanner) must
//! agree on, defined once so they cannot drift.
//!
//! - [`ibom`]: the Auth-IBOM document (`auth-ibom/v1`) and its derivation from the audit chain.
//! - [`issuer`]: how a configured OpenID issuer becomes the exact `iss` value.
//! - [`loopback`]: which hosts count as this machine (the only place plain `http` is allowed).
//! - [`names`]: the alphabet of every kind of name the API accepts.
//! - [`paths`]: where the daemon's socket lives and when its directory is trusted.
//! - `uds` (feature `uds`): a tonic channel over the daemon's Unix socket.

pub mod ibom;
pub mod issuer;
pub mod loopback;
pub mod names;
pub mod paths;
#[cfg(feature = "uds")]
pub mod uds;
