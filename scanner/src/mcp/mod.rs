//! MCP server definitions: `.mcp.json` / `claude_desktop_config.json`
//! (`mcpServers`), OpenClaw (`mcp.servers`) and VS Code (`servers`) styles.
//!
//! Files: `config` (reading the document), `command` (the launch command's
//! vocabulary), `server` (the checks on one server); this file holds the
//! entry points and the bounded read of a file a caller names.

mod command;
mod config;
mod server;

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::engine::Engine;
use crate::model::{ScanError, ScanReport};
use config::{find_server_line, servers_in_config};

impl Engine {
    /// Scans every server (or only `server`) of an MCP client config file.
    pub fn scan_mcp_file(
        &self,
        file: &Path,
        server: Option<&str>,
    ) -> Result<Vec<ScanReport>, ScanError> {
        self.scan_mcp_file_with_tools(file, server, None)
    }

    /// Like `scan_mcp_file`, also scanning a saved `tools/list` answer
    /// (JSON) as the tools of the selected server (or of every server).
    pub fn scan_mcp_file_with_tools(
        &self,
        file: &Path,
        server: Option<&str>,
        tools_list: Option<&Path>,
    ) -> Result<Vec<ScanReport>, ScanError> {
        let text = read_bounded(file, self.limits().max_file_bytes)?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| ScanError::McpConfig {
            path: crate::model::shown(file),
            message: format!("not valid JSON: {e}"),
        })?;
        let tools = match tools_list {
            Some(p) => {
                let t = read_bounded(p, self.limits().max_file_bytes)?;
                Some(
                    serde_json::from_str::<Value>(&t).map_err(|e| ScanError::McpConfig {
                        path: crate::model::shown(p),
                        message: format!("tools/list answer is not valid JSON: {e}"),
                    })?,
                )
            }
            None => None,
        };
        let (prefix, servers) = servers_in_config(&doc).ok_or_else(|| ScanError::McpConfig {
            path: crate::model::shown(file),
            message: "no `mcpServers`, `mcp.servers` or `servers` map".into(),
        })?;
        if let Some(s) = server
            && !servers.contains_key(s)
        {
            return Err(ScanError::McpServerNotFound(s.to_string()));
        }
        let origin = file.display().to_string();
        Ok(servers
            .iter()
            .filter(|(name, _)| server.is_none_or(|s| s == name.as_str()))
            .map(|(name, def)| {
                let line = find_server_line(&text, name);
                self.scan_server_inner(name, def, &origin, prefix, line, tools.as_ref())
            })
            .collect())
    }

    /// Scans one server definition learnt elsewhere (e.g. OpenClaw's config).
    pub fn scan_mcp_server(&self, name: &str, def: &Value, origin: &str) -> ScanReport {
        self.scan_server_inner(name, def, origin, "mcpServers", 0, None)
    }

    /// Scans one server definition together with its `tools/list` answer.
    pub fn scan_mcp_server_with_tools(
        &self,
        name: &str,
        def: &Value,
        origin: &str,
        tools: Option<&Value>,
    ) -> ScanReport {
        self.scan_server_inner(name, def, origin, "mcpServers", 0, tools)
    }
}

/// Reads a config file a caller named: opened without blocking or following
/// a final symlink, and read only when its descriptor says it is a regular
/// file of at most `max` bytes (so a FIFO, socket or device is refused at once).
fn read_bounded(path: &Path, max: u64) -> Result<String, ScanError> {
    let (f, size) = crate::walk::open_regular(path, max)?;
    let mut buf = Vec::new();
    f.take(size.min(max))
        .read_to_end(&mut buf)
        .map_err(|e| ScanError::io(path, e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
