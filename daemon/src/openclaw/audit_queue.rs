//! The audit queue's writer: commits the monitor's audit entries into the
//! host in queue order, a bounded number at once, retrying each until it lands.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::host::{Host, MonitorAudit};

/// Audit commits in flight at once, so a store that group-commits can batch
/// concurrent entries instead of paying one commit per observation.
pub(crate) const AUDIT_IN_FLIGHT: usize = 32;

/// Commits one entry, retrying with backoff when the host reports an error.
async fn commit<H: Host>(host: Arc<H>, entry: MonitorAudit) {
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        match host.audit(entry.clone()).await {
            Ok(()) => return,
            Err(e) => {
                attempts += 1;
                tracing::warn!(error = %e, action = %entry.action, attempts, "openclaw audit commit failed; retrying");
                if attempts >= 100 {
                    tracing::error!(action = %entry.action, "openclaw audit entry could not be committed");
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Drains the audit queue into the host (entries are started in queue order,
/// up to [`AUDIT_IN_FLIGHT`] concurrently, each retried on failure); returns
/// when every sender is gone and every entry has been committed.
pub(crate) async fn audit_writer<H: Host>(host: Arc<H>, mut rx: mpsc::Receiver<MonitorAudit>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            entry = rx.recv(), if open && in_flight.len() < AUDIT_IN_FLIGHT => match entry {
                Some(entry) => in_flight.push(commit(host.clone(), entry)),
                None => open = false,
            },
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::openclaw::host::{HostError, HostVerdict, TargetKind};
    use crate::openclaw::state::lock;

    #[derive(Default)]
    struct Flaky {
        calls: std::sync::atomic::AtomicUsize,
        committed: Mutex<Vec<String>>,
    }
    impl Host for Flaky {
        fn verdict(&self, _k: TargetKind, _n: &str) -> HostVerdict {
            HostVerdict::Unknown
        }
        async fn enforced_targets(&self) -> Vec<(TargetKind, String, bool)> {
            Vec::new()
        }
        fn audit(
            &self,
            e: MonitorAudit,
        ) -> impl std::future::Future<Output = Result<(), HostError>> + Send {
            // Every third call fails.
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = if n.is_multiple_of(3) {
                Err(HostError("disk busy".into()))
            } else {
                lock(&self.committed).push(e.reason);
                Ok(())
            };
            async move { r }
        }
        async fn observe_targets(&self, _k: TargetKind, _n: Vec<String>) {}
    }

    #[tokio::test]
    async fn audit_writer_retries_and_loses_nothing() {
        let host = Arc::new(Flaky::default());
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(audit_writer(host.clone(), rx));
        for i in 0..200 {
            let e = MonitorAudit {
                action: "t".into(),
                target: None,
                outcome: "observed".into(),
                reason: i.to_string(),
                details: json!({}),
            };
            tx.send(e).await.unwrap();
        }
        drop(tx);
        writer.await.unwrap();
        let mut got: Vec<usize> = lock(&host.committed)
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}
