//! What one client of the socket can hold: a cap on open connections, a
//! deadline for a connection that sends nothing or holds no call, and a check
//! of each request's gRPC framing before tonic buffers it (an oversized
//! message is `RESOURCE_EXHAUSTED`, broken framing `INVALID_ARGUMENT`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::config::ServerSettings;

/// Accepts connections while fewer than `[server] max_connections` are open;
/// one more is closed at once, so a flood neither queues nor grows memory.
pub struct Incoming {
    listener: UnixListener,
    permits: Arc<Semaphore>,
    max: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Incoming {
    /// Wraps a bound listener with the limits of `settings`.
    pub fn new(listener: UnixListener, settings: &ServerSettings) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            max: settings.max_connections,
            handshake_timeout: Duration::from_secs(settings.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (io, _) = match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Poll::Ready(Some(Ok(Conn::new(
                        io,
                        permit,
                        self.handshake_timeout,
                        self.idle_timeout,
                    ))));
                }
                Err(_) => {
                    tracing::warn!(
                        max = self.max,
                        "connection refused: [server] max_connections are open"
                    );
                    drop(io);
                }
            }
        }
    }
}

/// How many calls a connection has in progress, and since when it has none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    connection: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            connection: Mutex::new(None),
        }
    }

    fn begin(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

/// One call in progress on a connection; dropped with the response body.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            // The connection arms its idle deadline on its next read poll.
            if let Some(w) = self
                .0
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                w.wake();
            }
        }
    }
}

/// What a request learns about its connection: the peer (as tonic's
/// [`UdsConnectInfo`], re-inserted for [`crate::rpc::access`]) and its activity.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    uds: UdsConnectInfo,
    activity: Arc<Activity>,
}

/// An accepted connection holding its slot; reads fail (and the connection
/// closes) when it sent nothing within the handshake timeout or has had no
/// call in progress for the idle timeout.
pub struct Conn {
    io: UnixStream,
    _slot: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    accepted: Instant,
    heard_from: bool,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Conn {
    fn new(
        io: UnixStream,
        slot: OwnedSemaphorePermit,
        handshake_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let accepted = Instant::now();
        Self {
            io,
            _slot: slot,
            activity: Arc::new(Activity::new()),
            accepted,
            heard_from: false,
            handshake_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(accepted + handshake_timeout)),
            armed: Some(accepted + handshake_timeout),
        }
    }

    /// When this connection is closed unless something happens first; `None`
    /// while a call is in progress.
    fn deadline(&self, cx: &Context<'_>) -> Option<Instant> {
        if !self.heard_from {
            return Some(self.accepted + self.handshake_timeout);
        }
        if self.activity.open.load(Ordering::SeqCst) > 0 {
            *self
                .activity
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            // The last call may have ended between the two looks.
            if self.activity.open.load(Ordering::SeqCst) > 0 {
                return None;
            }
        }
        let since = *self
            .activity
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(since + self.idle_timeout)
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            uds: self.io.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(read) = Pin::new(&mut this.io).poll_read(cx, buf) {
            if buf.filled().len() > before {
                this.heard_from = true;
            }
            return Poll::Ready(read);
        }
        let Some(deadline) = this.deadline(cx) else {
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.timer.as_mut().reset(deadline);
            this.armed = Some(deadline);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            let why = if this.heard_from {
                "no call within [server] idle_timeout_secs"
            } else {
                "nothing sent within [server] handshake_timeout_secs"
            };
            tracing::debug!(why, "closing a connection");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The tower layer every request passes: counts it as a call on its
/// connection and checks its gRPC framing against `max_message_bytes`.
#[derive(Debug, Clone)]
pub struct RequestLimitsLayer {
    max_message_bytes: usize,
}

impl RequestLimitsLayer {
    /// From `[server]`.
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            max_message_bytes: settings.max_message_bytes,
        }
    }
}

impl<S> tower::Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// See [`RequestLimitsLayer`].
#[derive(Debug, Clone)]
pub struct RequestLimits<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S> tower::Service<http::Request<Body>> for RequestLimits<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let info = req.extensions().get::<ConnInfo>().cloned();
        let guard = info.map(|info| {
            req.extensions_mut().insert(info.uds);
            info.activity.begin()
        });
        // Reflection is a bidirectional stream that may carry no message.
        let needs_message = !req.uri().path().contains("ServerReflection");
        let max = self.max_message_bytes;
        let req = req.map(|body| Body::new(FramedRequest::new(body, max, needs_message)));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted until it is done.
struct Guarded {
    body: Body,
    _guard: Option<CallGuard>,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// gRPC length-prefixed messages: a flag byte, a 4-byte big-endian length.
const PREFIX_BYTES: usize = 5;

/// A request body whose message prefixes are checked as they arrive: an
/// oversized length is refused before its bytes are buffered, a bad flag or a
/// body that ends inside a message is the caller's mistake.
struct FramedRequest {
    body: Body,
    max: usize,
    needs_message: bool,
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    remaining: usize,
    messages: usize,
    failed: bool,
}

impl FramedRequest {
    fn new(body: Body, max: usize, needs_message: bool) -> Self {
        Self {
            body,
            max,
            needs_message,
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            remaining: 0,
            messages: 0,
            failed: false,
        }
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                continue;
            }
            self.prefix[self.prefix_len] = data[0];
            self.prefix_len += 1;
            data = &data[1..];
            if self.prefix_len < PREFIX_BYTES {
                continue;
            }
            self.prefix_len = 0;
            let [flag, l0, l1, l2, l3] = self.prefix;
            let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
            match flag {
                0 => {}
                // The daemon accepts no compressed requests.
                1 => {
                    return Err(Status::invalid_argument(
                        "malformed request: a compressed message, but the daemon accepts none",
                    ));
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "malformed request: message flag {flag} is neither 0 nor 1 (not gRPC framing)"
                    )));
                }
            }
            if len > self.max {
                return Err(Status::resource_exhausted(format!(
                    "request message of {len} bytes is larger than the limit of {} bytes ([server] max_message_bytes)",
                    self.max
                )));
            }
            self.remaining = len;
            self.messages += 1;
        }
        Ok(())
    }
}

impl HttpBody for FramedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let refusal = match &frame {
            Some(Ok(frame)) => frame.data_ref().and_then(|data| this.scan(data).err()),
            Some(Err(_)) => None,
            None if this.prefix_len > 0 || this.remaining > 0 => Some(Status::invalid_argument(
                "malformed request: the body ends inside a message",
            )),
            None if this.needs_message && this.messages == 0 => Some(Status::invalid_argument(
                "malformed request: no request message",
            )),
            None => None,
        };
        match refusal {
            Some(status) => {
                this.failed = true;
                Poll::Ready(Some(Err(status)))
            }
            None => Poll::Ready(frame),
        }
    }
}
