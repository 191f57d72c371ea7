//! Coalesced audit entries: a flood of the same event (a refused call, a cached
//! provider token handed out) must not fill the disk, yet each one must be
//! accounted for.
//!
//! Events carry a key (peer uid, what happened, to what). The first event of a
//! key in a window is written at once; later ones in the same window are only
//! counted, and when the window ends (or the daemon stops) one summary entry is
//! written with `count`, `first_at` and `last_at` of the events it stands for.
//! Every written entry carries `count`, so the counts add up to the events.
//! The table of keys is bounded: when it is full, new keys are counted under
//! one overflow key per action instead of growing it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::NewEntry;
use crate::clock::now_ts;
use crate::store::{Audit, Store};

/// Default bound on distinct keys per window.
pub const DEFAULT_MAX_KEYS: usize = 4096;
/// Distinct peer pids remembered per summary.
const MAX_PIDS: usize = 16;

/// Builds a coalescing key from its parts (never shown to anyone).
pub fn key(parts: &[&str]) -> String {
    parts.join("\u{0}")
}

/// A peer uid as a key part (or in a message): the number, or `unknown`.
pub fn peer_uid(uid: Option<u32>) -> String {
    uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
}

struct Slot {
    opened: Instant,
    /// The first event of the window, the template of its summary.
    first: NewEntry,
    /// Events counted after the first.
    more: u64,
    first_at: String,
    last_at: String,
    pids: BTreeSet<u32>,
}

impl Slot {
    fn summary(self, window: Duration) -> Option<NewEntry> {
        if self.more == 0 {
            return None;
        }
        let mut entry = self.first;
        entry.reason = format!(
            "{} more in a {}s window: {}",
            self.more,
            window.as_secs(),
            entry.reason
        );
        with_fields(
            &mut entry.details,
            [
                ("coalesced", serde_json::json!(true)),
                ("count", serde_json::json!(self.more)),
                ("first_at", serde_json::json!(self.first_at)),
                ("last_at", serde_json::json!(self.last_at)),
                ("pids", serde_json::json!(self.pids)),
            ],
        );
        Some(entry)
    }
}

fn with_fields<const N: usize>(
    details: &mut serde_json::Value,
    fields: [(&str, serde_json::Value); N],
) {
    if !details.is_object() {
        *details = serde_json::json!({});
    }
    if let serde_json::Value::Object(map) = details {
        for (k, v) in fields {
            map.insert(k.to_owned(), v);
        }
    }
}

/// The windows of every key (pure state; the clock and timestamps are passed in).
struct Windows {
    slots: HashMap<String, Slot>,
    window: Duration,
    max_keys: usize,
}

/// What to write after an event.
#[derive(Debug, Default)]
struct Writes {
    /// A summary of the key's previous window, if it had counted events.
    summary: Option<NewEntry>,
    /// The event itself when it opens a window.
    first: Option<NewEntry>,
}

impl Windows {
    fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            slots: HashMap::new(),
            window,
            max_keys: max_keys.max(1),
        }
    }

    fn observe(&mut self, key: String, mut entry: NewEntry, now: Instant, ts: String) -> Writes {
        let mut writes = Writes::default();
        let key = if self.slots.contains_key(&key) || self.slots.len() < self.max_keys {
            key
        } else {
            // Full: one shared slot per action, so the table stops growing.
            with_fields(&mut entry.details, [("overflow", serde_json::json!(true))]);
            format!("overflow\u{0}{}", entry.action)
        };
        if let Some(slot) = self.slots.get_mut(&key) {
            if now.duration_since(slot.opened) < self.window {
                slot.more += 1;
                slot.last_at.clone_from(&ts);
                if slot.more == 1 {
                    slot.first_at = ts;
                }
                if let Some(pid) = entry.actor.pid
                    && slot.pids.len() < MAX_PIDS
                {
                    slot.pids.insert(pid);
                }
                return writes;
            }
            writes.summary = self.slots.remove(&key).and_then(|s| s.summary(self.window));
        }
        with_fields(&mut entry.details, [("count", serde_json::json!(1))]);
        self.slots.insert(
            key,
            Slot {
                opened: now,
                first: entry.clone(),
                more: 0,
                first_at: String::new(),
                last_at: String::new(),
                pids: BTreeSet::new(),
            },
        );
        writes.first = Some(entry);
        writes
    }

    /// Ends the windows that are over (all of them with `everything`).
    fn close(&mut self, now: Instant, everything: bool) -> Vec<NewEntry> {
        let window = self.window;
        let ended: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| everything || now.duration_since(s.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| self.slots.remove(&k))
            .filter_map(|s| s.summary(window))
            .collect()
    }
}

/// Writes coalesced audit entries to the store.
pub struct AuditCoalescer {
    store: Store,
    windows: Mutex<Windows>,
}

impl std::fmt::Debug for AuditCoalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditCoalescer").finish_non_exhaustive()
    }
}

impl AuditCoalescer {
    /// A coalescer with windows of `window` and at most `max_keys` keys.
    pub fn new(store: Store, window: Duration, max_keys: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            windows: Mutex::new(Windows::new(window, max_keys)),
        })
    }

    /// Records one event: written before this returns when it opens a window,
    /// otherwise counted for the window's summary.
    pub async fn record(&self, key: String, entry: NewEntry) -> crate::error::Result<()> {
        let writes = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(key, entry, Instant::now(), now_ts());
        if let Some(summary) = writes.summary {
            self.write(summary).await;
        }
        if let Some(first) = writes.first {
            self.store.write(Audit(first)).await?;
        }
        Ok(())
    }

    async fn write(&self, entry: NewEntry) {
        if let Err(e) = self.store.write(Audit(entry)).await {
            tracing::error!(error = %e, "could not write a coalesced audit summary");
        }
    }

    /// Writes the summaries of the windows that are over (all with `everything`).
    pub async fn flush(&self, everything: bool) {
        let due = self
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close(Instant::now(), everything);
        for entry in due {
            self.write(entry).await;
        }
    }

    /// Closes windows as they end, until `stop`; then writes every summary left.
    pub fn spawn_flusher(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        let window = me
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .window;
        let tick = (window / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(tick);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => me.flush(false).await,
                }
            }
            me.flush(true).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Actor;

    fn event(action: &str, pid: u32) -> NewEntry {
        NewEntry {
            action: action.into(),
            target: None,
            severity: None,
            outcome: "refused".into(),
            reason: "no".into(),
            details: serde_json::json!({"rpc": "SetEnforcement"}),
            actor: Actor {
                pid: Some(pid),
                ..Actor::default()
            },
        }
    }

    fn count(e: &NewEntry) -> u64 {
        e.details["count"].as_u64().unwrap()
    }

    #[test]
    fn first_at_once_then_counted_then_one_summary() {
        let mut w = Windows::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        let first = w.observe("k".into(), event("permission-denied", 1), t0, "t0".into());
        assert!(first.summary.is_none());
        assert_eq!(count(first.first.as_ref().unwrap()), 1);
        for i in 0..999 {
            let later = w.observe(
                "k".into(),
                event("permission-denied", 2 + i % 40),
                t0,
                format!("t{i}"),
            );
            assert!(later.first.is_none() && later.summary.is_none());
        }
        assert!(w.close(t0, false).is_empty(), "the window is still open");
        let summaries = w.close(t0 + Duration::from_secs(60), false);
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!(count(s), 999);
        assert_eq!(s.details["first_at"], "t0");
        assert_eq!(s.details["last_at"], "t998");
        assert_eq!(s.details["coalesced"], true);
        assert_eq!(s.details["rpc"], "SetEnforcement");
        assert_eq!(s.details["pids"].as_array().unwrap().len(), MAX_PIDS);
        assert!(w.slots.is_empty());
    }

    #[test]
    fn a_lone_event_has_no_summary_and_a_late_one_opens_a_new_window() {
        let mut w = Windows::new(Duration::from_secs(1), 8);
        let t0 = Instant::now();
        w.observe("k".into(), event("a", 1), t0, "t0".into());
        w.observe("k".into(), event("a", 1), t0, "t1".into());
        let late = w.observe(
            "k".into(),
            event("a", 1),
            t0 + Duration::from_secs(2),
            "t2".into(),
        );
        assert_eq!(count(late.summary.as_ref().unwrap()), 1);
        assert_eq!(count(late.first.as_ref().unwrap()), 1);
        assert!(w.close(t0 + Duration::from_secs(9), false).is_empty());
    }

    #[test]
    fn the_table_is_bounded_by_an_overflow_key() {
        let mut w = Windows::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..10_000 {
            let writes = w.observe(format!("k{i}"), event("a", 1), t0, "t".into());
            written += u64::from(writes.first.is_some());
        }
        assert_eq!(w.slots.len(), 5, "four keys and one overflow key");
        let summaries = w.close(t0, true);
        let total: u64 = written + summaries.iter().map(count).sum::<u64>();
        assert_eq!(total, 10_000);
        assert!(
            summaries
                .iter()
                .any(|s| s.details["overflow"] == serde_json::json!(true))
        );
    }
}
