//! The reader pool: read-only connections reused across reads, each read run
//! inside `spawn_blocking` so no tokio worker blocks on SQLite.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rusqlite::Connection;

use super::schema;
use crate::error::{Error, Result};

/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

pub(super) struct ReaderPool {
    pub(super) path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds concurrent reads to the pool size, so connections are reused
    /// rather than opened and dropped under load.
    permits: tokio::sync::Semaphore,
}

impl ReaderPool {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(MAX_IDLE_READERS),
        }
    }

    /// Runs `f` on a pooled connection off the async workers.
    pub(super) async fn read<T, F>(self: &std::sync::Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the store is shutting down".into()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        schema::open_reader(&self.path).map_err(Error::store("opening a read connection"))
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}
