//! The checks on one server definition: its launch command (shell wrappers,
//! inline code, network tools, package runners), plaintext secrets, transport,
//! auto-approval and the descriptions the model reads, then the shared rules.

use std::borrow::Cow;
use std::time::Instant;

use defenseclaw_common::loopback::is_loopback_url_str;

use serde_json::Value;

use super::command::{
    INTERNAL_NAME, INTERPRETERS, NET_TOOLS, RUNNERS, SECRET_FLAG, SECRET_KEY_NAME, SHELLS,
    base_name, command_words, package_spec, placeholder,
};
use super::config::{collect_descriptions, tools_of, value_text};
use crate::checks;
use crate::engine::{Engine, Unit};
use crate::model::{ScanReport, Severity, TargetKind};
use crate::rules::FileType;

impl Engine {
    pub(super) fn scan_server_inner(
        &self,
        name: &str,
        def: &Value,
        origin: &str,
        prefix: &str,
        line: u32,
        tools: Option<&Value>,
    ) -> ScanReport {
        let started = Instant::now();
        let kind = TargetKind::Mcp;
        let mut report = ScanReport::new(origin, kind, name);
        let loc = |field: &str| format!("{origin}#{prefix}.{name}.{field}");
        let Some(obj) = def.as_object() else {
            report
                .notes
                .push("server definition is not a JSON object".into());
            report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            return report;
        };

        let mut command = obj.get("command").map(value_text).unwrap_or_default();
        let mut args: Vec<String> = obj
            .get("args")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(value_text).collect())
            .unwrap_or_default();
        // A whole command line in `command` is split like a shell would, roughly.
        if args.is_empty() && command.trim().contains(' ') {
            let mut parts = command.split_whitespace().map(str::to_string);
            let first = parts.next().unwrap_or_default();
            args = parts.collect();
            command = first;
        }
        let base = base_name(&command);
        let env: Vec<(String, String)> = obj
            .get("env")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), value_text(v))).collect())
            .unwrap_or_default();
        let url = ["url", "serverUrl", "httpUrl", "endpoint", "uri"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .map(str::to_string);
        let headers: Vec<(String, String)> = obj
            .get("headers")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), value_text(v))).collect())
            .unwrap_or_default();

        let mut units: Vec<Unit<'_>> = Vec::new();
        let cmdline = std::iter::once(command.clone())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        if !cmdline.trim().is_empty() {
            units.push(Unit {
                location: loc("args"),
                file_type: FileType::Shell,
                text: Cow::Owned(cmdline),
                fixed_line: Some(line),
            });
        }

        // Shell wrappers and inline interpreter code.
        let mut inline_script: Option<String> = None;
        if SHELLS.contains(&base.as_str()) {
            if let Some(i) = args.iter().position(|a| {
                matches!(
                    a.as_str(),
                    "-c" | "-lc"
                        | "-ic"
                        | "/c"
                        | "/C"
                        | "-Command"
                        | "-command"
                        | "-EncodedCommand"
                        | "-e"
                )
            }) {
                let script = args[i + 1..].join(" ");
                self.push_check(
                    &mut report.findings,
                    "mcp_shell_wrapper",
                    kind,
                    &loc("command"),
                    line,
                    &format!("{command} {} {script}", args[i]),
                    None,
                );
                inline_script = Some(script);
            }
        } else if INTERPRETERS.contains(&base.as_str())
            && let Some(i) = args.iter().position(|a| {
                matches!(
                    a.as_str(),
                    "-c" | "-e" | "-E" | "--eval" | "-p" | "--print" | "-r" | "eval"
                )
            })
        {
            let code = args.get(i + 1).cloned().unwrap_or_default();
            let ft = if base.starts_with("python") {
                FileType::Python
            } else if matches!(base.as_str(), "node" | "nodejs" | "deno" | "bun") {
                FileType::Javascript
            } else {
                FileType::Code
            };
            self.push_check(
                &mut report.findings,
                "mcp_inline_code",
                kind,
                &loc("args"),
                line,
                &format!("{command} {} {code}", args[i]),
                None,
            );
            units.push(Unit {
                location: loc("args"),
                file_type: ft,
                text: Cow::Owned(code.clone()),
                fixed_line: Some(line),
            });
            inline_script = Some(code);
        }

        // Network utilities as the server itself, or inside its inline script.
        let mut net: Vec<String> = Vec::new();
        if NET_TOOLS.contains(&base.as_str()) {
            net.push(base.clone());
        }
        if let Some(script) = &inline_script {
            for w in command_words(script) {
                if NET_TOOLS.contains(&w.as_str()) && !net.contains(&w) {
                    net.push(w);
                }
            }
        }
        if !net.is_empty() {
            self.push_check(
                &mut report.findings,
                "mcp_network_tool",
                kind,
                &loc("command"),
                line,
                &format!("{command} {}", args.join(" ")),
                Some(&format!("runs {}", net.join(", "))),
            );
        }

        // Package runners: pinning, typosquats, dependency confusion.
        let runner_args: Option<&[String]> = if RUNNERS.contains(&base.as_str()) {
            Some(&args[..])
        } else if matches!(base.as_str(), "pnpm" | "yarn" | "npm" | "uv") {
            args.iter()
                .position(|a| matches!(a.as_str(), "dlx" | "exec" | "run"))
                .map(|i| &args[i + 1..])
        } else {
            None
        };
        if let Some(rargs) = runner_args {
            let mut it = rargs.iter();
            let mut pkg: Option<String> = None;
            while let Some(a) = it.next() {
                if let Some(p) = a
                    .strip_prefix("--package=")
                    .or_else(|| a.strip_prefix("--from="))
                {
                    pkg = Some(p.to_string());
                    break;
                }
                if matches!(a.as_str(), "-p" | "--package" | "--from") {
                    pkg = it.next().cloned();
                    break;
                }
                if a == "run" && base == "pipx" {
                    continue;
                }
                if !a.starts_with('-') {
                    pkg = Some(a.clone());
                    break;
                }
            }
            if let Some(spec) = pkg {
                let runner = if RUNNERS.contains(&base.as_str()) {
                    base.as_str()
                } else {
                    "npx"
                };
                let (pkg_name, pinned) = package_spec(runner, &spec);
                if !pinned {
                    self.push_check(
                        &mut report.findings,
                        "mcp_unpinned_package",
                        kind,
                        &loc("args"),
                        line,
                        &format!("{command} {}", args.join(" ")),
                        Some(&format!(
                            "{pkg_name} is fetched at its latest version on every start"
                        )),
                    );
                }
                if let Some((part, popular)) = checks::name_typosquat(&pkg_name) {
                    self.push_check(
                        &mut report.findings,
                        "mcp_package_typosquat",
                        kind,
                        &loc("args"),
                        line,
                        &spec,
                        Some(&format!(
                            "{part:?} in {pkg_name:?} looks like a misspelling of {popular:?}"
                        )),
                    );
                }
                let registry_set = args.iter().any(|a| {
                    a.starts_with("--registry")
                        || a.starts_with("--index-url")
                        || a.starts_with("--index")
                }) || env.iter().any(|(k, _)| {
                    let k = k.to_ascii_uppercase();
                    k.contains("REGISTRY") || k.ends_with("INDEX_URL") || k == "UV_INDEX"
                });
                if !registry_set
                    && INTERNAL_NAME
                        .as_ref()
                        .is_some_and(|re| re.is_match(&pkg_name))
                {
                    self.push_check(&mut report.findings, "mcp_dependency_confusion", kind, &loc("args"), line, &spec, Some(&format!("{pkg_name} is named like a private package but is resolved from the public registry")));
                }
            }
        }

        // Plaintext secrets in env, args and headers.
        let secret_name = |k: &str| SECRET_KEY_NAME.as_ref().is_some_and(|re| re.is_match(k));
        for (k, v) in &env {
            if secret_name(k) && !placeholder(v) && v.trim().len() >= 8 {
                self.push_check(
                    &mut report.findings,
                    "mcp_plaintext_secret",
                    kind,
                    &loc(&format!("env.{k}")),
                    line,
                    &format!("{k}={v}"),
                    Some(&format!("env {k} holds a literal value")),
                );
            }
        }
        for (i, a) in args.iter().enumerate() {
            if let Some(c) = SECRET_FLAG.as_ref().and_then(|re| re.captures(a)) {
                let value = c
                    .get(4)
                    .map(|m| m.as_str().to_string())
                    .or_else(|| args.get(i + 1).cloned())
                    .unwrap_or_default();
                if !placeholder(&value) && value.len() >= 8 {
                    self.push_check(
                        &mut report.findings,
                        "mcp_plaintext_secret",
                        kind,
                        &loc("args"),
                        line,
                        &format!("{a} {value}"),
                        Some("a secret is passed on the command line"),
                    );
                }
            }
        }
        for (k, v) in &headers {
            let value = v.trim();
            let bare = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .or_else(|| value.strip_prefix("Basic "))
                .unwrap_or(value);
            if (secret_name(k)
                || k.eq_ignore_ascii_case("authorization")
                || k.eq_ignore_ascii_case("cookie"))
                && !placeholder(bare)
                && bare.len() >= 8
            {
                self.push_check(
                    &mut report.findings,
                    "mcp_plaintext_secret",
                    kind,
                    &loc(&format!("headers.{k}")),
                    line,
                    &format!("{k}: {v}"),
                    Some(&format!("header {k} holds a literal credential")),
                );
            }
        }

        // Remote URLs without TLS.
        let mut http_urls: Vec<String> = Vec::new();
        if let Some(u) = &url
            && u.to_ascii_lowercase().starts_with("http://")
            && !is_loopback_url_str(u)
        {
            http_urls.push(u.clone());
        }
        for a in &args {
            for w in a.split_whitespace() {
                let w = w.trim_matches(['"', '\'']);
                if w.to_ascii_lowercase().starts_with("http://") && !is_loopback_url_str(w) {
                    http_urls.push(w.to_string());
                }
            }
        }
        if let Some(u) = http_urls.first() {
            let field = if url.as_deref() == Some(u.as_str()) {
                "url"
            } else {
                "args"
            };
            self.push_check(
                &mut report.findings,
                "mcp_remote_http",
                kind,
                &loc(field),
                line,
                u,
                None,
            );
        }

        // Auto-approval of tool calls.
        for key in [
            "autoApprove",
            "alwaysAllow",
            "auto_approve",
            "autoapprove",
            "alwaysApprove",
            "trust",
            "dangerouslySkipPermissions",
            "approval",
            "approve",
        ] {
            let Some(v) = obj.get(key) else { continue };
            let all = match v {
                Value::Bool(b) => *b,
                Value::String(s) => {
                    s == "*"
                        || s.eq_ignore_ascii_case("all")
                        || s.eq_ignore_ascii_case("always")
                        || s.eq_ignore_ascii_case("never")
                }
                Value::Array(a) => a.iter().any(|x| x.as_str() == Some("*")),
                _ => false,
            };
            let some = matches!(v, Value::Array(a) if !a.is_empty());
            if all {
                self.push_check(
                    &mut report.findings,
                    "mcp_auto_approve_all",
                    kind,
                    &loc(key),
                    line,
                    &format!("{key}: {v}"),
                    None,
                );
            } else if some {
                self.push_check(
                    &mut report.findings,
                    "mcp_auto_approve",
                    kind,
                    &loc(key),
                    line,
                    &format!("{key}: {v}"),
                    None,
                );
            }
        }

        // Env and headers as config text (token formats, encoded values).
        if !env.is_empty() {
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            units.push(Unit {
                location: loc("env"),
                file_type: FileType::Config,
                text: Cow::Owned(text),
                fixed_line: Some(line),
            });
        }
        if url.is_some() || !headers.is_empty() {
            let mut text = url
                .clone()
                .map(|u| format!("url={u}\n"))
                .unwrap_or_default();
            for (k, v) in &headers {
                text.push_str(&format!("{k}: {v}\n"));
            }
            units.push(Unit {
                location: loc("headers"),
                file_type: FileType::Config,
                text: Cow::Owned(text),
                fixed_line: Some(line),
            });
        }
        // Descriptions the model reads: the server's and its tools'.
        let mut desc = String::new();
        for k in ["description", "instructions", "prompt"] {
            if let Some(d) = obj.get(k).and_then(Value::as_str) {
                desc.push_str(d);
                desc.push('\n');
            }
        }
        if !desc.is_empty() {
            units.push(Unit {
                location: loc("description"),
                file_type: FileType::Markdown,
                text: Cow::Owned(desc),
                fixed_line: Some(line),
            });
        }
        let mut tool_values: Vec<&Value> = obj.get("tools").map(tools_of).unwrap_or_default();
        if let Some(t) = tools {
            tool_values.extend(tools_of(t));
        }
        for t in tool_values {
            let tname = t.get("name").and_then(Value::as_str).unwrap_or("?");
            let mut text = String::new();
            collect_descriptions(t, &mut text, 0);
            if !text.is_empty() {
                units.push(Unit {
                    location: loc(&format!("tools.{tname}")),
                    file_type: FileType::Markdown,
                    text: Cow::Owned(text),
                    fixed_line: Some(line),
                });
            }
        }

        let content = self.scan_units(&units, kind);
        // An inline script that itself does something dangerous is not an
        // MCP server: escalate, naming what it does.
        if inline_script.is_some() {
            let mut cats: Vec<&str> = content
                .iter()
                .filter(|f| f.severity >= Severity::Medium && f.location.ends_with(".args"))
                .map(|f| f.category.as_str())
                .collect();
            cats.sort_unstable();
            cats.dedup();
            if !cats.is_empty() {
                let script = inline_script.clone().unwrap_or_default();
                self.push_check(
                    &mut report.findings,
                    "mcp_inline_script_danger",
                    kind,
                    &loc("args"),
                    line,
                    &script,
                    Some(&format!("inline script: {}", cats.join(", "))),
                );
            }
        }
        report.findings.extend(content);
        report.finalize();
        report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        report
    }
}
