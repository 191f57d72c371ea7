//! Reading an MCP client config document: where its server map is, the line
//! a server is defined on, and the tool and description values inside it.

use serde_json::{Map, Value};

pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Finds the server map of a config document: its JSON path prefix and map.
pub fn servers_in_config(doc: &Value) -> Option<(&'static str, &Map<String, Value>)> {
    if let Some(m) = doc.get("mcpServers").and_then(Value::as_object) {
        return Some(("mcpServers", m));
    }
    if let Some(m) = doc
        .get("mcp")
        .and_then(|m| m.get("servers"))
        .and_then(Value::as_object)
    {
        return Some(("mcp.servers", m));
    }
    if let Some(m) = doc.get("servers").and_then(Value::as_object) {
        return Some(("servers", m));
    }
    None
}

pub(super) fn find_server_line(text: &str, name: &str) -> u32 {
    let needle = format!("\"{name}\"");
    text.lines()
        .position(|l| l.contains(&needle))
        .map_or(0, |i| u32::try_from(i + 1).unwrap_or(0))
}

/// Tools from a saved `tools/list` answer: `{"tools":[...]}`,
/// `{"result":{"tools":[...]}}` or a bare array.
pub(super) fn tools_of(v: &Value) -> Vec<&Value> {
    let arr = v
        .get("tools")
        .or_else(|| v.get("result").and_then(|r| r.get("tools")))
        .and_then(Value::as_array)
        .or_else(|| v.as_array());
    arr.map(|a| a.iter().collect()).unwrap_or_default()
}

pub(super) fn collect_descriptions(v: &Value, out: &mut String, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if (k == "description" || k == "title") && x.is_string() {
                    out.push_str(&value_text(x));
                    out.push('\n');
                } else {
                    collect_descriptions(x, out, depth + 1);
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect_descriptions(x, out, depth + 1)),
        _ => {}
    }
}
