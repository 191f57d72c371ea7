//! Terminal output for the login: the code, a QR code, the browser, a spinner.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Where the `auth` commands write: stdout for results (JSON lines), stderr for
/// instructions and the spinner. [`Console::capture`] records both, for tests.
#[derive(Clone)]
pub struct Console {
    out: Sink,
    err: Sink,
    out_tty: bool,
    err_tty: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("out_tty", &self.out_tty)
            .field("err_tty", &self.err_tty)
            .finish_non_exhaustive()
    }
}

/// What a captured [`Console`] printed.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything written to "stdout".
    pub fn stdout(&self) -> String {
        self.out
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything written to "stderr".
    pub fn stderr(&self) -> String {
        self.err
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => {
                b.extend_from_slice(buf);
                Ok(buf.len())
            }
            Err(_) => Err(std::io::Error::other("capture buffer poisoned")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// The process's stdout and stderr.
    pub fn terminal() -> Self {
        Self {
            out_tty: std::io::stdout().is_terminal(),
            err_tty: std::io::stderr().is_terminal(),
            out: Arc::new(Mutex::new(Box::new(std::io::stdout()))),
            err: Arc::new(Mutex::new(Box::new(std::io::stderr()))),
        }
    }

    /// In-memory output (no TTY), and a handle to read it.
    pub fn capture() -> (Self, Captured) {
        let cap = Captured::default();
        let console = Self {
            out: Arc::new(Mutex::new(Box::new(SharedBuf(Arc::clone(&cap.out))))),
            err: Arc::new(Mutex::new(Box::new(SharedBuf(Arc::clone(&cap.err))))),
            out_tty: false,
            err_tty: false,
        };
        (console, cap)
    }

    /// In-memory output that claims to be a terminal (human output, QR code, spinner).
    pub fn capture_tty() -> (Self, Captured) {
        let (mut console, cap) = Self::capture();
        console.out_tty = true;
        console.err_tty = true;
        (console, cap)
    }

    /// Whether stdout is a terminal (otherwise `auth login` prints JSON lines).
    pub fn stdout_is_tty(&self) -> bool {
        self.out_tty
    }

    pub(crate) fn stderr_is_tty(&self) -> bool {
        self.err_tty
    }

    /// Writes one line to stdout and flushes.
    pub(crate) fn out_line(&self, line: &str) {
        if let Ok(mut w) = self.out.lock() {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }

    /// Writes text to stderr and flushes.
    pub(crate) fn err_write(&self, text: &str) {
        if let Ok(mut w) = self.err.lock() {
            let _ = w.write_all(text.as_bytes());
            let _ = w.flush();
        }
    }
}

/// The verification URL as a terminal QR code (two rows per character).
pub(crate) fn qr_code(url: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// Whether a browser can plausibly be opened here.
pub(crate) fn has_display() -> bool {
    if cfg!(target_os = "macos") {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Tries to open `url` in a browser; returns whether a launcher started.
pub(crate) fn open_browser(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return false;
    }
    let launcher = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let child = std::process::Command::new(launcher)
        .arg(parsed.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
}

/// A spinner on stderr, updated until stopped.
pub(crate) struct Spinner {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Spinner {
    /// Starts a spinner counting down to `deadline` (no-op when stderr is not a TTY).
    pub(crate) fn start(console: &Console, deadline: Instant) -> Self {
        if !console.stderr_is_tty() {
            return Self {
                stop: None,
                task: None,
            };
        }
        let (tx, mut rx) = oneshot::channel::<()>();
        let console = console.clone();
        let task = tokio::spawn(async move {
            const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
            let mut i = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {
                        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                        let frame = FRAMES.get(i % FRAMES.len()).copied().unwrap_or("*");
                        console.err_write(&format!(
                            "\r\x1b[2K{frame} Waiting for approval (code expires in {}:{:02}; Ctrl-C to cancel)",
                            left / 60,
                            left % 60
                        ));
                        i = i.wrapping_add(1);
                    }
                }
            }
            console.err_write("\r\x1b[2K");
        });
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops and clears the spinner line.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
