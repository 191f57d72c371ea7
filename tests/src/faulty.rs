//! Scripted misbehaving receivers for the exporters' fault tests: a syslog
//! TCP receiver (RFC 6587 octet counting) and an HTTP webhook receiver that,
//! on cue, stall, go slow, accept part of what they were sent and then drop
//! the connection abortively, or refuse every connection. A real receiver
//! cannot be made to fail at a chosen point; the tests against a real
//! rsyslog use `rsyslog.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest message or request body taken (bigger ones end the connection).
const MAX_MESSAGE: usize = 1024 * 1024;

/// How the receiver treats what it is sent; change it with [`Faulty::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Takes and answers everything at once.
    Normal,
    /// Reads nothing more (syslog) or holds every answer (webhook) until the
    /// mode changes; connections stay open.
    Stalled,
    /// Waits this long before reading each message (syslog) or answering
    /// each request (webhook).
    Slow(Duration),
    /// Accepts this many more messages or requests, then drops the connection
    /// abortively (RST) in the middle of what it was sent, and refuses from
    /// then on ([`Mode::Refuse`]).
    DropAfter(usize),
    /// Drops every connection abortively as soon as it is used or opened.
    Refuse,
}

/// Which protocol the receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syslog,
    Webhook,
}

#[derive(Debug)]
struct Shared {
    mode: watch::Sender<Mode>,
    /// Accepted records (the syslog MSG or the webhook body) with the time
    /// each was taken, in acceptance order.
    received: Mutex<Vec<(Value, SystemTime)>>,
    /// Connections dropped by [`Mode::DropAfter`] running out.
    drops: AtomicUsize,
}

/// What to do with a message already read.
enum Decision {
    Accept,
    Wait,
    Abort,
}

impl Shared {
    /// Decides, atomically with the `DropAfter` count, the fate of one message.
    fn decide(&self) -> Decision {
        let mut decision = Decision::Accept;
        self.mode.send_if_modified(|mode| match *mode {
            Mode::Normal | Mode::Slow(_) => false,
            Mode::Stalled => {
                decision = Decision::Wait;
                false
            }
            Mode::DropAfter(0) => {
                self.drops.fetch_add(1, Ordering::SeqCst);
                *mode = Mode::Refuse;
                decision = Decision::Abort;
                true
            }
            Mode::DropAfter(n) => {
                *mode = Mode::DropAfter(n - 1);
                true
            }
            Mode::Refuse => {
                decision = Decision::Abort;
                false
            }
        });
        decision
    }

    /// True when the connection must be dropped before reading more.
    fn abort_due(&self) -> bool {
        let mut abort = false;
        self.mode.send_if_modified(|mode| match *mode {
            Mode::DropAfter(0) => {
                self.drops.fetch_add(1, Ordering::SeqCst);
                *mode = Mode::Refuse;
                abort = true;
                true
            }
            Mode::Refuse => {
                abort = true;
                false
            }
            _ => false,
        });
        abort
    }

    fn record(&self, v: Value) {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((v, SystemTime::now()));
    }
}

/// A scripted receiver on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct Faulty {
    shared: Arc<Shared>,
    url: String,
    task: JoinHandle<()>,
}

impl Faulty {
    /// A syslog receiver (`tcp://127.0.0.1:<port>`) starting in `mode`.
    pub async fn syslog(mode: Mode) -> Result<Self> {
        Self::start(Kind::Syslog, mode).await
    }

    /// A webhook receiver (`http://127.0.0.1:<port>/hook`) starting in
    /// `mode`. It does not check signatures (the webhook tests do).
    pub async fn webhook(mode: Mode) -> Result<Self> {
        Self::start(Kind::Webhook, mode).await
    }

    async fn start(kind: Kind, mode: Mode) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let port = listener.local_addr().context("receiver address")?.port();
        let url = match kind {
            Kind::Syslog => format!("tcp://127.0.0.1:{port}"),
            Kind::Webhook => format!("http://127.0.0.1:{port}/hook"),
        };
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(mode),
            received: Mutex::new(Vec::new()),
            drops: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, kind, shared.clone()));
        Ok(Self { shared, url, task })
    }

    /// The URL a sink is configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Changes the receiver's behaviour (connections already open included).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode (`DropAfter` counts down as messages are accepted).
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Accepted records, in acceptance order.
    pub fn received(&self) -> Vec<Value> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// Accepted records with the time each was taken, in acceptance order.
    pub fn received_at(&self) -> Vec<(Value, SystemTime)> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connections dropped by [`Mode::DropAfter`].
    pub fn drops(&self) -> usize {
        self.shared.drops.load(Ordering::SeqCst)
    }

    /// The highest entry seq accepted (head records left out), 0 when none.
    pub fn max_accepted_seq(&self) -> u64 {
        self.received()
            .iter()
            .filter(|r| r.get("type").is_none())
            .filter_map(|r| r["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>) {
    // Dropped with the accept task, which aborts every connection's task.
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        conns.spawn(async move {
            if let Err(e) = serve(stream, kind, &shared).await {
                // The daemon closing or resetting its side is part of the tests.
                eprintln!("[faulty receiver] connection ended: {e:#}");
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(stream: TcpStream, kind: Kind, shared: &Shared) -> Result<()> {
    let mut mode_rx = shared.mode.subscribe();
    let mut conn = BufReader::new(stream);
    loop {
        // Before reading: stalled readers read nothing, slow ones wait first.
        let mode = *mode_rx.borrow_and_update();
        if shared.abort_due() {
            return abort(conn);
        }
        match mode {
            Mode::Stalled => {
                mode_rx.changed().await.context("receiver gone")?;
                continue;
            }
            Mode::Slow(d) if kind == Kind::Syslog => tokio::time::sleep(d).await,
            _ => {}
        }
        let record = match kind {
            Kind::Syslog => read_frame(&mut conn).await?,
            Kind::Webhook => read_request(&mut conn).await?,
        };
        let Some(record) = record else {
            return Ok(()); // clean end of stream
        };
        loop {
            match shared.decide() {
                Decision::Accept => break,
                Decision::Abort => return abort(conn),
                Decision::Wait => {
                    mode_rx.changed().await.context("receiver gone")?;
                }
            }
        }
        let mode = *mode_rx.borrow();
        if kind == Kind::Webhook
            && let Mode::Slow(d) = mode
        {
            tokio::time::sleep(d).await;
        }
        shared.record(record);
        if kind == Kind::Webhook {
            conn.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .context("answering")?;
        }
    }
}

/// Drops the connection with a reset (SO_LINGER 0), whatever is left unread.
fn abort(conn: BufReader<TcpStream>) -> Result<()> {
    conn.get_ref()
        .set_zero_linger()
        .context("setting SO_LINGER")?;
    drop(conn);
    Ok(())
}

/// One octet-counted frame (`<len> <message>`), its MSG parsed as JSON;
/// `None` at a clean end of stream.
async fn read_frame(conn: &mut BufReader<TcpStream>) -> Result<Option<Value>> {
    let mut len = Vec::new();
    let n = conn.read_until(b' ', &mut len).await.context("reading")?;
    if n == 0 {
        return Ok(None);
    }
    let len: usize = std::str::from_utf8(len.trim_ascii_end())
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&l| l <= MAX_MESSAGE)
        .with_context(|| format!("bad frame length {:?}", String::from_utf8_lossy(&len)))?;
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).await.context("reading a frame")?;
    let msg = String::from_utf8(msg).context("frame is not UTF-8")?;
    let start = msg
        .find("] {")
        .with_context(|| format!("no structured data before the MSG: {msg}"))?;
    let json = serde_json::from_str(&msg[start + 2..])
        .with_context(|| format!("MSG is not JSON: {msg}"))?;
    Ok(Some(json))
}

/// One HTTP/1.1 request's body parsed as JSON; `None` at a clean end of stream.
async fn read_request(conn: &mut BufReader<TcpStream>) -> Result<Option<Value>> {
    let mut length = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.context("reading")?;
        if n == 0 {
            anyhow::ensure!(first, "connection closed inside a request");
            return Ok(None);
        }
        first = false;
        anyhow::ensure!(line.len() <= 8192, "header line too long");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let len = length
        .filter(|&l| l <= MAX_MESSAGE)
        .context("a request without a usable content-length")?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.context("reading a body")?;
    Ok(Some(
        serde_json::from_slice(&body).context("body is not JSON")?,
    ))
}
