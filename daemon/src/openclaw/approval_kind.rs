//! The kind of an OpenClaw approval (a leaf: the connection's RPC layer and
//! the shared state both name it).

use serde::{Deserialize, Serialize};

/// Kind of an OpenClaw approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalKind {
    /// `exec.approval.*`
    Exec,
    /// `plugin.approval.*`
    Plugin,
}
