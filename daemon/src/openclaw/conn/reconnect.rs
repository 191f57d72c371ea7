//! The connection task's outer loop: connect, serve, back off with jitter (or
//! as the gateway asked), repeat until cancelled; then drain the audit queue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::endpoint::Endpoint;
use super::handshake::{Conn, End};
use super::session::session;
use crate::governance::tool_gate::ToolGate;
use crate::openclaw::audit_queue::audit_writer;
use crate::openclaw::device::DeviceIdentity;
use crate::openclaw::engine::Engine;
use crate::openclaw::host::{Host, MonitorAudit};
use crate::openclaw::settings::{GatewayToken, OpenClawSettings};
use crate::openclaw::state::{GatewayState, Shared};

/// Everything the connection task needs.
pub(crate) struct Context<H> {
    settings: OpenClawSettings,
    token: Option<GatewayToken>,
    endpoint: Endpoint,
    gate: Arc<ToolGate>,
    device: DeviceIdentity,
    host: Arc<H>,
    shared: Arc<Shared>,
}

impl<H: Host> Context<H> {
    pub(crate) fn new(
        settings: OpenClawSettings,
        token: Option<GatewayToken>,
        endpoint: Endpoint,
        gate: Arc<ToolGate>,
        device: DeviceIdentity,
        host: Arc<H>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            settings,
            token,
            endpoint,
            gate,
            device,
            host,
            shared,
        }
    }
}

/// Exponential backoff from `backoff_initial_ms`, capped at `backoff_max_secs`, with equal jitter.
fn backoff_delay(s: &OpenClawSettings, attempt: u32) -> Duration {
    let max_ms = s.backoff_max_secs.saturating_mul(1000).max(1);
    let base = s
        .backoff_initial_ms
        .max(1)
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms);
    // Equal jitter: [base/2, base].
    let half = base / 2;
    let jitter = if half > 0 {
        rand::random_range(0..=half)
    } else {
        0
    };
    Duration::from_millis(half + jitter)
}

/// The connection task: connect, serve, back off, repeat until cancelled;
/// then drain the audit queue.
pub(crate) async fn run<H: Host>(ctx: Context<H>, cancel: CancellationToken) {
    let Context {
        settings,
        token,
        endpoint,
        gate,
        device,
        host,
        shared,
    } = ctx;
    let (audit_tx, audit_rx) = mpsc::channel(settings.audit_queue_capacity.max(16));
    let writer = tokio::spawn(audit_writer(host.clone(), audit_rx));
    let engine = Arc::new(Engine::new(gate, host, shared.clone(), audit_tx));
    let conn = Conn {
        settings,
        token,
        endpoint,
        device,
        shared: shared.clone(),
    };
    let mut attempt: u32 = 0;
    // The last refusal to trust the listener, audited and logged once per change.
    let mut last_refusal: Option<String> = None;
    // The state last warned about: a gateway that stays down (or a host with
    // none) is one warning per change of state, the retries only at debug
    // (their wording varies with timing: reset, refused, handshake cut).
    let mut last_warned: Option<GatewayState> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        shared.set_state(GatewayState::Connecting);
        let end = session(&conn, &engine, &cancel).await;
        if !matches!(end, End::Untrusted { .. }) {
            last_refusal = None;
        }
        let s = &conn.settings;
        let (state, error, delay) = match end {
            End::Cancelled => break,
            End::Closed {
                connected,
                error,
                restart_after,
            } => {
                if connected {
                    attempt = 0;
                    last_warned = None;
                }
                let d = restart_after.unwrap_or_else(|| backoff_delay(s, attempt));
                attempt = attempt.saturating_add(1);
                (GatewayState::Backoff, error, d)
            }
            End::Unavailable { error, retry_after } => {
                let d = retry_after.unwrap_or_else(|| backoff_delay(s, attempt));
                attempt = attempt.saturating_add(1);
                (
                    GatewayState::Backoff,
                    error,
                    d.min(Duration::from_secs(s.backoff_max_secs.max(1))),
                )
            }
            End::AuthFailed { error } => {
                engine
                    .audit(MonitorAudit {
                        action: "openclaw.connection".into(),
                        target: None,
                        outcome: "auth_failed".into(),
                        reason: error.clone(),
                        details: json!({ "url": conn.endpoint.url, "retry_in_secs": s.auth_retry_secs }),
                    })
                    .await;
                (
                    GatewayState::AuthFailed,
                    error,
                    Duration::from_secs(s.auth_retry_secs.max(1)),
                )
            }
            End::Rejected { error } => (
                GatewayState::Backoff,
                error,
                Duration::from_secs(s.auth_retry_secs.max(1)),
            ),
            End::Untrusted { error } => {
                let d = backoff_delay(s, attempt);
                attempt = attempt.saturating_add(1);
                if last_refusal.as_deref() != Some(error.as_str()) {
                    tracing::error!(url = %conn.endpoint.url, error = %error, "openclaw gateway not trusted with the token; retrying with backoff");
                    engine
                        .audit(MonitorAudit {
                            action: "openclaw.connection".into(),
                            target: None,
                            outcome: "refused".into(),
                            reason: error.clone(),
                            details: json!({ "url": conn.endpoint.url }),
                        })
                        .await;
                    last_refusal = Some(error.clone());
                }
                shared.update_status(|st| {
                    st.state = GatewayState::Backoff;
                    st.last_error = Some(error);
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                }
                continue;
            }
        };
        if last_warned == Some(state) {
            tracing::debug!(url = %conn.endpoint.url, error = %error, retry_in_ms = delay.as_millis() as u64, "openclaw gateway connection (unchanged)");
        } else {
            tracing::warn!(url = %conn.endpoint.url, error = %error, retry_in_ms = delay.as_millis() as u64, "openclaw gateway connection; retrying, further failures in this state are logged at debug");
            last_warned = Some(state);
        }
        shared.update_status(|st| {
            st.state = state;
            st.last_error = Some(error);
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    drop(engine);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let s = OpenClawSettings {
            backoff_initial_ms: 100,
            backoff_max_secs: 1,
            ..OpenClawSettings::default()
        };
        for a in 0..40 {
            let d = backoff_delay(&s, a);
            assert!(d <= Duration::from_secs(1));
            assert!(d >= Duration::from_millis(50));
        }
    }
}
