//! Events the governance layer publishes after a write commits. Defined here,
//! below every sender and receiver, so none of them imports another to share a type.

use crate::model::{EnforcementState, Target};

/// A change of enforcement that committed; runtime enforcers (the OpenClaw
/// monitor, the Token Vault's forgetting of blocked servers) follow these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementChanged {
    /// The skill or MCP server whose decision changed.
    pub target: Target,
    /// The state now in force for it.
    pub state: EnforcementState,
}
