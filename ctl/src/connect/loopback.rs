//! The loopback HTTP listener the provider redirects the browser to: it takes
//! `/callback` with the right `state`, refuses everything else, and answers the
//! browser with a small page.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{AuthError, Console, Secret};
use crate::exit::{self, Failure};

/// How long one browser connection may take to send its request head.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head the listener reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The redirect path on the loopback listener.
const CALLBACK_PATH: &str = "/callback";

/// A browser request to `/callback` carrying a code or an error, with its connection
/// kept open for the answer.
struct Hit {
    params: Vec<(String, String)>,
    stream: TcpStream,
}

impl Hit {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The browser connection waiting for the final page.
pub(super) struct Browser(TcpStream);

impl Browser {
    pub(super) async fn answer(mut self, status: u16, html: &str) {
        write_response(&mut self.0, status, html).await;
    }
}

pub(super) struct Listener {
    /// The OS-chosen port on 127.0.0.1.
    pub(super) port: u16,
    hits: mpsc::Receiver<Hit>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Listener {
    pub(super) async fn bind() -> Result<Self, Failure> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot listen on 127.0.0.1 for the browser's redirect: {e}"),
            )
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Failure::new(exit::FAILURE, format!("loopback listener: {e}")))?
            .port();
        let (tx, hits) = mpsc::channel(8);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        Ok(Self { port, hits, accept })
    }

    pub(super) fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{CALLBACK_PATH}", self.port)
    }

    /// Waits for `/callback` with the right `state`; answers wrong ones with 400 and
    /// goes on waiting. Returns the code and the browser's open connection.
    pub(super) async fn wait<C>(
        &mut self,
        state: &Secret,
        connection: &str,
        deadline: Instant,
        cancel: &mut std::pin::Pin<&mut C>,
        console: &Console,
    ) -> Result<(Secret, Browser), Failure>
    where
        C: Future<Output = ()>,
    {
        loop {
            let hit = tokio::select! {
                () = cancel.as_mut() => {
                    return Err(Failure::new(exit::CANCELLED, "cancelled; nothing was linked"));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Failure::new(
                        exit::FAILURE,
                        format!(
                            "the browser did not come back before the link request expired; \
                             nothing was linked. Run `defenseclawctl connections connect \
                             {connection}` again"
                        ),
                    ));
                }
                hit = self.hits.recv() => hit,
            };
            let Some(hit) = hit else {
                return Err(Failure::new(
                    exit::FAILURE,
                    "the loopback listener stopped unexpectedly",
                ));
            };
            let state_ok = hit
                .param("state")
                .is_some_and(|s| constant_time_eq(s.as_bytes(), state.expose().as_bytes()));
            if !state_ok {
                console.err_write(
                    "Warning: refused a redirect with a wrong or missing `state` (not from this \
                     request); still waiting.\n",
                );
                Browser(hit.stream)
                    .answer(
                        400,
                        &page(
                            "Request refused",
                            "This link does not belong to the pending request in the \
                             terminal. Nothing was linked.",
                        ),
                    )
                    .await;
                continue;
            }
            if let Some(error) = hit.param("error") {
                let desc = hit.param("error_description").unwrap_or_default();
                let message = format!(
                    "the provider did not link the account ({error}{}{desc})",
                    if desc.is_empty() { "" } else { ": " }
                );
                let denied = error == "access_denied";
                Browser(hit.stream)
                    .answer(
                        400,
                        &page(
                            "Not linked",
                            "The account was not linked. The terminal says why; you can close \
                             this tab.",
                        ),
                    )
                    .await;
                return Err(if denied {
                    Failure::new(exit::PERMISSION_DENIED, message)
                } else {
                    AuthError::Provider(message).into()
                });
            }
            match hit.param("connect_code").filter(|c| !c.is_empty()) {
                Some(code) => {
                    let code = Secret::new(code);
                    return Ok((code, Browser(hit.stream)));
                }
                None => {
                    Browser(hit.stream)
                        .answer(400, &page("Request refused", "No connect code arrived."))
                        .await;
                    return Err(AuthError::Provider(
                        "the redirect carried an empty connect_code".into(),
                    )
                    .into());
                }
            }
        }
    }
}

/// One browser connection: anything but `GET /callback` with a code or an error is
/// answered here (404, 405, or the page that re-sends the fragment as a query).
async fn serve(mut stream: TcpStream, hits: mpsc::Sender<Hit>) {
    let head = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let Some((method, target)) = request_line(&head) else {
        write_response(&mut stream, 400, &page("Bad request", "Bad request.")).await;
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != CALLBACK_PATH {
        write_response(&mut stream, 404, &page("Not found", "Not found.")).await;
        return;
    }
    if method != "GET" {
        write_response(&mut stream, 405, &page("Not allowed", "Use GET.")).await;
        return;
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let carries = params
        .iter()
        .any(|(k, _)| k == "connect_code" || k == "error");
    if !carries {
        write_response(&mut stream, 200, FRAGMENT_PAGE).await;
        return;
    }
    // If the waiter is gone, the stream drops and the browser sees a closed connection.
    let _ = hits.send(Hit { params, stream }).await;
}

/// Reads up to the end of the request head (`\r\n\r\n`); `None` if it is too long or the
/// connection closes first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
}

/// `(method, target)` of an HTTP/1.x request line.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

async fn write_response(stream: &mut TcpStream, status: u16, html: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Gateway",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Referrer-Policy: no-referrer\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\r\n{html}",
        html.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub(super) fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>DefenseClaw: {title}</title>\
         </head><body><h1>{title}</h1><p>{message}</p></body></html>"
    )
}

/// Served for `/callback` without a code in the query: when the provider put `connect_code`
/// and `state` in the fragment, the script sends them again as a query.
const FRAGMENT_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>DefenseClaw</title></head><body><p id=\"m\">Finishing the link…</p>\
<noscript><p>JavaScript is off: copy this page's address into a new tab, replacing \
<code>#</code> with <code>?</code>.</p></noscript>\
<script>(function(){var f=window.location.hash.replace(/^#/,'');\
if(f){window.location.replace('/callback?'+f);}\
else{document.getElementById('m').textContent='No connect code arrived; return to the terminal.';}\
})();</script></body></html>";

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Equal-time comparison, so a wrong `state` can't be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line("GET /callback?a=b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/callback?a=b"))
        );
        assert_eq!(request_line("GET http://x/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_line("garbage\r\n\r\n"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    async fn get(http: &reqwest::Client, port: u16, rest: &str) -> (u16, String) {
        let r = http
            .get(format!("http://127.0.0.1:{port}{rest}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn listener_refuses_wrong_state_then_takes_the_right_one() {
        let mut listener = Listener::bind().await.unwrap();
        let port = listener.port;
        assert_eq!(
            listener.redirect_uri(),
            format!("http://127.0.0.1:{port}/callback")
        );
        let http = client();
        let secret = Secret::new("state-0123456789abcdefghijklmnopqrstuvwxyz");
        let state = secret.expose().to_owned();
        let (console, out) = Console::capture();
        let deadline = Instant::now() + Duration::from_secs(60);
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let waiter = async {
            let (code, browser) = listener
                .wait(&secret, "github", deadline, &mut cancel, &console)
                .await
                .unwrap();
            browser.answer(200, &page("Done", "ok")).await;
            code
        };
        let browser = async {
            // Unrelated requests are answered without disturbing the wait.
            let (status, _) = get(&http, port, "/favicon.ico").await;
            assert_eq!(status, 404);
            // A wrong state is refused.
            let (status, body) = get(&http, port, "/callback?connect_code=evil&state=nope").await;
            assert_eq!(status, 400);
            assert!(body.contains("Nothing was linked"), "{body}");
            // A missing state too.
            let (status, _) = get(&http, port, "/callback?connect_code=evil").await;
            assert_eq!(status, 400);
            // The right one: the answer comes once the waiter replies.
            let url = format!("/callback?connect_code=good%2Bcode&state={state}");
            get(&http, port, &url).await
        };
        let (code, (status, body)) = tokio::join!(waiter, browser);
        assert_eq!(code.expose(), "good+code");
        assert_eq!(status, 200);
        assert!(body.contains("Done"), "{body}");
        assert!(out.stderr().contains("wrong or missing `state`"));
        assert!(!out.stderr().contains(&state));
    }

    #[tokio::test]
    async fn listener_serves_the_fragment_page_and_reports_errors() {
        let mut listener = Listener::bind().await.unwrap();
        let port = listener.port;
        let http = client();
        let (status, body) = get(&http, port, "/callback").await;
        assert_eq!(status, 200);
        assert!(body.contains("location.hash"), "{body}");
        assert!(body.contains("'/callback?'+f"), "{body}");
        let status = http
            .post(format!("http://127.0.0.1:{port}/callback?connect_code=x"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 405);

        let secret = Secret::new("state-0123456789abcdefghijklmnopqrstuvwxyz");
        let url = format!(
            "/callback?error=access_denied&error_description=user+said+no&state={}",
            secret.expose()
        );
        let (console, _out) = Console::capture();
        let deadline = Instant::now() + Duration::from_secs(60);
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let (res, (status, _)) = tokio::join!(
            listener.wait(&secret, "github", deadline, &mut cancel, &console),
            get(&http, port, &url)
        );
        let err = res.err().unwrap();
        assert_eq!(status, 400);
        assert_eq!(err.code, exit::PERMISSION_DENIED);
        assert!(err.message.contains("user said no"), "{}", err.message);
    }

    #[tokio::test]
    async fn listener_wait_ends_at_the_deadline_and_on_cancel() {
        let mut listener = Listener::bind().await.unwrap();
        let secret = Secret::new("state-0123456789abcdefghijklmnopqrstuvwxyz");
        let (console, _out) = Console::capture();
        let cancel = std::future::pending::<()>();
        tokio::pin!(cancel);
        let err = listener
            .wait(&secret, "github", Instant::now(), &mut cancel, &console)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, exit::FAILURE);
        assert!(err.message.contains("expired"), "{}", err.message);

        let cancel = std::future::ready(());
        tokio::pin!(cancel);
        let far = Instant::now() + Duration::from_secs(3600);
        let err = listener
            .wait(&secret, "github", far, &mut cancel, &console)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, exit::CANCELLED);
    }
}
