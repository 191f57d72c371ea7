//! Token Vault servers wired into OpenClaw: while `openclaw setup` is in
//! effect, an MCP server the daemon allows with connections is started by
//! OpenClaw through `defenseclawctl mcp exec <name> -- <original command>`
//! (the provider token reaches only the server's environment). The original
//! command stays inside the rewritten entry (after `--`), so a revoke, a block
//! or `openclaw setup --undo` puts it back exactly. This file plans those
//! rewrites as [`GateChange`]s; `gate_setup::apply` writes them.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::gate_setup::{GateChange, McpWrapper};
use super::redact::redact_text;

/// The file name every wrapper command has (any install location).
const CTL_NAME: &str = "defenseclawctl";

fn servers(config: &Value) -> Vec<(&String, &Value)> {
    config["mcp"]["servers"]
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// A server name that can stand in a dotted config path.
fn addressable(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The original `(command, args)` of an entry this daemon wrapped: command
/// `…/defenseclawctl`, args `[--socket, S,] mcp, exec, <name>, --, cmd, args…`.
pub fn original_of(name: &str, entry: &Value) -> Option<(Value, Value)> {
    let command = entry["command"].as_str()?;
    if std::path::Path::new(command).file_name()? != CTL_NAME {
        return None;
    }
    let args: Vec<&str> = entry["args"]
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()?;
    let rest = match args.as_slice() {
        ["--socket", _, rest @ ..] => rest,
        rest => rest,
    };
    let ["mcp", "exec", n, "--", cmd, orig @ ..] = rest else {
        return None;
    };
    (*n == name).then(|| (json!(cmd), json!(orig)))
}

fn wrapped(w: &McpWrapper, name: &str, command: &str, args: &[Value]) -> (Value, Value) {
    let mut out = vec![
        json!("--socket"),
        json!(w.socket),
        json!("mcp"),
        json!("exec"),
        json!(name),
        json!("--"),
        json!(command),
    ];
    out.extend(args.iter().cloned());
    (json!(w.ctl), Value::Array(out))
}

fn pair(name: &str, entry: &Value, command: Value, args: Value) -> [GateChange; 2] {
    let path = |k: &str| format!("mcp.servers.{name}.{k}");
    [
        GateChange::new(path("command"), entry["command"].clone(), command),
        GateChange::new(path("args"), entry["args"].clone(), args),
    ]
}

/// The rewrites that make OpenClaw's config match `wanted` (servers allowed
/// with connections): wanted stdio servers not yet wrapped are wrapped, wrapped
/// servers no longer wanted are put back. Only changed settings are returned.
pub fn plan(w: &McpWrapper, config: &Value, wanted: &BTreeSet<String>) -> Vec<GateChange> {
    let mut out = Vec::new();
    for (name, entry) in servers(config) {
        if !addressable(name) {
            continue;
        }
        match (original_of(name, entry), wanted.contains(name)) {
            (None, true) => {
                // Only stdio servers can be started through the wrapper.
                let Some(command) = entry["command"].as_str() else {
                    continue;
                };
                if entry["args"].is_array() || entry["args"].is_null() {
                    let args = entry["args"].as_array().cloned().unwrap_or_default();
                    let (c, a) = wrapped(w, name, command, &args);
                    out.extend(pair(name, entry, c, a));
                }
            }
            (Some((command, args)), false) => out.extend(pair(name, entry, command, args)),
            // Already wrapped (with whatever socket it was given) or not wanted.
            _ => {}
        }
    }
    out.retain(|c| c.changed);
    out
}

/// Putting every wrapped server back (`openclaw setup --undo`).
pub fn plan_unwrap_all(config: &Value) -> Vec<GateChange> {
    let mut out = Vec::new();
    for (name, entry) in servers(config) {
        if addressable(name)
            && let Some((command, args)) = original_of(name, entry)
        {
            out.extend(pair(name, entry, command, args));
        }
    }
    out.retain(|c| c.changed);
    out
}

/// The server a wiring change belongs to, and whether it wraps (else unwraps).
pub fn server_of(change: &GateChange) -> Option<(&str, bool)> {
    let rest = change.path.strip_prefix("mcp.servers.")?;
    let name = rest.strip_suffix(".command")?;
    let wraps = change
        .after
        .as_str()
        .and_then(|c| std::path::Path::new(c).file_name())
        .is_some_and(|f| f == CTL_NAME);
    Some((name, wraps))
}

/// The audit form of a wiring change: the command, and the arguments with
/// anything that looks like a secret redacted.
pub fn audit_view(change: &GateChange) -> Value {
    let shown = |v: &Value| match v {
        Value::String(s) => json!(redact_text(s)),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| x.as_str().map_or(Value::Null, |s| json!(redact_text(s))))
                .collect(),
        ),
        other => other.clone(),
    };
    json!({"path": change.path, "before": shown(&change.before), "after": shown(&change.after)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> McpWrapper {
        McpWrapper {
            ctl: "/usr/bin/defenseclawctl".into(),
            socket: "/run/defenseclaw/defenseclawd.sock".into(),
        }
    }

    fn wanted(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_wanted_server_is_wrapped_once_and_put_back_exactly() {
        let cfg = json!({"mcp": {"servers": {
            "github-mcp": {"command": "npx", "args": ["-y", "gh-mcp"], "env": {"A": "1"}},
            "other": {"command": "x"},
            "remote": {"url": "https://example.invalid/mcp"}}}});
        let changes = plan(&w(), &cfg, &wanted(&["github-mcp", "remote"]));
        assert_eq!(changes.len(), 2, "{changes:?}");
        let mut after = cfg.clone();
        for c in &changes {
            let key = c.path.rsplit('.').next().unwrap();
            after["mcp"]["servers"]["github-mcp"][key] = c.after.clone();
        }
        let entry = &after["mcp"]["servers"]["github-mcp"];
        assert_eq!(entry["command"], "/usr/bin/defenseclawctl");
        assert_eq!(
            entry["args"],
            json!([
                "--socket",
                "/run/defenseclaw/defenseclawd.sock",
                "mcp",
                "exec",
                "github-mcp",
                "--",
                "npx",
                "-y",
                "gh-mcp"
            ])
        );
        assert_eq!(server_of(&changes[0]), Some(("github-mcp", true)));
        // Wanted and wrapped: nothing to do.
        assert!(plan(&w(), &after, &wanted(&["github-mcp"])).is_empty());
        // No longer wanted: the original back, byte for byte.
        let back = plan(&w(), &after, &wanted(&[]));
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].after, json!("npx"));
        assert_eq!(back[1].after, json!(["-y", "gh-mcp"]));
        assert_eq!(server_of(&back[0]), Some(("github-mcp", false)));
        assert_eq!(plan_unwrap_all(&after), back);
        assert!(plan_unwrap_all(&cfg).is_empty());
    }

    #[test]
    fn only_our_own_wrapping_is_undone() {
        // Someone else's defenseclawctl line for another server is not ours to undo.
        let e = json!({"command": "/opt/defenseclawctl", "args": ["mcp", "exec", "b", "--", "x"]});
        assert!(original_of("a", &e).is_none());
        assert_eq!(original_of("b", &e), Some((json!("x"), json!([]))));
        let e = json!({"command": "/bin/sh", "args": ["mcp", "exec", "a", "--", "x"]});
        assert!(original_of("a", &e).is_none());
        let cfg = json!({"mcp": {"servers": {"a.b": {"command": "x"}}}});
        assert!(
            plan(&w(), &cfg, &wanted(&["a.b"])).is_empty(),
            "not addressable"
        );
    }
}
