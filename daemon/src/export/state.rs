//! Each sink's delivery state in memory, for `status` (and metrics later):
//! written by the sink's task, read by whoever reports.

use std::sync::{Arc, Mutex, PoisonError};

/// How a sink is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkHealth {
    /// The last delivery succeeded.
    Ok,
    /// A delivery failed; retrying (fewer than [`FAILING_AFTER`] failures in a row).
    Retrying,
    /// Many deliveries in a row failed.
    Failing,
}

/// Consecutive failures after which a sink is `failing` rather than `retrying`.
pub const FAILING_AFTER: u32 = 5;

impl SinkHealth {
    /// `ok`, `retrying` or `failing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retrying => "retrying",
            Self::Failing => "failing",
        }
    }
}

/// One sink's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// `[export.<name>]`.
    pub name: String,
    /// `syslog`, `file`, …
    pub kind: String,
    /// Health.
    pub state: SinkHealth,
    /// Last seq the receiver accepted (written to the store at most once a
    /// second, see `governance::exporting::PERSIST_EVERY`).
    pub cursor: u64,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last failure, without secrets.
    pub last_error: Option<String>,
    /// When a delivery last succeeded (stored timestamp format).
    pub last_success_at: Option<String>,
}

/// Every sink's status; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Exporters {
    sinks: Arc<Mutex<Vec<SinkStatus>>>,
    /// The head records' public key (hex), for receivers to pin.
    signing_key: Option<Arc<str>>,
}

impl Exporters {
    /// No sinks yet; head records signed by `public_key` (hex).
    pub fn with_signing_key(public_key: &str) -> Self {
        Self {
            sinks: Arc::default(),
            signing_key: Some(public_key.into()),
        }
    }

    /// The head records' public key (hex), if the daemon has one.
    pub fn signing_key(&self) -> Option<&str> {
        self.signing_key.as_deref()
    }

    /// Registers a sink; returns its slot.
    pub fn register(&self, name: &str, kind: &str, cursor: u64) -> usize {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        sinks.push(SinkStatus {
            name: name.to_owned(),
            kind: kind.to_owned(),
            state: SinkHealth::Ok,
            cursor,
            failures: 0,
            last_error: None,
            last_success_at: None,
        });
        sinks.len() - 1
    }

    /// Updates one sink's figures.
    pub fn update(&self, slot: usize, f: impl FnOnce(&mut SinkStatus)) {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = sinks.get_mut(slot) {
            f(s);
        }
    }

    /// A copy of every sink's figures, in configuration order.
    pub fn snapshot(&self) -> Vec<SinkStatus> {
        self.sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
