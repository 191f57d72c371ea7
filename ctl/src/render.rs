//! Output: wire types turned into JSON documents and tables, and written to stdout.

use std::io::Write;

use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};

use crate::exit::{FAILURE, Failure};

/// The wire target kind as the word tables and JSON show: `skill`, `mcp`, or empty.
pub fn kind_name(kind: i32) -> &'static str {
    match pb::TargetKind::try_from(kind) {
        Ok(pb::TargetKind::Skill) => "skill",
        Ok(pb::TargetKind::Mcp) => "mcp",
        _ => "",
    }
}

/// Severity name or null.
pub fn severity_name(severity: i32) -> Option<&'static str> {
    match pb::Severity::try_from(severity) {
        Ok(pb::Severity::Info) => Some("INFO"),
        Ok(pb::Severity::Low) => Some("LOW"),
        Ok(pb::Severity::Medium) => Some("MEDIUM"),
        Ok(pb::Severity::High) => Some("HIGH"),
        Ok(pb::Severity::Critical) => Some("CRITICAL"),
        _ => None,
    }
}

fn state_name(state: i32) -> &'static str {
    match pb::EnforcementState::try_from(state) {
        Ok(pb::EnforcementState::Blocked) => "blocked",
        Ok(pb::EnforcementState::Allowed) => "allowed",
        _ => "none",
    }
}

fn target(t: Option<&pb::TargetRef>) -> Value {
    match t {
        Some(t) => json!({"kind": kind_name(t.kind), "name": t.name}),
        None => Value::Null,
    }
}

/// A target summary (`skill list` element).
pub fn summary(s: &pb::TargetSummary) -> Value {
    let d = s.decision.clone().unwrap_or_default();
    let t = s.target.clone().unwrap_or_default();
    json!({
        "kind": kind_name(t.kind),
        "name": t.name,
        "state": state_name(d.state),
        "reason": d.reason,
        "decided_by": d.decided_by,
        "decided_at": d.decided_at,
        "open_findings": s.open_findings,
        "max_severity": severity_name(s.max_open_severity),
    })
}

/// A target with findings (`skill show`).
pub fn detail(d: &pb::TargetDetail) -> Value {
    let mut v = summary(&d.summary.clone().unwrap_or_default());
    if let Value::Object(map) = &mut v {
        map.insert(
            "findings".into(),
            Value::Array(d.findings.iter().map(finding).collect()),
        );
        if let Some(p) = &d.pending {
            map.insert(
                "pending".into(),
                json!({"request_id": p.request_id, "action": p.action, "expires_at": p.expires_at}),
            );
        }
    }
    v
}

/// A finding as the JSON object `-o json` prints and tables read from.
pub fn finding(f: &pb::Finding) -> Value {
    json!({
        "id": f.id,
        "target": target(f.target.as_ref()),
        "scanner": f.scanner,
        "rule_id": f.rule_id,
        "severity": severity_name(f.severity),
        "category": f.category,
        "title": f.title,
        "description": f.description,
        "location": f.location,
        "line": f.line,
        "snippet": f.snippet,
        "created_at": f.created_at,
        "dismissed": f.dismissed,
        "dismissed_by": f.dismissed_by,
        "dismissed_at": f.dismissed_at,
        "dismiss_reason": f.dismiss_reason,
    })
}

/// Who did something (identity, auth method, peer ids) as JSON, for audit and approval output.
pub fn actor(a: &pb::Actor) -> Value {
    let mut v = json!({
        "id": a.id,
        "name": a.name,
        "auth_method": a.auth_method,
        "uid": (a.uid != u32::MAX).then_some(a.uid),
        "gid": (a.gid != u32::MAX).then_some(a.gid),
        "pid": (a.pid != 0).then_some(a.pid),
    });
    if let Value::Object(map) = &mut v {
        for (key, value) in [
            ("email", &a.email),
            ("issuer", &a.issuer),
            ("client_id", &a.client_id),
        ] {
            if !value.is_empty() {
                map.insert(key.into(), json!(value));
            }
        }
    }
    v
}

/// An audit entry.
pub fn entry(e: &pb::AuditEntry) -> Value {
    let details: Value =
        serde_json::from_str(&e.details_json).unwrap_or(Value::String(e.details_json.clone()));
    json!({
        "seq": e.seq,
        "ts": e.ts,
        "action": e.action,
        "target": target(e.target.as_ref()),
        "severity": severity_name(e.severity),
        "outcome": e.outcome,
        "reason": e.reason,
        "details": details,
        "actor": e.actor.as_ref().map(actor).unwrap_or(Value::Null),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// The `status` reply as the JSON document `-o json` prints.
pub fn status(s: &pb::StatusReply) -> Value {
    let c = s.counts.unwrap_or_default();
    let h = s.audit_head.clone().unwrap_or_default();
    json!({
        "version": s.version,
        "uptime_secs": s.uptime_secs,
        "socket": s.socket,
        "store_path": s.store_path,
        "daemon_pid": s.daemon_pid,
        "counts": {
            "targets": c.targets,
            "blocked": c.blocked,
            "allowed": c.allowed,
            "open_findings": c.open_findings,
            "audit_entries": c.audit_entries,
        },
        "audit_head": {"seq": h.seq, "hash": h.hash},
        "caller": s.caller.as_ref().map(actor).unwrap_or(Value::Null),
        "auth": s.auth.as_ref().map(|a| json!({
            "mode": a.mode,
            "issuer": a.issuer,
            "audience": a.audience,
            "jwks_keys": a.jwks_keys,
            "jwks_serving_stale": a.jwks_serving_stale,
            "jwks_last_error": empty_null(&a.jwks_last_error),
            "jwks_last_refresh_ok_at": empty_null(&a.jwks_last_refresh_ok_at),
        })).unwrap_or(Value::Null),
        "openclaw": s.openclaw.as_ref().map(openclaw_status).unwrap_or(Value::Null),
        "exporters": s.exporters.iter().map(|e| json!({
            "name": e.name,
            "kind": e.kind,
            "state": e.state,
            "cursor": e.cursor,
            "lag": e.lag,
            "last_error": empty_null(&e.last_error),
            "last_success_at": empty_null(&e.last_success_at),
        })).collect::<Vec<_>>(),
        "export_signing_key": empty_null(&s.export_signing_key),
    })
}

fn empty_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

/// The `openclaw` object of `status -o json`.
pub fn openclaw_status(o: &pb::OpenClawStatus) -> Value {
    json!({
        "state": o.state,
        "url": o.url,
        "server_version": empty_null(&o.server_version),
        "protocol": (o.protocol != 0).then_some(o.protocol),
        "scopes": o.scopes,
        "missing_scopes": o.missing_scopes,
        "last_event_at": empty_null(&o.last_event_at),
        "last_error": empty_null(&o.last_error),
        "pending_enforcements": o.pending_enforcements,
        "gateway_check": empty_null(&o.gateway_check),
        "gate": o.gate.as_ref().map(|g| {
            let n = g.decisions.unwrap_or_default();
            json!({
                // null until the daemon has read the gateway's plugins.
                "plugin": empty_null(&g.plugin),
                "version": empty_null(&g.version),
                "exec_policy": empty_null(&g.exec_policy),
                "last_decision_at": empty_null(&g.last_decision_at),
                "decisions": {
                    "allowed": n.allowed,
                    "denied": n.denied,
                    "approved": n.approved,
                    "timed_out": n.timed_out,
                },
            })
        }),
    })
}

/// The answer of `openclaw setup -o json`: each managed setting with its
/// value before and after (JSON values; `null`: absent).
pub fn openclaw_setup(r: &pb::OpenClawSetupReply) -> Value {
    let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or_else(|_| json!(t));
    json!({
        "dry_run": r.dry_run,
        "undo": r.undo,
        "changes": r.changes.iter().map(|c| json!({
            "path": c.path,
            "before": parse(&c.before),
            "after": parse(&c.after),
            "changed": c.changed,
        })).collect::<Vec<_>>(),
        "plugin": empty_null(&r.plugin),
        "audit_seq": (r.audit_seq != 0).then_some(r.audit_seq),
    })
}

/// An OpenClaw approval the daemon saw.
pub fn openclaw_approval(a: &pb::OpenClawApproval) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind,
        "subject": a.subject,
        "session_key": empty_null(&a.session_key),
        "agent_id": empty_null(&a.agent_id),
        "created_at_ms": (a.created_at_ms != 0).then_some(a.created_at_ms),
        "expires_at_ms": (a.expires_at_ms != 0).then_some(a.expires_at_ms),
        "decision": a.decision,
        "reason": a.reason,
        "resolved_decision": empty_null(&a.resolved_decision),
        "resolved_by": empty_null(&a.resolved_by),
    })
}

/// Whether `c` must not reach a terminal raw: C0/C1 controls (ESC starts
/// terminal escape sequences), DEL, bidi overrides and isolates, zero-width and
/// other invisible formatting characters, line/paragraph separators, and tags.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{205F}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

fn escape_with(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| is_hidden(c) && !(keep_newlines && c == '\n');
    if !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            _ if !hidden(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Agent- or file-supplied text made safe for a table cell: every hidden or
/// control character (see `is_hidden`), newlines included, becomes a visible
/// escape (`\n`, `\u{1b}`, `\u{202e}`). The one escaping function of the
/// CLI's text output; JSON output keeps serde's escaping instead.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, false)
}

/// Like [`escape`] but keeps line breaks: for multi-line text output.
pub fn escape_text(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, true)
}

/// Widest a table cell is shown without `-o wide`; longer text ends in `…`.
pub const CELL_MAX: usize = 60;

static WIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static COLOUR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `-o wide`: table cells are never shortened.
pub fn set_wide(wide: bool) {
    WIDE.store(wide, std::sync::atomic::Ordering::Relaxed);
}

/// Colour for table states: on a terminal unless `NO_COLOR` is set (any
/// value); `CLICOLOR_FORCE` (not `0`) turns it on off a terminal.
fn colour() -> bool {
    *COLOUR.get_or_init(|| {
        use std::io::IsTerminal;
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if set("NO_COLOR") {
            return false;
        }
        if std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0") {
            return true;
        }
        std::io::stdout().is_terminal()
    })
}

/// The ANSI colour of a state or severity word in a STATE/MAX/SEVERITY/OUTCOME column.
fn colour_of(header: &str, cell: &str) -> Option<&'static str> {
    if !matches!(header, "STATE" | "MAX" | "SEVERITY" | "OUTCOME" | "STATUS") {
        return None;
    }
    match cell.to_ascii_lowercase().as_str() {
        "blocked" | "denied" | "fail" | "critical" | "high" | "revoked" | "timed_out"
        | "broken" => Some("31"),
        "pending" | "warn" | "medium" | "suspended" | "quarantined" => Some("33"),
        "allowed" | "ok" | "approved" | "active" | "low" => Some("32"),
        _ => None,
    }
}

/// Display width of `text` in terminal columns (wide characters count two).
fn width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` cut to at most `max` columns, ending in `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// Rows as aligned columns, for text that goes through [`print_text`]:
/// every cell is escaped with [`escape`], measured in terminal columns and cut
/// at [`CELL_MAX`] with `…` (not with `-o wide`). No rows: the header and `(none)`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_with(headers, rows, false)
}

/// Prints a table on its own, with state words coloured on a terminal. Safe
/// to write as is: every cell is escaped before colour is added, and the
/// headers are the CLI's own.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
    write_line(&table_with(headers, rows, colour()))
}

fn table_with(headers: &[&str], rows: &[Vec<String>], colour: bool) -> String {
    let wide = WIDE.load(std::sync::atomic::Ordering::Relaxed);
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| {
                    let cell = escape(c);
                    if wide {
                        cell.into_owned()
                    } else {
                        shorten(&cell, CELL_MAX)
                    }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let line = |cells: Vec<String>, header_row: bool| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = if i == last {
                0
            } else {
                widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(width(cell))
            };
            match headers
                .get(i)
                .and_then(|h| colour_of(h, cell))
                .filter(|_| colour && !header_row)
            {
                Some(code) => out.push_str(&format!("\u{1b}[{code}m{cell}\u{1b}[0m")),
                None => out.push_str(cell),
            }
            out.push_str(&" ".repeat(pad));
            if i != last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect(), true);
    if rows.is_empty() {
        out.push_str("\n(none)");
    }
    for row in rows {
        out.push('\n');
        out.push_str(&line(row, false));
    }
    out
}

/// Who an actor id names for people: `uid:0` → `root` (from the password
/// database), anything else as it is.
pub fn actor_label(id: &str) -> String {
    id.strip_prefix("uid:")
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|uid| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
        })
        .map_or_else(|| id.to_owned(), |u| u.name)
}

/// Prints `value` as one JSON line on stdout.
pub(crate) fn print_json(value: &Value) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(|e| match e.io_error_kind() {
        Some(kind) => Failure::writing(&std::io::Error::from(kind)),
        None => Failure::new(FAILURE, format!("writing output: {e}")),
    })?;
    writeln!(out).map_err(|e| Failure::writing(&e))
}

/// Prints table-mode text; hidden and control characters in it are escaped
/// (it may quote agent- or file-supplied text).
pub(crate) fn print_text(text: &str) -> Result<(), Failure> {
    write_line(&escape_text(text))
}

/// Resolves when nobody reads stdout any more (the reader of a pipe closed it),
/// so a follow stream that prints rarely still ends with `| head`. Never
/// resolves where that cannot be told (a regular file is never "closed").
pub(crate) async fn stdout_closed() {
    use std::os::fd::AsFd;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // A detached thread: a runtime waits for its blocking tasks on shutdown,
    // and this one may wait forever. No events are asked for; poll always
    // reports an error or hang-up, which is what a pipe with no reader shows.
    let spawned = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut fds = [nix::poll::PollFd::new(
                stdout.as_fd(),
                nix::poll::PollFlags::empty(),
            )];
            loop {
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(n) if n > 0 => {
                        let _ = tx.send(());
                        return;
                    }
                    Err(nix::errno::Errno::EINTR) | Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    if spawned.is_ok() && rx.await.is_ok() {
        return;
    }
    std::future::pending().await
}

/// Prints one line of the CLI's own text as is.
pub(crate) fn write_line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure::writing(&e))
}

/// A JSON value as table text: strings unquoted, null empty.
pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn tables_measure_columns_cut_long_cells_and_say_none() {
        let rows = vec![
            vec!["🦀crab".to_owned(), "blocked".to_owned()],
            vec!["plain".to_owned(), "x".repeat(CELL_MAX + 10)],
        ];
        let text = table(&["NAME", "STATE"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        // The crab is two columns wide: the second column starts at the same place.
        let col = |l: &str| width(l) - width(l.rsplit(' ').next().unwrap());
        assert_eq!(col(lines[1]), col(lines[2]), "{text}");
        assert!(
            lines[2].ends_with('…') && width(lines[2]) < CELL_MAX + 12,
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "colour in plain table text: {text:?}"
        );
        let coloured = table_with(&["NAME", "STATE"], &rows, true);
        assert!(
            coloured.contains("\u{1b}[31mblocked\u{1b}[0m"),
            "{coloured:?}"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n(none)");
        // A cell cannot smuggle its own escape sequence in.
        let hostile = table_with(&["STATE"], &[vec!["\u{1b}[8mhidden".to_owned()]], true);
        assert!(!hostile.contains("\u{1b}[8m"), "{hostile:?}");
    }

    #[test]
    fn uid_actors_are_named() {
        assert_eq!(actor_label("uid:0"), "root");
        assert_eq!(actor_label("auth0|abc"), "auth0|abc");
        assert_eq!(actor_label("uid:notanumber"), "uid:notanumber");
    }

    use super::{CELL_MAX, actor_label, escape, escape_text, table, table_with, width};

    #[test]
    fn hidden_characters_are_shown_escaped() {
        assert_eq!(escape("plain é ✓"), "plain é ✓");
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{001b}[2Jb");
        assert_eq!(escape("x\u{9b}y\u{7f}"), "x\\u{009b}y\\u{007f}");
        assert_eq!(
            escape("\u{202e}exe.gnp\u{2066}"),
            "\\u{202e}exe.gnp\\u{2066}"
        );
        assert_eq!(
            escape("zero\u{200b}width\u{feff}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(escape("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(escape("two\nlines\r\t"), "two\\nlines\\r\\t");
        assert_eq!(escape_text("two\nlines\u{1b}"), "two\nlines\\u{001b}");
        let t = table(&["A"], &[vec!["x\u{1b}]0;t\u{7}".into()]]);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
    }
}
