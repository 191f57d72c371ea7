//! What the daemon scans of OpenClaw without running anything: the skills
//! `skills.status` reports (handed to the host as [`ReportedSkills`]) and the
//! MCP tool descriptions its tool catalog exposes (`tools.catalog` with
//! plugins, `tools.effective` of the main session; `source: "mcp"` entries
//! with their `mcpServer`), handed over as
//! [`ReportedTool`]s. No MCP server is started for it.

use serde_json::{Value, json};

use super::rpc::Rpc;
use crate::openclaw::engine::Engine;
use crate::openclaw::host::{Host, ReportedSkill, ReportedSkills, ReportedTool};

/// Skills read from one answer at most; the rest are not scanned this round.
const MAX_SKILLS: usize = 4096;
/// Tools read from one catalog at most.
const MAX_TOOLS: usize = 4096;
/// Bytes of one tool description kept.
const MAX_DESCRIPTION: usize = 16 * 1024;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A `skills.status` answer as the host sees it.
pub(super) fn reported_skills(v: &Value) -> ReportedSkills {
    let opt = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    ReportedSkills {
        workspace_dir: opt("workspaceDir"),
        managed_skills_dir: opt("managedSkillsDir"),
        skills: v["skills"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(MAX_SKILLS)
                    .filter_map(|s| {
                        let name = s["name"].as_str()?.to_owned();
                        Some(ReportedSkill {
                            key: s["skillKey"].as_str().unwrap_or(&name).to_owned(),
                            base_dir: text(&s["baseDir"]),
                            source: text(&s["source"]),
                            disabled: s["disabled"].as_bool().unwrap_or(false),
                            name,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_DESCRIPTION {
        let mut end = MAX_DESCRIPTION;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// MCP (and plugin) tools of a `tools.catalog` or `tools.effective` answer.
pub(super) fn reported_tools(v: &Value, out: &mut Vec<ReportedTool>) {
    let Some(groups) = v["groups"].as_array() else {
        return;
    };
    for tool in groups
        .iter()
        .filter_map(|g| g["tools"].as_array())
        .flatten()
    {
        if out.len() >= MAX_TOOLS {
            return;
        }
        let source = tool["source"].as_str().unwrap_or_default();
        // MCP tools only (named by their server); core and plugin tools are
        // OpenClaw's own code, not an MCP server's description.
        let server = (source == "mcp")
            .then(|| tool["mcpServer"].as_str())
            .flatten();
        let Some(server) = server else { continue };
        let description = ["rawDescription", "fullDescription", "description"]
            .iter()
            .find_map(|k| tool[*k].as_str().filter(|s| !s.is_empty()))
            .unwrap_or_default();
        let name = tool["mcpToolName"]
            .as_str()
            .or(tool["id"].as_str())
            .unwrap_or_default();
        let entry = ReportedTool {
            server: server.to_owned(),
            name: name.to_owned(),
            description: clip(description.to_owned()),
        };
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
}

/// Reads the tool catalog and hands its MCP/plugin tools to the host.
pub(super) async fn refresh_tools<H: Host>(engine: &Engine<H>, rpc: &Rpc) {
    if !engine.host.wants_tool_catalog() {
        return;
    }
    let mut tools = Vec::new();
    match rpc
        .call("tools.catalog", json!({"includePlugins": true}))
        .await
    {
        Ok(v) => reported_tools(&v, &mut tools),
        Err(e) => tracing::warn!(error = %e, "openclaw: tools.catalog failed"),
    }
    // MCP tools appear in a session's effective tools once OpenClaw has them.
    match rpc
        .call("tools.effective", json!({"sessionKey": "agent:main:main"}))
        .await
    {
        Ok(v) => reported_tools(&v, &mut tools),
        Err(e) => tracing::debug!(error = %e, "openclaw: tools.effective failed"),
    }
    engine.host.tools_reported(tools);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skills_status_and_catalog_are_read() {
        let v = json!({"workspaceDir": "/w", "managedSkillsDir": "", "skills": [
            {"name": "a", "skillKey": "ka", "baseDir": "/w/skills/a", "source": "openclaw-workspace"},
            {"name": "b", "disabled": true},
            {"nameless": true}
        ]});
        let r = reported_skills(&v);
        assert_eq!(r.workspace_dir.as_deref(), Some("/w"));
        assert_eq!(r.managed_skills_dir, None);
        assert_eq!(r.skills.len(), 2);
        assert_eq!(r.skills[0].key, "ka");
        assert!(r.skills[1].disabled && r.skills[1].base_dir.is_empty());

        let cat = json!({"groups": [
            {"source": "core", "tools": [{"id": "exec", "source": "core", "description": "x"}]},
            {"source": "mcp", "tools": [{"id": "srv__t", "source": "mcp", "mcpServer": "srv", "mcpToolName": "t", "rawDescription": "Reads files"}]},
            {"source": "plugin", "tools": [{"id": "p", "source": "plugin", "pluginId": "pl", "fullDescription": "Plugs"}]}
        ]});
        let mut tools = Vec::new();
        reported_tools(&cat, &mut tools);
        reported_tools(&cat, &mut tools);
        assert_eq!(
            tools.len(),
            1,
            "core and plugin tools skipped, duplicates once"
        );
        assert_eq!(tools[0].server, "srv");
        assert_eq!(tools[0].name, "t");
        assert_eq!(tools[0].description, "Reads files");
    }
}
