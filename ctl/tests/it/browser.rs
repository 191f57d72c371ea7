//! A real headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol: a few CDP calls over one WebSocket. Missing Chromium fails the
//! test with a message saying so (`.ci/run` installs it).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for each wait (never a timing assertion).
const WAIT: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless browser with one page.
pub struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    port: u16,
    page: Socket,
    next_id: u64,
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: the connections ui test drives a real headless browser; \
                 install Debian's package (`apt-get install chromium`; .ci/run does)"
            )
        })
}

impl Browser {
    /// Starts Chromium headless on a DevTools port it chooses and attaches to its page.
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e}"));
        let active = profile.path().join("DevToolsActivePort");
        let port: u16 =
            defenseclaw_testkit::wait_for("Chromium's DevToolsActivePort", WAIT, || {
                let active = active.clone();
                async move {
                    let text = std::fs::read_to_string(&active).ok()?;
                    text.lines().next()?.trim().parse().ok()
                }
            })
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let ws = defenseclaw_testkit::wait_for("Chromium's page target", WAIT, || {
            let http = http.clone();
            async move {
                let targets: Value = http
                    .get(format!("http://127.0.0.1:{port}/json/list"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_owned)
            }
        })
        .await
        .unwrap();
        let (page, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
        let mut b = Browser {
            _child: child,
            _profile: profile,
            port,
            page,
            next_id: 0,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Network.enable", json!({})).await;
        b
    }

    /// One CDP call; events in between are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.page
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .unwrap();
        let answer = tokio::time::timeout(WAIT, async {
            while let Some(msg) = self.page.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
            panic!("the DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Evaluates `expression` in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Navigates and waits for the page to finish loading at a URL starting with `lands_on`.
    pub async fn open(&mut self, url: &str, lands_on: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_loaded(lands_on).await;
    }

    /// Waits until the document at a URL starting with `lands_on` is complete.
    pub async fn wait_loaded(&mut self, lands_on: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self
                .eval("JSON.stringify([document.readyState, location.href])")
                .await;
            let state: Vec<String> =
                serde_json::from_str(state.as_str().unwrap_or("[]")).unwrap_or_default();
            if state.first().map(String::as_str) == Some("complete")
                && state.get(1).is_some_and(|h| h.starts_with(lands_on))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page did not load {lands_on}: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Cookies the browser holds for `url`.
    pub async fn cookies(&mut self, url: &str) -> Vec<Value> {
        self.call("Network.getCookies", json!({"urls": [url]}))
            .await["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// DevTools port (for diagnostics).
    pub fn port(&self) -> u16 {
        self.port
    }
}
