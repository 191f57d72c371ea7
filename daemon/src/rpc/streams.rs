//! Server-streaming replies with a bounded footprint: a cap on how many are
//! open at once, and per stream a queue bounded in bytes. A reader that lets
//! the queue stay full past the stall timeout is cut off: its queue is freed
//! and it gets `RESOURCE_EXHAUSTED` instead of the rest of the stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tonic::Status;

use crate::config::ServerSettings;
use crate::error::{Error, Result};

/// The limits shared by every streaming call of one daemon.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    open: Arc<Semaphore>,
    max_open: usize,
    buffer_bytes: usize,
    stall: Duration,
}

impl StreamLimits {
    /// From `[server]`.
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            open: Arc::new(Semaphore::new(settings.max_streams)),
            max_open: settings.max_streams,
            buffer_bytes: settings.stream_buffer_bytes,
            stall: Duration::from_secs(settings.stream_stall_timeout_secs),
        }
    }

    /// Opens a stream: the sender for the task producing it, the reply for
    /// tonic. Refused with `RESOURCE_EXHAUSTED` when the cap is reached; the
    /// slot is freed when the producer drops its sender.
    pub fn open<T: prost::Message>(&self) -> Result<(StreamSender<T>, ReplyStream<T>)> {
        let permit = self.open.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "{} streams are open, the most the daemon serves at once ([server] max_streams); try again later",
                self.max_open
            ))
        })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                reader: None,
                producer_gone: false,
            }),
            room: Notify::new(),
            reader_gone: CancellationToken::new(),
        });
        Ok((
            StreamSender {
                shared: shared.clone(),
                budget: self.buffer_bytes,
                stall: self.stall,
                _permit: permit,
            },
            ReplyStream { shared },
        ))
    }
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    room: Notify,
    reader_gone: CancellationToken,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Queue<T> {
    items: VecDeque<(Result<T, Status>, usize)>,
    bytes: usize,
    reader: Option<Waker>,
    producer_gone: bool,
}

impl<T> Queue<T> {
    fn push(&mut self, item: Result<T, Status>, size: usize) {
        self.items.push_back((item, size));
        self.bytes += size;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// The reader is gone or was cut off; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// The producing end of a stream.
pub struct StreamSender<T> {
    shared: Arc<Shared<T>>,
    budget: usize,
    stall: Duration,
    _permit: OwnedSemaphorePermit,
}

impl<T: prost::Message> StreamSender<T> {
    /// Queues `item`, waiting for room while the queue holds its byte budget;
    /// after the stall timeout the reader is cut off and `Gone` returned.
    pub async fn send(&self, item: T) -> Result<(), Gone> {
        let size = item.encoded_len().max(1);
        let deadline = tokio::time::Instant::now() + self.stall;
        let mut item = Some(item);
        loop {
            if self.shared.reader_gone.is_cancelled() {
                return Err(Gone);
            }
            {
                let mut q = self.shared.lock();
                // One item always fits in an empty queue, however large.
                if q.bytes == 0 || q.bytes + size <= self.budget {
                    if let Some(item) = item.take() {
                        q.push(Ok(item), size);
                    }
                    return Ok(());
                }
            }
            tokio::select! {
                () = self.shared.room.notified() => {}
                () = self.shared.reader_gone.cancelled() => return Err(Gone),
                () = tokio::time::sleep_until(deadline) => {
                    self.cut_off();
                    return Err(Gone);
                }
            }
        }
    }

    /// Ends the stream with `status` after what is queued.
    pub fn fail(&self, status: Status) {
        self.shared.lock().push(Err(status), 0);
    }

    /// Resolves when the reader has gone away.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.shared.reader_gone.cancelled()
    }

    fn cut_off(&self) {
        let mut q = self.shared.lock();
        q.items.clear();
        q.items.shrink_to_fit();
        q.bytes = 0;
        q.push(
            Err(Status::resource_exhausted(format!(
                "consumer too slow: the stream held {} bytes unread for {} s ([server] stream_stall_timeout_secs); reconnect and read faster",
                self.budget,
                self.stall.as_secs()
            ))),
            0,
        );
        tracing::info!("cut off a stream whose reader stopped reading");
    }
}

impl<T> Drop for StreamSender<T> {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.producer_gone = true;
        if let Some(w) = q.reader.take() {
            w.wake();
        }
    }
}

/// The reading end of a stream, handed to tonic.
pub struct ReplyStream<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Stream for ReplyStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = self.shared.lock();
        if let Some((item, size)) = q.items.pop_front() {
            q.bytes -= size;
            drop(q);
            self.shared.room.notify_one();
            return Poll::Ready(Some(item));
        }
        if q.producer_gone {
            return Poll::Ready(None);
        }
        q.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for ReplyStream<T> {
    fn drop(&mut self) {
        self.shared.reader_gone.cancel();
        // Free what the reader will never take.
        let mut q = self.shared.lock();
        q.items.clear();
        q.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn limits(max_streams: usize, stall_secs: u64) -> StreamLimits {
        StreamLimits::new(&ServerSettings {
            max_streams,
            stream_buffer_bytes: 64 * 1024,
            stream_stall_timeout_secs: stall_secs,
            ..ServerSettings::default()
        })
    }

    #[tokio::test]
    async fn a_reader_that_stops_is_cut_off_and_its_queue_freed() {
        let (tx, mut rx) = limits(1, 1).open::<String>().unwrap();
        let big = "x".repeat(10_000);
        let mut sent = 0;
        while tx.send(big.clone()).await.is_ok() {
            sent += 1;
        }
        assert!(sent <= 7, "sent {sent} items into a 64 KiB budget");
        drop(tx);
        let first = rx.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::ResourceExhausted);
        assert!(first.message().contains("consumer too slow"));
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn the_cap_refuses_one_more_and_frees_on_drop() {
        let l = limits(1, 5);
        let (tx, _rx) = l.open::<String>().unwrap();
        let Err(Error::ResourceExhausted(_)) = l.open::<String>() else {
            panic!("a second stream was accepted");
        };
        drop(tx);
        assert!(l.open::<String>().is_ok());
    }
}
