//! The store handle every caller holds: where jobs go, the read pool, the
//! chain head and the live entry feed. Opening it and writing through it are
//! in the store's root; each operation family adds its reads to it.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};

use super::readers::ReaderPool;
use super::writer::Job;
use crate::audit::{Entry, Head};
use crate::clock::Clock;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) jobs: mpsc::Sender<Box<dyn Job>>,
    pub(super) readers: Arc<ReaderPool>,
    pub(super) head: Arc<Mutex<Head>>,
    pub(super) entries: broadcast::Sender<Arc<Entry>>,
    pub(super) clock: Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}
