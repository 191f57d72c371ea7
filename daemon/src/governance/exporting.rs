//! Delivering the audit log to each `[export.<name>]` sink: one task per sink
//! reads entries after its cursor through the store's readers, sends them in
//! batches, and advances the cursor in the store only once the receiver
//! accepted the batch. A transport without acknowledgement (syslog over TCP)
//! only writes; its writes are confirmed together once the sink is idle for a
//! flush interval, or every [`CONFIRM_EVERY`] / [`CONFIRM_ENTRIES`] under
//! load, and the cursor moves then. After any failure delivery resumes from
//! the cursor. The cursor is written to the store at most once a second
//! ([`PERSIST_EVERY`]); after a crash delivery resumes from the stored one. Woken by audit appends; retries with capped exponential
//! backoff; never holds anything the control plane waits on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::export::record::{Filter, entry_object, head_object};
use crate::export::settings::token_names;
use crate::export::signing::HeadSigner;
use crate::export::{Delivered, Exporters, SinkHealth, SinkSettings, state::FAILING_AFTER};
use crate::secrets::SecretSources;
use crate::store::{AdvanceExportCursor, Store};

/// Under steady load, unacknowledged writes are confirmed at least this often…
pub const CONFIRM_EVERY: Duration = Duration::from_secs(1);
/// …and at least every this many entries (so a failure resends a bounded tail).
pub const CONFIRM_ENTRIES: usize = 2000;

/// The stored cursor is written at most this often while it moves (and when
/// the sink has been idle this long), so a crash resends at most about this
/// much.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Writes sent but not yet confirmed (see [`crate::export::Delivered::Written`]).
struct Unconfirmed {
    /// Last entry seq written.
    last_seq: u64,
    /// Entries written.
    entries: usize,
    /// When the first of them was written.
    since: Instant,
}

/// Starts one task per sink. Fails (before anything is spawned) when a sink
/// cannot be built (a webhook without its secret) or the store cannot be read.
pub async fn start(
    store: &Store,
    sinks: &BTreeMap<String, SinkSettings>,
    secrets: &SecretSources,
    exporters: &Exporters,
    signer: &std::sync::Arc<HeadSigner>,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    cancel: &CancellationToken,
) -> std::result::Result<(), String> {
    if sinks.is_empty() {
        return Ok(());
    }
    let host_id = store.export_host_id().await.map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    for (name, settings) in sinks {
        let (env_name, credential) = token_names(name);
        let secret = secrets
            .get_named(&env_name, &credential)
            .map_err(|e| e.to_string())?
            .map(|(s, _)| s);
        if settings.kind == crate::export::SinkKind::Webhook && secret.is_none() {
            return Err(format!(
                "[export.{name}]: a webhook sink needs its signing secret: set {env_name}, the credential {credential}, or {env_name} in <state dir>/.env"
            ));
        }
        let sink = crate::export::Sink::new(settings, secret)
            .map_err(|e| format!("[export.{name}]: {e}"))?;
        let cursor = store
            .export_cursor(name.clone())
            .await
            .map_err(|e| e.to_string())?;
        let slot = exporters.register(name, settings.kind.as_str(), cursor);
        tasks.push(Runner {
            name: name.clone(),
            settings: settings.clone(),
            filter: Filter::from_settings(settings),
            sink,
            store: store.clone(),
            exporters: exporters.clone(),
            metrics: metrics.clone(),
            slot,
            host_id: host_id.clone(),
            signer: signer.clone(),
            cursor,
            persisted: (cursor, Instant::now()),
        });
    }
    for runner in tasks {
        tokio::spawn(runner.run(cancel.child_token()));
    }
    Ok(())
}

struct Runner {
    name: String,
    settings: SinkSettings,
    filter: Filter,
    sink: crate::export::Sink,
    store: Store,
    exporters: Exporters,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    slot: usize,
    host_id: String,
    /// Signs head records.
    signer: std::sync::Arc<HeadSigner>,
    /// Last seq the receiver accepted.
    cursor: u64,
    /// The cursor as last written to the store, and when.
    persisted: (u64, Instant),
}

impl Runner {
    async fn run(mut self, cancel: CancellationToken) {
        let mut wake = self.store.subscribe();
        self.report_lag();
        let flush = Duration::from_millis(self.settings.flush_interval_ms);
        let head_every = Duration::from_secs(self.settings.head_every_secs);
        let max_backoff = Duration::from_secs(self.settings.max_backoff_secs);
        let mut backoff = flush;
        // Where the next read starts: ahead of `cursor` while writes await
        // confirmation, back to it after a failure.
        let mut send_pos = self.cursor;
        let mut unconfirmed: Option<Unconfirmed> = None;
        let mut last_head: Option<Instant> = None;
        // The newest seq:hash sent without a head record after it.
        let mut unheaded: Option<(u64, String)> = None;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let page = match self
                .store
                .audit_page(send_pos, self.settings.batch_size)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    self.failed(&format!("reading the audit log: {e}"));
                    if sleep_or_cancel(&cancel, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            };
            let head_due = last_head.is_none_or(|t| t.elapsed() >= head_every);
            let Some(last) = page.last() else {
                // Idle: a due head record for what was sent, then wait for appends.
                if head_due && let Some((seq, hash)) = unheaded.clone() {
                    let head = [self.head(seq, &hash)];
                    let sent = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = self.sink.deliver(&head) => r,
                    };
                    match sent {
                        Ok(delivered) => {
                            last_head = Some(Instant::now());
                            unheaded = None;
                            if delivered == Delivered::Written {
                                unconfirmed.get_or_insert_with(|| Unconfirmed {
                                    last_seq: send_pos,
                                    entries: 0,
                                    since: Instant::now(),
                                });
                            }
                            continue;
                        }
                        // A syslog connection found closed: resend from the cursor.
                        Err(e) if unconfirmed.is_some() => {
                            self.failed(&e);
                            send_pos = self.cursor;
                            unconfirmed = None;
                            if sleep_or_cancel(&cancel, backoff).await {
                                return;
                            }
                            backoff = (backoff * 2).min(max_backoff);
                            continue;
                        }
                        Err(_) => {}
                    }
                }
                if let Some(u) = &unconfirmed {
                    // Writes await confirmation: once nothing more comes for a
                    // flush interval, confirm them (more appends keep writing).
                    let upto = u.last_seq;
                    let woke = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = wake.recv() => if matches!(r, Err(RecvError::Closed)) { return } else { true },
                        () = tokio::time::sleep(flush) => false,
                    };
                    if !woke {
                        unconfirmed = None;
                        if let Err(e) = self.confirm(upto).await {
                            self.failed(&e);
                            send_pos = self.cursor;
                            if sleep_or_cancel(&cancel, backoff).await {
                                return;
                            }
                            backoff = (backoff * 2).min(max_backoff);
                        }
                    }
                    continue;
                }
                let mut wait = if unheaded.is_some() {
                    last_head.map_or(flush, |t| head_every.saturating_sub(t.elapsed()).max(flush))
                } else {
                    head_every
                };
                if self.cursor > self.persisted.0 {
                    // Idle with the stored cursor behind: write it once due.
                    if self.persisted.1.elapsed() >= PERSIST_EVERY {
                        if let Err(e) = self.persist_cursor(true).await {
                            self.failed(&e);
                        }
                    } else {
                        wait = wait.min(PERSIST_EVERY.saturating_sub(self.persisted.1.elapsed()));
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = wake.recv() => if matches!(r, Err(RecvError::Closed)) { return },
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            };
            let (last_seq, last_hash) = (last.seq, last.hash.clone());
            let mut records: Vec<serde_json::Value> = page
                .iter()
                .filter(|e| self.filter.matches(e))
                .map(|e| entry_object(e, &self.host_id))
                .collect();
            if head_due {
                records.push(self.head(last_seq, &last_hash));
            }
            let outcome = if records.is_empty() {
                // Nothing to send; but while earlier writes await confirmation
                // the cursor may not pass them.
                Ok(if unconfirmed.is_some() {
                    Delivered::Written
                } else {
                    Delivered::Ok
                })
            } else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = self.sink.deliver(&records) => r,
                }
            };
            let advanced = match outcome {
                Ok(Delivered::Ok) => self.confirm(last_seq).await,
                Ok(Delivered::Written) => {
                    let u = unconfirmed.get_or_insert_with(|| Unconfirmed {
                        last_seq,
                        entries: 0,
                        since: Instant::now(),
                    });
                    u.last_seq = last_seq;
                    u.entries += page.len();
                    if u.entries >= CONFIRM_ENTRIES || u.since.elapsed() >= CONFIRM_EVERY {
                        unconfirmed = None;
                        self.confirm(last_seq).await
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            };
            match advanced {
                Ok(()) => {
                    send_pos = last_seq;
                    if head_due {
                        last_head = Some(Instant::now());
                        unheaded = None;
                    } else {
                        unheaded = Some((last_seq, last_hash));
                    }
                    backoff = flush;
                }
                Err(e) => {
                    self.failed(&e);
                    // Nothing after the cursor is known to have arrived.
                    send_pos = self.cursor;
                    unconfirmed = None;
                    if sleep_or_cancel(&cancel, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    /// Confirms what the sink was sent up to `upto` (a no-op for
    /// acknowledged transports), then records the cursor and the sink's
    /// health. On error the cursor stays where it was.
    async fn confirm(&mut self, upto: u64) -> Result<(), String> {
        self.sink.confirm().await?;
        self.cursor = self.cursor.max(upto);
        self.persist_cursor(false).await?;
        let (cursor, now) = (self.cursor, self.store.clock().ts());
        self.report_lag();
        self.exporters.update(self.slot, |s| {
            s.state = SinkHealth::Ok;
            s.cursor = cursor;
            s.failures = 0;
            s.last_success_at = Some(now);
        });
        Ok(())
    }

    /// Writes the cursor to the store when it moved and [`PERSIST_EVERY`]
    /// has passed since the last write (or `now`): one small commit a second
    /// at most, instead of one per batch competing with mutations for the
    /// store's writer. A restart resends what was accepted after it.
    async fn persist_cursor(&mut self, now: bool) -> Result<(), String> {
        if self.cursor <= self.persisted.0 || !(now || self.persisted.1.elapsed() >= PERSIST_EVERY)
        {
            return Ok(());
        }
        self.store
            .write(AdvanceExportCursor {
                name: self.name.clone(),
                seq: self.cursor,
            })
            .await
            .map_err(|e| format!("recording the cursor: {e}"))?;
        self.persisted = (self.cursor, Instant::now());
        Ok(())
    }

    fn head(&self, seq: u64, hash: &str) -> serde_json::Value {
        let mut head = head_object(
            &self.host_id,
            seq,
            hash,
            &self.store.clock().ts(),
            !self.filter.is_empty(),
        );
        self.signer.sign(&mut head);
        head
    }

    /// Entries appended after the cursor, for the metrics endpoint.
    fn report_lag(&self) {
        self.metrics.set_exporter_lag(
            &self.name,
            self.store.head().seq.saturating_sub(self.cursor),
        );
    }

    fn failed(&self, error: &str) {
        self.report_lag();
        tracing::warn!(sink = %self.name, error, "audit export delivery failed; retrying");
        self.exporters.update(self.slot, |s| {
            s.failures = s.failures.saturating_add(1);
            s.state = if s.failures >= FAILING_AFTER {
                SinkHealth::Failing
            } else {
                SinkHealth::Retrying
            };
            s.last_error = Some(error.to_owned());
        });
    }
}

/// Sleeps `d`; true when cancelled first.
async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
