//! The gateway connection, one job per file, data flowing one way:
//! `reconnect` (the task's outer loop) → `session` (one connected session's
//! frame loop) → `handshake` (dial and signed connect) → `endpoint` (URL and
//! TLS policy); `session` → `reconcile` (work after connect) → `rpc` (request
//! correlation); `reconcile` → `coverage` (what the daemon scans of OpenClaw).

mod coverage;
mod endpoint;
mod handshake;
mod reconcile;
mod reconnect;
pub(crate) mod rpc;
mod session;

pub(crate) use endpoint::Endpoint;
pub(crate) use reconnect::{Context, run};
