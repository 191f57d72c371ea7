//! Scans run on their own small pool of OS threads, never on tokio's
//! blocking pool, so store reads (`CheckTarget`, `GetStatus`, step-up) never
//! wait behind a scan. The pool is bounded: `[scanner] scan_workers` threads
//! and at most `scan_queue` scans waiting; one more is refused at once with
//! `RESOURCE_EXHAUSTED` rather than queued. Each scan's own time budget
//! (`scan_timeout_secs`) lives in the scanner's walk.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A bounded pool of scan threads.
pub struct ScanPool {
    jobs: mpsc::Sender<Job>,
    /// Scans running or waiting; at most `capacity`.
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
}

impl std::fmt::Debug for ScanPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPool")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Gives a reserved place back when the scan ends (or is dropped unrun).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The scan pool could not start its threads.
#[derive(Debug, thiserror::Error)]
#[error("[scanner] cannot start a scan thread: {0}")]
pub struct PoolError(#[source] std::io::Error);

impl ScanPool {
    /// Starts `workers` threads taking at most `workers + queue` scans at a time.
    pub fn new(workers: usize, queue: usize) -> std::result::Result<Self, PoolError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("defenseclaw-scan-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // The pool is gone: the daemon is stopping.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(PoolError)?;
        }
        Ok(Self {
            jobs,
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: workers + queue,
        })
    }

    /// Runs `scan` on the pool, or refuses at once when the pool is full.
    pub async fn run<T, F>(&self, scan: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.in_flight.clone());
        if before >= self.capacity {
            return Err(Error::ResourceExhausted(format!(
                "the scan pool is full ({} scans running or waiting); retry later",
                self.capacity
            )));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panicking scan must not take its worker thread with it.
            let out = std::panic::catch_unwind(AssertUnwindSafe(scan))
                .unwrap_or_else(|_| Err(Error::Internal("a scan panicked".into())));
            // The place is free before the caller hears back.
            drop(slot);
            let _ = tx.send(out);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Unavailable("the scan pool has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Internal("a scan ended without a result".into()))?
    }
}
