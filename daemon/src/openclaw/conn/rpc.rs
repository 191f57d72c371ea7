//! RPC correlation: the handle background tasks call the gateway through, the
//! requests it queues for the frame loop, the replies the loop is waiting for,
//! and the error of one call.

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::openclaw::approval_kind::ApprovalKind;
use crate::openclaw::redact::{redact_text, truncate};

/// The gateway's reason when an approval was resolved by someone else first.
pub(super) const ALREADY_RESOLVED: &str = "APPROVAL_ALREADY_RESOLVED";

/// Error of one RPC.
#[derive(Debug, Clone)]
pub(crate) enum RpcError {
    Timeout,
    Disconnected,
    Gateway {
        code: String,
        detail: Option<String>,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl RpcError {
    pub(super) fn from_error(e: &Value) -> Self {
        let details = &e["details"];
        let detail = details["code"]
            .as_str()
            .or_else(|| details["reason"].as_str())
            .or_else(|| details["authReason"].as_str())
            .map(str::to_owned);
        let retry_after_ms = e["retryAfterMs"]
            .as_u64()
            .or_else(|| details["retryAfterMs"].as_u64());
        Self::Gateway {
            code: e["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
            detail,
            message: truncate(&redact_text(e["message"].as_str().unwrap_or("")), 300),
            retry_after_ms,
        }
    }

    pub(super) fn reason_is(&self, what: &str) -> bool {
        matches!(self, RpcError::Gateway { detail: Some(d), .. } if d == what)
            || matches!(self, RpcError::Gateway { message, .. } if message.contains("already resolved") && what == ALREADY_RESOLVED)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Timeout => f.write_str("request timed out"),
            RpcError::Disconnected => f.write_str("gateway disconnected"),
            RpcError::Gateway {
                code,
                detail,
                message,
                ..
            } => match detail {
                Some(d) => write!(f, "{code} ({d}): {message}"),
                None => write!(f, "{code}: {message}"),
            },
        }
    }
}

/// One request queued for the frame loop, with where its reply goes.
pub(super) struct Cmd {
    pub(super) method: String,
    pub(super) params: Value,
    pub(super) expect_final: bool,
    pub(super) reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// Client side of the connection loop for background tasks.
#[derive(Clone, Debug)]
pub(crate) struct Rpc {
    tx: mpsc::Sender<Cmd>,
    timeout: Duration,
}

impl Rpc {
    /// A handle that queues calls on `tx` and gives up on each after `timeout` (plus a second).
    pub(super) fn new(tx: mpsc::Sender<Cmd>, timeout: Duration) -> Self {
        Self { tx, timeout }
    }

    pub(crate) async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.call_inner(method, params, false).await
    }

    /// A request that gets an `accepted` response first and the result later.
    #[allow(dead_code)]
    pub(crate) async fn call_two_phase(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        self.call_inner(method, params, true).await
    }

    async fn call_inner(
        &self,
        method: &str,
        params: Value,
        expect_final: bool,
    ) -> Result<Value, RpcError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd {
            method: method.to_owned(),
            params,
            expect_final,
            reply,
        };
        self.tx
            .send(cmd)
            .await
            .map_err(|_| RpcError::Disconnected)?;
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RpcError::Disconnected),
            Err(_) => Err(RpcError::Timeout),
        }
    }
}

/// A request sent and not yet answered: a caller's RPC, or an approval resolve.
pub(super) enum Pending {
    Call {
        reply: oneshot::Sender<Result<Value, RpcError>>,
        expect_final: bool,
        deadline: Instant,
    },
    Resolve {
        approval_id: String,
        kind: ApprovalKind,
        deadline: Instant,
    },
}
