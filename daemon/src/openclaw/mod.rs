//! OpenClaw gateway monitor and runtime enforcement.
//!
//! One authenticated WebSocket connection to the OpenClaw gateway: it watches
//! what the agent does (`session.tool` observations), answers exec and plugin
//! approvals according to the daemon's policy, and pushes the daemon's
//! skill/MCP block decisions into OpenClaw (`skills.update`, `config.patch`).
//!
//! The daemon integrates through [`Host`] (enforcement verdicts, audit store,
//! target registry) and [`MonitorHandle`] (status, approvals, enforcement).
//!
//! Configuration (`[openclaw]`, every key optional):
//!
//! ```toml
//! [openclaw]
//! enabled = true
//! url = "ws://127.0.0.1:18789/"        # ws:// only for loopback; wss:// otherwise
//! # tls_pin_sha256 = "ab:cd:..."       # wss:// only
//! exec_default = "ask"                 # or "deny"
//! deny_patterns = ['\bterraform\s+destroy\b']
//! allow_patterns = ['^(ls|pwd|git status)(\s|$)']
//! builtin_deny_rules = true
//! request_timeout_secs = 30
//! handshake_timeout_secs = 15
//! backoff_initial_ms = 1000
//! backoff_max_secs = 30
//! auth_retry_secs = 300
//! max_frame_bytes = 26214400
//! audit_queue_capacity = 8192
//! ```
//!
//! Exec approvals: a deny rule (built-in or `deny_patterns`) or a command
//! touching a blocked skill's directory → `deny`; otherwise every text form of
//! the command (command line, argv joined) covered by `allow_patterns` and free
//! of shell control operators → `allow-once`; otherwise `exec_default`
//! (`ask` leaves it to a human, audited as `deferred`). Empty commands are
//! denied. `allow-always` is never sent. Plugin approvals for an MCP tool are
//! denied when the server (target `<server>`) or the tool (target
//! `<server>/<tool>`) is blocked; others are left to a human.

mod approval_kind;
mod audit_queue;
mod conn;
mod device;
mod engine;
pub mod gate_setup;
pub(crate) mod host;
pub(crate) mod mcp_wiring;
mod monitor;
mod peer;
pub(crate) mod policy;
pub(crate) mod redact;
pub(crate) mod settings;
mod state;
mod tls;
mod tool_frame;

pub use gate_setup::{GateChange, GateError, GateSpec, GateView, GatewayDocs};
pub use host::{
    Host, HostError, HostVerdict, MonitorAudit, ReportedSkill, ReportedSkills, ReportedTool,
    TargetKind,
};
pub use monitor::{MonitorHandle, OpenClawMonitor};
pub use policy::{BUILTIN_DENY_RULES, Policy, PolicyDecision};
pub use settings::{
    DEFAULT_PLUGIN_DIR, DEFAULT_URL, DEVICE_KEY_FILE, ExecDefault, GatewayToken, OnUnreachable,
    OpenClawError, OpenClawSettings, REQUESTED_SCOPES, ToolAction, ToolRule,
};
pub use state::{ApprovalKind, ApprovalView, GatewayState, GatewayStatus};
pub use tls::{parse_pin as parse_tls_pin, pinned_config as pinned_tls_config};
