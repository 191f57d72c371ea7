//! `connections ui`: a small local web page listing the caller's own grants
//! (`ListMyConnections`, with the caller's session) with a Revoke button each
//! (`RevokeMyConnection`, effective at once).
//!
//! Served on 127.0.0.1 only, on an OS-chosen port. The URL it prints carries a
//! one-time token: its first use swaps it for a session cookie (HttpOnly,
//! SameSite=Strict) and the token is gone. Every request must name this host
//! and port exactly (no DNS rebinding); a revoke also needs the page's CSRF
//! token and, when the browser sends one, a same-origin `Origin`. Pages are
//! rendered on the server with every value HTML-escaped, under a CSP that
//! allows no script, style, frame or foreign form target. Request heads,
//! bodies, read times and concurrent connections are bounded. Ctrl-C ends it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use defenseclaw_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cli::UiArgs;
use crate::client::{self, Client};
use crate::connect::html_escape;
use crate::exit::{FAILURE, Failure};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Longest request body read (a revoke form is far smaller).
const MAX_BODY: usize = 4 * 1024;
/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handled at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// The session cookie's name.
const COOKIE: &str = "dc_ui";
/// Every page's security headers.
const CSP: &str = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page's secrets and what it says next.
struct Ui {
    socket: PathBuf,
    /// `127.0.0.1:<port>`: the only Host accepted.
    host: String,
    /// The URL's one-time token, until it is used.
    url_token: Mutex<Option<String>>,
    /// The session cookie's value, once the token was used.
    session: Mutex<Option<String>>,
    /// The forms' CSRF token.
    csrf: String,
    /// What the last revoke did, shown once.
    notice: Mutex<Option<String>>,
}

fn random_token() -> Result<String, Failure> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        Failure::new(
            FAILURE,
            format!("the system random number generator failed: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal-time comparison, so a token can't be guessed byte by byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A client with the caller's current session (refreshed as needed).
async fn daemon(socket: &Path) -> Result<Client, Failure> {
    let bearer = crate::auth::bearer_token_if_configured().await?;
    let bearer = client::Bearer::new(bearer.as_ref().map(|t| t.expose_secret()))?;
    client::connect_with(socket, bearer).await
}

/// Serves the page until Ctrl-C.
pub async fn serve(socket: &Path, args: UiArgs) -> Result<(), Failure> {
    // Fail here, not in the browser, when the caller cannot list their grants.
    daemon(socket)
        .await?
        .list_my_connections(pb::ListMyConnectionsRequest {})
        .await?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| Failure::new(FAILURE, format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Failure::new(FAILURE, format!("cannot listen on 127.0.0.1: {e}")))?
        .port();
    let token = random_token()?;
    let ui = Arc::new(Ui {
        socket: socket.to_owned(),
        host: format!("127.0.0.1:{port}"),
        url_token: Mutex::new(Some(token.clone())),
        session: Mutex::new(None),
        csrf: random_token()?,
        notice: Mutex::new(None),
    });
    let url = format!("http://127.0.0.1:{port}/?token={token}");
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{url}")
            .and_then(|()| out.flush())
            .map_err(|e| Failure::writing(&e))?;
    }
    eprintln!("Your grants are at the URL above (one use; it works in one browser). Ctrl-C stops.");
    if !args.no_browser {
        crate::auth::open_browser(&url);
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    continue;
                };
                let ui = ui.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    handle(&ui, stream).await;
                });
            }
        }
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

/// An answer: status, extra headers, HTML.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    html: String,
}

impl Reply {
    fn page(status: u16, html: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            html,
        }
    }

    fn refused(status: u16, why: &str) -> Self {
        Self::page(
            status,
            page("Refused", &format!("<p>{}</p>", html_escape(why))),
        )
    }

    fn see_other(location: &str) -> Self {
        Self {
            status: 303,
            headers: vec![("Location", location.to_owned())],
            html: String::new(),
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    };
    if head_end > MAX_HEAD {
        return None;
    }
    let head = std::str::from_utf8(buf.get(..head_end)?).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        headers,
        body: buf.get(head_end + 4..)?.to_vec(),
    };
    let length: usize = match request.header("content-length") {
        Some(l) => l.parse().ok()?,
        None => 0,
    };
    if length > MAX_BODY || request.body.len() > length {
        return None;
    }
    while request.body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.body.extend_from_slice(chunk.get(..n)?);
        if request.body.len() > length {
            return None;
        }
    }
    Some(request)
}

async fn handle(ui: &Ui, mut stream: TcpStream) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Some(r)) => r,
        _ => {
            write(
                &mut stream,
                Reply::refused(400, "Bad request (too large, too slow or malformed)."),
            )
            .await;
            return;
        }
    };
    let reply = route(ui, &request).await;
    write(&mut stream, reply).await;
}

async fn route(ui: &Ui, r: &Request) -> Reply {
    // Only this host and port: a page on another name resolving here gets nothing.
    if r.header("host") != Some(ui.host.as_str()) {
        return Reply::refused(403, "Wrong Host.");
    }
    let session = ui
        .session
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let signed_in = match (&session, r.cookie(COOKIE)) {
        (Some(s), Some(c)) => same(s, c),
        _ => false,
    };
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/") => {
            if let Some((_, token)) = r.query.iter().find(|(k, _)| k == "token") {
                return use_url_token(ui, token);
            }
            if !signed_in {
                return Reply::refused(
                    403,
                    "Open the link `defenseclawctl connections ui` printed (it works once).",
                );
            }
            list_page(ui).await
        }
        ("POST", "/revoke") => {
            if !signed_in {
                return Reply::refused(403, "Not signed in to this page.");
            }
            if let Some(origin) = r.header("origin")
                && origin != format!("http://{}", ui.host)
            {
                return Reply::refused(403, "Cross-origin request refused.");
            }
            let form: Vec<(String, String)> =
                url::form_urlencoded::parse(&r.body).into_owned().collect();
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            if !same(field("csrf"), &ui.csrf) {
                return Reply::refused(403, "Missing or wrong CSRF token: reload the page.");
            }
            revoke(ui, field("server"), field("connection")).await
        }
        (_, "/" | "/revoke") => Reply::refused(405, "Method not allowed."),
        _ => Reply::refused(404, "Not found."),
    }
}

/// The one-time URL token becomes a session cookie; any later use is refused.
fn use_url_token(ui: &Ui, token: &str) -> Reply {
    let mut slot = ui.url_token.lock().unwrap_or_else(PoisonError::into_inner);
    let valid = slot.as_deref().is_some_and(|t| same(t, token));
    if !valid {
        return Reply::refused(
            403,
            "This link is wrong or was already used: run `defenseclawctl connections ui` again.",
        );
    }
    *slot = None;
    let Ok(session) = random_token() else {
        return Reply::refused(500, "The system random number generator failed.");
    };
    *ui.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session.clone());
    let mut reply = Reply::see_other("/");
    reply.headers.push((
        "Set-Cookie",
        format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"),
    ));
    reply
}

async fn revoke(ui: &Ui, server: &str, connection: &str) -> Reply {
    let result = match daemon(&ui.socket).await {
        Ok(mut c) => c
            .revoke_my_connection(pb::RevokeConnectionRequest {
                server: server.to_owned(),
                connection: connection.to_owned(),
                reason: "revoked from connections ui".into(),
                at_provider: false,
            })
            .await
            .map_err(|s| Failure::from_status(&s).message),
        Err(f) => Err(f.message),
    };
    let notice = match result {
        Ok(reply) => {
            let reply = reply.into_inner();
            // Whether the refresh token of theirs the daemon held was cut at the provider too.
            let there = reply
                .at_provider
                .as_ref()
                .map(|p| format!(" {}.", crate::connections::at_provider_text(p)))
                .unwrap_or_default();
            format!(
                "Revoked {server}'s grant for {connection} (audit #{}).{there}",
                reply.audit_seq
            )
        }
        Err(e) => format!("Could not revoke {server}'s grant for {connection}: {e}"),
    };
    *ui.notice.lock().unwrap_or_else(PoisonError::into_inner) = Some(notice);
    Reply::see_other("/")
}

async fn list_page(ui: &Ui) -> Reply {
    let notice = ui
        .notice
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let listed = match daemon(&ui.socket).await {
        Ok(mut c) => c
            .list_my_connections(pb::ListMyConnectionsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Failure::from_status(&s).message),
        Err(f) => Err(f.message),
    };
    let mut body = String::new();
    if let Some(n) = notice {
        body.push_str(&format!(
            "<p id=\"notice\" role=\"status\">{}</p>",
            html_escape(&n)
        ));
    }
    let reply = match listed {
        Err(e) => {
            body.push_str(&format!(
                "<p id=\"error\">The daemon did not answer: {}</p>",
                html_escape(&e)
            ));
            return Reply::page(502, page("Your connections", &body));
        }
        Ok(r) => r,
    };
    if reply.grants.is_empty() {
        body.push_str("<p>No agent holds a credential of yours.</p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>Server</th><th>Connection</th><th>Status</th><th>Scopes</th>\
             <th>Last used</th><th>Uses</th><th></th></tr></thead><tbody>",
        );
        for g in &reply.grants {
            let scopes = if g.granted_scopes.is_empty() {
                g.declared_scopes.join(" ")
            } else {
                g.granted_scopes.join(" ")
            };
            let action = if g.status == "revoked" {
                String::new()
            } else {
                format!(
                    "<form method=\"post\" action=\"/revoke\" data-grant=\"{id}\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <input type=\"hidden\" name=\"server\" value=\"{server}\">\
                     <input type=\"hidden\" name=\"connection\" value=\"{connection}\">\
                     <button type=\"submit\">Revoke</button></form>",
                    id = html_escape(&format!("{}/{}", g.server, g.connection)),
                    csrf = html_escape(&ui.csrf),
                    server = html_escape(&g.server),
                    connection = html_escape(&g.connection),
                )
            };
            body.push_str(&format!(
                "<tr data-grant=\"{id}\"><td>{server}</td><td>{connection}</td><td class=\"status\">{status}</td>\
                 <td>{scopes}</td><td>{last}</td><td>{uses}</td><td>{action}</td></tr>",
                id = html_escape(&format!("{}/{}", g.server, g.connection)),
                server = html_escape(&g.server),
                connection = html_escape(&g.connection),
                status = html_escape(&g.status),
                scopes = html_escape(&scopes),
                last = html_escape(if g.last_used.is_empty() {
                    "never"
                } else {
                    &g.last_used
                }),
                uses = g.use_count,
            ));
        }
        body.push_str("</tbody></table>");
    }
    Reply::page(200, page("Your connections", &body))
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t} — DefenseClaw</title></head><body><h1>{t}</h1>\
         <p>Agents allowed by DefenseClaw use these credentials of yours. Revoke takes effect at once.</p>\
         {body}</body></html>",
        t = html_escape(title)
    )
}

async fn write(stream: &mut TcpStream, reply: Reply) {
    let reason = match reply.status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
         Referrer-Policy: same-origin\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reply.html.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(reply.html.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_full() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let p = page("<x>", "");
        assert!(p.contains("&lt;x&gt;"), "{p}");
        assert!(!p.contains("<x>"));
    }
}
