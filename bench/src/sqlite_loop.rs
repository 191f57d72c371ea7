//! The durable-write baseline: single-row inserts, one transaction each, with
//! the daemon's durability settings (WAL, `synchronous = FULL`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior, params};

/// An open baseline database.
#[derive(Debug)]
pub struct BareInserts {
    conn: Connection,
    next: i64,
}

impl BareInserts {
    /// Creates (or reopens) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS rows (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 ts TEXT NOT NULL
             );",
        )
        .context("preparing the baseline database")?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .context("reading journal_mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            anyhow::bail!("the baseline database is in {mode} mode, not WAL");
        }
        Ok(Self { conn, next: 0 })
    }

    /// Inserts one row per transaction until `window` has passed; returns the
    /// number of committed rows, the elapsed time and each commit's latency in ns
    /// (begin to durable commit).
    pub fn run(&mut self, window: Duration) -> anyhow::Result<(u64, Duration, Vec<u64>)> {
        let start = Instant::now();
        let mut rows = 0u64;
        let mut latencies = Vec::with_capacity(4096);
        while start.elapsed() < window {
            let t0 = Instant::now();
            self.next += 1;
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .context("beginning")?;
            tx.execute(
                "INSERT INTO rows (name, ts) VALUES (?1, ?2)",
                params![format!("bench-row-{}", self.next), "2026-01-01T00:00:00Z"],
            )
            .context("inserting")?;
            tx.commit().context("committing")?;
            latencies.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
            rows += 1;
        }
        Ok((rows, start.elapsed(), latencies))
    }
}
