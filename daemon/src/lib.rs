//! defenseclawd: the DefenseClaw governance daemon as a library. The binary is
//! a thin wrapper around [`daemon::run`]; tests start it with [`daemon::start`].
//!
//! A request flows one way: [`rpc`] (decode, authorise, encode) calls one
//! function of [`governance`] (the only code that writes or publishes events),
//! which writes through [`store`] (and so [`audit`]). Leaves below them:
//! [`clock`], [`config`], [`events`], [`model`], [`names`], [`paths`], [`secrets`],
//! [`listener`], [`telemetry`], [`metrics`], [`oidc`] and the [`openclaw`] protocol client.

pub mod audit;
pub mod audit_coalesce;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod error;
pub mod events;
pub mod export;
pub mod fs_move;
pub mod gate;
pub mod governance;
pub mod limits;
pub mod listener;
pub mod llm;
pub mod metrics;
pub mod model;
pub mod names;
pub mod oidc;
pub mod openclaw;
pub mod paths;
pub mod rpc;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
