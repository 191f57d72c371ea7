//! The gRPC `Control` service as adapters: each RPC decodes its request,
//! identifies and authorises the caller, makes one call into
//! [`crate::governance`] and encodes the reply. Wire conversion lives in
//! [`convert`]; errors become statuses in one place ([`crate::error`]). The
//! trait implementation is generated from the proto (`delegate_control!`).

pub mod access;
mod audit;
pub mod authn;
mod connections;
pub mod convert;
mod findings;
mod ibom;
mod openclaw;
mod quarantine;
mod service;
mod status;
mod stepup;
pub mod streams;
mod targets;

pub use service::ControlService;
use service::ReplyStream;

/// Every adapter by RPC name: the dispatch generated from the proto calls
/// `adapters::<rpc>`, so an RPC added to an area file needs no line here.
mod adapters {
    pub(super) use super::audit::*;
    pub(super) use super::connections::*;
    pub(super) use super::findings::*;
    pub(super) use super::ibom::*;
    pub(super) use super::openclaw::*;
    pub(super) use super::quarantine::*;
    pub(super) use super::status::*;
    pub(super) use super::stepup::*;
    pub(super) use super::targets::*;
}

defenseclaw_proto::delegate_control!(ControlService, ReplyStream, adapters);
