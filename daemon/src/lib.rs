//! defenseclawd: the DefenseClaw governance daemon as a library. The binary is
//! a thin wrapper around [`daemon::run`]; tests start it with [`daemon::start`].

pub mod access;
pub mod admission;
pub mod audit;
pub mod audit_coalesce;
pub mod authn;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod limits;
pub mod listener;
pub mod model;
pub mod names;
pub mod oidc;
pub mod openclaw;
pub mod openclaw_host;
pub mod paths;
pub mod protection;
pub mod scan_input;
pub mod scan_pool;
pub mod scanning;
pub mod secrets;
pub mod state;
pub mod stepup;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod vault;
