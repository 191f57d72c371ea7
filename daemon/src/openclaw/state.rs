//! State shared between the connection task and the daemon's handle: the
//! gateway status, the approvals seen and the enforcement changes waiting for
//! the gateway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::host::TargetKind;
use super::settings::OpenClawSettings;

/// Connection state shown by `defenseclawctl status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayState {
    /// Monitor disabled in the configuration.
    Disabled,
    /// Dialing / handshaking.
    Connecting,
    /// `hello-ok` received; monitoring.
    Connected,
    /// Waiting before the next reconnect attempt.
    Backoff,
    /// The gateway refused our credentials; retrying slowly.
    AuthFailed,
}

/// The `openclaw` object of `status -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Connection state, the first thing `status` shows.
    pub state: GatewayState,
    /// Configured gateway URL.
    pub url: String,
    /// Gateway version from `hello-ok` (`server.version`).
    pub server_version: Option<String>,
    /// Negotiated protocol version.
    pub protocol: Option<u32>,
    /// Scopes granted by the gateway.
    pub scopes: Vec<String>,
    /// Requested scopes the gateway did not grant.
    pub missing_scopes: Vec<String>,
    /// RFC 3339 time of the last event received.
    pub last_event_at: Option<String>,
    /// Last connection/protocol error (never contains secrets).
    pub last_error: Option<String>,
    /// Why the gateway is trusted with the token (`peer-uid <n>`, `tls-pin`,
    /// `tls`) or why it is not (`refused: …`); `None` before the first dial.
    pub gateway_check: Option<String>,
}

pub use super::approval_kind::ApprovalKind;

/// A pending (or recently resolved) approval the monitor saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Approval id, as the gateway names it in `*.approval.resolve`.
    pub id: String,
    /// Exec or plugin approval.
    pub kind: ApprovalKind,
    /// The command (exec) or tool (plugin, `server/tool` for MCP tools).
    pub subject: String,
    /// Session key, when known.
    pub session_key: Option<String>,
    /// Agent id, when known.
    pub agent_id: Option<String>,
    /// Creation time (ms since epoch) as reported by the gateway.
    pub created_at_ms: Option<i64>,
    /// Expiry time (ms since epoch) as reported by the gateway.
    pub expires_at_ms: Option<i64>,
    /// The daemon's decision: `allowed`, `denied` or `deferred`.
    pub decision: String,
    /// Why the daemon decided so (the rule or verdict that matched), shown to the operator.
    pub reason: String,
    /// Final decision seen in `*.approval.resolved` (`allow-once`, `deny`, ...), if resolved.
    pub resolved_decision: Option<String>,
    /// Who resolved it, if resolved.
    pub resolved_by: Option<String>,
}

const MAX_APPROVALS_KEPT: usize = 1000;

#[derive(Debug)]
pub(crate) struct Shared {
    status: Mutex<GatewayStatus>,
    last_event_ms: AtomicI64,
    approvals: Mutex<Approvals>,
    pub(crate) pending: Mutex<BTreeMap<(TargetKind, String), bool>>,
    pending_notify: Notify,
    pub(crate) gate_setup: super::gate_setup::GateShared,
}

#[derive(Debug, Default)]
struct Approvals {
    order: std::collections::VecDeque<String>,
    by_id: std::collections::HashMap<String, ApprovalView>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(settings: &OpenClawSettings) -> Self {
        Self {
            status: Mutex::new(GatewayStatus {
                state: GatewayState::Disabled,
                url: settings.url.clone(),
                server_version: None,
                protocol: None,
                scopes: Vec::new(),
                missing_scopes: Vec::new(),
                last_event_at: None,
                last_error: None,
                gateway_check: None,
            }),
            last_event_ms: AtomicI64::new(0),
            approvals: Mutex::new(Approvals::default()),
            pending: Mutex::new(BTreeMap::new()),
            pending_notify: Notify::new(),
            gate_setup: super::gate_setup::GateShared::default(),
        }
    }

    pub(crate) fn status(&self) -> GatewayStatus {
        let mut s = lock(&self.status).clone();
        let ms = self.last_event_ms.load(Ordering::Relaxed);
        if ms > 0 {
            s.last_event_at = format_ms(ms);
        }
        s
    }

    pub(crate) fn set_state(&self, state: GatewayState) {
        lock(&self.status).state = state;
    }

    pub(crate) fn set_gateway_check(&self, check: &str) {
        lock(&self.status).gateway_check = Some(check.to_owned());
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut GatewayStatus)) {
        f(&mut lock(&self.status));
    }

    pub(crate) fn touch_event(&self) {
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn approvals(&self) -> Vec<ApprovalView> {
        let a = lock(&self.approvals);
        a.order
            .iter()
            .filter_map(|id| a.by_id.get(id).cloned())
            .collect()
    }

    pub(crate) fn has_approval(&self, id: &str) -> bool {
        lock(&self.approvals).by_id.contains_key(id)
    }

    pub(crate) fn record_approval(&self, view: ApprovalView) {
        let mut a = lock(&self.approvals);
        if a.by_id.insert(view.id.clone(), view.clone()).is_none() {
            a.order.push_back(view.id);
        }
        while a.order.len() > MAX_APPROVALS_KEPT {
            if let Some(old) = a.order.pop_front() {
                a.by_id.remove(&old);
            }
        }
    }

    pub(crate) fn update_approval(
        &self,
        id: &str,
        f: impl FnOnce(&mut ApprovalView),
    ) -> Option<ApprovalView> {
        let mut a = lock(&self.approvals);
        let v = a.by_id.get_mut(id)?;
        f(v);
        Some(v.clone())
    }

    pub(crate) fn push_enforcement(&self, kind: TargetKind, name: &str, blocked: bool) {
        lock(&self.pending).insert((kind, name.to_owned()), blocked);
        self.pending_notify.notify_one();
    }

    pub(crate) fn take_pending(&self) -> Vec<(TargetKind, String, bool)> {
        lock(&self.pending)
            .iter()
            .map(|((k, n), b)| (*k, n.clone(), *b))
            .collect()
    }

    /// Removes a pending action if it still has the value that was applied.
    pub(crate) fn clear_pending(&self, kind: TargetKind, name: &str, blocked: bool) {
        let mut p = lock(&self.pending);
        if p.get(&(kind, name.to_owned())) == Some(&blocked) {
            p.remove(&(kind, name.to_owned()));
        }
    }

    pub(crate) fn pending_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.pending_notify.notified()
    }
}

/// Milliseconds since the epoch, from the daemon's one clock.
pub(crate) use crate::clock::unix_now_ms as now_ms;

fn format_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openclaw::settings::DEFAULT_URL;

    #[test]
    fn status_serializes_like_the_cli_expects() {
        let shared = Shared::new(&OpenClawSettings::default());
        let v = serde_json::to_value(shared.status()).unwrap();
        assert_eq!(v["state"], "disabled");
        assert_eq!(v["url"], DEFAULT_URL);
        for k in [
            "server_version",
            "protocol",
            "scopes",
            "missing_scopes",
            "last_event_at",
            "last_error",
            "gateway_check",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
