//! The one pass over a parsed unit, in source order: assignments carry taint
//! into variables, calls and shell commands are judged as sinks, and each
//! source-to-sink path becomes a hit naming its steps.

use std::collections::BTreeMap;

use tree_sitter::Node;

use super::patterns::{
    AUTH_CONTEXT_RE, CRED_FILE_RE, DNS_CALLEE_RE, EXEC_ALWAYS_RE, EXEC_MAYBE_RE, NET_CALLEE_RE,
    PAYLOAD_CMD_RE, PERSIST_RE, SHELL_ARG_RE, SHELL_EXEC_CMD_RE, STRING_LIT_RE, WRITE_MODE_RE,
};
use super::taint::{
    DECODED, DOWNLOAD, ENCODED, ENV_DUMP, ENV_SECRET, HARVEST, STRONG_SECRET, Taint, USER_FILES,
    classify,
};
use super::unit::{CodeUnit, Lang};

/// Syntax nodes visited per parsed unit.
pub(super) const MAX_NODES: usize = 200_000;

/// Bytes of one expression looked at by the source/sink patterns: an
/// expression wrapping a whole bundle is judged on its head, so the work
/// per file stays linear in its size.
const MAX_EXPR_BYTES: usize = 4096;

/// Syntax nodes visited inside one expression.
const MAX_EXPR_NODES: usize = 511;

/// One finding of the flow analysis; `check` names the rule's check.
#[derive(Debug, Clone)]
pub(crate) struct FlowHit {
    pub check: &'static str,
    pub location: String,
    pub line: u32,
    pub snippet: String,
    pub detail: String,
}

fn short(text: &str) -> String {
    let one: Vec<&str> = text.split_whitespace().take(40).collect();
    one.join(" ").chars().take(80).collect()
}

/// `n` and the nodes inside it, depth first, at most [`MAX_EXPR_NODES`].
fn walked(n: Node<'_>) -> Vec<Node<'_>> {
    let mut cursor = n.walk();
    let mut stack = vec![n];
    let mut out = Vec::new();
    while out.len() < MAX_EXPR_NODES {
        let Some(node) = stack.pop() else {
            break;
        };
        out.push(node);
        stack.extend(node.children(&mut cursor));
    }
    out
}

pub(super) struct Ctx<'u, 's> {
    pub(super) unit: &'u CodeUnit<'u>,
    pub(super) vars: &'s mut BTreeMap<String, Taint>,
    pub(super) downloaded: &'s mut BTreeMap<String, String>,
    pub(super) hits: &'s mut Vec<FlowHit>,
    pub(super) nodes: usize,
    pub(super) file_has_download: bool,
}

impl Ctx<'_, '_> {
    fn text(&self, n: Node<'_>) -> &str {
        n.utf8_text(self.unit.text.as_bytes()).unwrap_or("")
    }

    fn line(&self, n: Node<'_>) -> u32 {
        let row = u32::try_from(n.start_position().row).unwrap_or(u32::MAX);
        self.unit.first_line.saturating_add(row)
    }

    /// Identifiers read inside `n` (variables, shell `$NAME`).
    fn identifiers(&self, n: Node<'_>, out: &mut Vec<String>) {
        for node in walked(n) {
            match node.kind() {
                "identifier" | "variable_name" | "shorthand_property_identifier" => {
                    out.push(self.text(node).to_string());
                }
                _ => {}
            }
        }
    }

    /// The taint of an expression: what it reads directly, plus its variables.
    fn taint_of(&self, n: Node<'_>) -> Taint {
        let text = head(self.text(n));
        let mut t = classify(text, self.line(n), self.unit.lang);
        let mut ids = Vec::new();
        self.identifiers(n, &mut ids);
        for id in ids {
            if let Some(v) = self.vars.get(&id) {
                t.merge(v);
            }
        }
        // Several secret-bearing values gathered into one structure.
        let structure = matches!(
            n.kind(),
            "dictionary"
                | "list"
                | "tuple"
                | "set"
                | "object"
                | "array"
                | "string"
                | "template_string"
                | "concatenation"
                | "binary_operator"
                | "binary_expression"
        );
        let cred_files = CRED_FILE_RE.count(text);
        if structure && (t.secrets.len() + cred_files >= 3 || cred_files >= 2) {
            t.kinds |= HARVEST;
            t.step(format!(
                "{} secrets gathered in one value (line {})",
                t.secrets.len() + cred_files,
                self.line(n)
            ));
        }
        t
    }

    pub(super) fn walk(&mut self, root: Node<'_>) {
        // Pre-order, iterative: statements are visited in source order.
        let mut cursor = root.walk();
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            self.nodes += 1;
            if self.nodes >= MAX_NODES {
                return;
            }
            self.visit(node);
            let children: Vec<Node<'_>> = node.children(&mut cursor).collect();
            for child in children.into_iter().rev() {
                stack.push(child);
            }
        }
    }

    fn visit(&mut self, n: Node<'_>) {
        match (self.unit.lang, n.kind()) {
            (Lang::Python, "assignment" | "augmented_assignment")
            | (Lang::JavaScript, "assignment_expression" | "augmented_assignment_expression") => {
                if let (Some(l), Some(r)) = (
                    n.child_by_field_name("left"),
                    n.child_by_field_name("right"),
                ) {
                    self.assign(l, r);
                }
            }
            (Lang::Python, "with_item") => {
                // `with open(...) as f`: f carries what the call reads.
                if let Some(v) = n.child(0)
                    && v.kind() == "as_pattern"
                    && let (Some(call), Some(alias)) = (v.child(0), v.child_by_field_name("alias"))
                {
                    self.assign(alias, call);
                }
            }
            (Lang::Python, "for_statement") | (Lang::JavaScript, "for_in_statement") => {
                if let (Some(l), Some(r)) = (
                    n.child_by_field_name("left"),
                    n.child_by_field_name("right"),
                ) {
                    self.assign(l, r);
                }
            }
            (Lang::JavaScript, "variable_declarator") => {
                if let (Some(l), Some(r)) = (
                    n.child_by_field_name("name"),
                    n.child_by_field_name("value"),
                ) {
                    self.assign(l, r);
                }
            }
            (Lang::Bash, "variable_assignment") => {
                if let (Some(l), Some(r)) = (
                    n.child_by_field_name("name"),
                    n.child_by_field_name("value"),
                ) {
                    self.assign(l, r);
                }
            }
            (Lang::Python, "call") | (Lang::JavaScript, "call_expression" | "new_expression") => {
                let callee = n
                    .child_by_field_name("function")
                    .or_else(|| n.child_by_field_name("constructor"));
                let args = n.child_by_field_name("arguments");
                if let (Some(c), Some(a)) = (callee, args) {
                    let callee = head(self.text(c)).to_string();
                    self.call(n, &callee, a);
                }
            }
            (Lang::Bash, "pipeline") => self.pipeline(n),
            (Lang::Bash, "command") => {
                // Commands in a pipeline are judged with the pipeline.
                if n.parent().is_some_and(|p| p.kind() == "pipeline") {
                    return;
                }
                self.bash_command(n, &Taint::default());
            }
            (Lang::Bash, "redirected_statement") => self.bash_redirect(n),
            _ => {}
        }
    }

    fn assign(&mut self, left: Node<'_>, right: Node<'_>) {
        let t = self.taint_of(right);
        let mut targets = Vec::new();
        if matches!(left.kind(), "identifier" | "variable_name") {
            targets.push(self.text(left).to_string());
        } else {
            self.identifiers(left, &mut targets);
        }
        // A path literal assigned to a name: remember it, to follow `open(name)`.
        for target in targets {
            if t.kinds == 0 && t.steps.is_empty() {
                // A clean assignment clears an earlier taint (re-binding).
                self.vars.remove(&target);
            } else {
                self.vars.insert(target, t.clone());
            }
        }
    }

    fn call(&mut self, n: Node<'_>, callee: &str, args: Node<'_>) {
        let line = self.line(n);
        let args_text = head(self.text(args)).to_string();
        let mut taint = self.taint_of(args);
        // Python: `x.write(data)` inside `with open(PATH) as x` is handled
        // through the write-mode open; here the call's own receiver matters.
        if let Some((receiver, _)) = callee.rsplit_once('.')
            && let Some(v) = self.vars.get(receiver)
        {
            taint.merge(&v.clone());
        }
        let net = NET_CALLEE_RE.is_match(callee);
        let dns = DNS_CALLEE_RE.is_match(callee);
        let exec = EXEC_ALWAYS_RE.is_match(callee)
            || (EXEC_MAYBE_RE.is_match(callee) && SHELL_ARG_RE.is_match(&args_text));
        let runs_file = EXEC_MAYBE_RE.is_match(callee) || EXEC_ALWAYS_RE.is_match(callee);
        // Writes: remember downloaded paths and persistence writes.
        let is_open = matches!(callee, "open" | "io.open")
            || callee.ends_with("write_text")
            || callee.ends_with("write_bytes")
            || callee.ends_with("urlretrieve")
            || callee.ends_with("writeFileSync")
            || callee.ends_with("writeFile")
            || callee.ends_with("appendFileSync")
            || callee.ends_with("appendFile")
            || callee.ends_with("createWriteStream");
        if is_open
            && (WRITE_MODE_RE.is_match(&args_text)
                || callee.ends_with("urlretrieve")
                || !callee.ends_with("open"))
        {
            let target = callee.ends_with("write_text") || callee.ends_with("write_bytes");
            let path_text = if target { callee } else { args_text.as_str() };
            if self.file_has_download || callee.ends_with("urlretrieve") {
                for c in STRING_LIT_RE.captures(&args_text) {
                    let p = &c[1];
                    if p.contains('/') || p.contains('.') {
                        self.downloaded
                            .insert(p.to_string(), format!("{} line {line}", self.unit.location));
                    }
                }
            }
            if PERSIST_RE.is_match(path_text) {
                self.persistence(n, line, &taint, path_text);
            }
        }
        if exec || runs_file {
            let launched = self
                .downloaded
                .iter()
                .find(|(p, _)| args_text.contains(p.as_str()))
                .map(|(p, w)| (p.clone(), w.clone()));
            if let Some((path, wher)) = launched {
                self.hit("download_exec", n, format!(
                    "file {path:?} written from a download ({wher}) is run by {callee} (line {line})"
                ));
                return;
            }
        }
        if exec {
            self.judge_exec(n, callee, &taint);
        }
        if net || dns {
            let body = AUTH_CONTEXT_RE.remove(&args_text);
            // Taint that only reaches auth headers is how APIs are called.
            let mut body_taint = classify(&body, line, self.unit.lang);
            let mut ids = Vec::new();
            self.identifiers(args, &mut ids);
            let ident_re = |id: &str| body.contains(id);
            for id in ids {
                if ident_re(&id)
                    && let Some(v) = self.vars.get(&id)
                {
                    body_taint.merge(&v.clone());
                }
            }
            if taint.kinds & HARVEST != 0 {
                body_taint.merge(&taint);
            }
            self.judge_send(n, callee, &body_taint, dns);
        }
    }

    fn judge_exec(&mut self, n: Node<'_>, sink: &str, t: &Taint) {
        let line = self.line(n);
        if t.kinds & DOWNLOAD != 0 {
            self.hit(
                "download_exec",
                n,
                format!("{} → executed by {sink} (line {line})", t.steps.join(" → ")),
            );
        } else if t.kinds & DECODED != 0 {
            self.hit(
                "staged_payload",
                n,
                format!("{} → executed by {sink} (line {line})", t.steps.join(" → ")),
            );
        }
    }

    fn judge_send(&mut self, n: Node<'_>, sink: &str, t: &Taint, dns: bool) {
        let line = self.line(n);
        let what = if dns { "DNS lookup" } else { "network call" };
        let path = || format!("{} → {what} {sink} (line {line})", t.steps.join(" → "));
        if t.kinds & STRONG_SECRET != 0
            || (t.kinds & ENV_SECRET != 0
                && (t.kinds & ENCODED != 0 || t.secrets.len() >= 2 || dns))
        {
            self.hit("secret_exfil", n, path());
        } else if t.kinds & (ENV_SECRET | USER_FILES) != 0 {
            self.hit("secret_to_network", n, path());
        }
    }

    fn persistence(&mut self, n: Node<'_>, line: u32, t: &Taint, dest: &str) {
        let dest = short(&PERSIST_RE.first(dest));
        let payload = t.kinds & (DOWNLOAD | DECODED | STRONG_SECRET) != 0
            || PAYLOAD_CMD_RE.is_match(head(self.text(n)));
        let check = if payload {
            "persistence_payload"
        } else {
            "persistence_write"
        };
        let from = if t.steps.is_empty() {
            String::new()
        } else {
            format!("{} → ", t.steps.join(" → "))
        };
        self.hit(
            check,
            n,
            format!("{from}write to persistence location {dest:?} (line {line})"),
        );
    }

    /// `a | b | c`: taint flows through the pipe from stage to stage.
    fn pipeline(&mut self, n: Node<'_>) {
        let mut carried = Taint::default();
        let mut cursor = n.walk();
        let stages: Vec<Node<'_>> = n.named_children(&mut cursor).collect();
        for stage in stages {
            if stage.kind() == "command" {
                let t = self.bash_command(stage, &carried);
                carried.merge(&t);
            } else {
                let t = self.taint_of(stage);
                carried.merge(&t);
            }
        }
    }

    /// Judges one shell command given what flows into its standard input;
    /// returns what it outputs.
    fn bash_command(&mut self, n: Node<'_>, stdin: &Taint) -> Taint {
        let line = self.line(n);
        let name = n
            .child_by_field_name("name")
            .map(|c| self.text(c).trim_matches(['"', '\'']).to_string())
            .unwrap_or_default();
        let text = head(self.text(n)).to_string();
        let mut own = self.taint_of(n);
        // `env` / `printenv` alone print the whole environment.
        if matches!(name.as_str(), "env" | "printenv") && text.split_whitespace().count() == 1 {
            own.kinds |= ENV_DUMP;
            own.step(format!("whole environment (line {line})"));
        }
        let base = name.rsplit('/').next().unwrap_or("");
        // A downloaded file, later run.
        if matches!(base, "curl" | "wget")
            && let Some(path) = output_path(&text)
        {
            self.downloaded
                .insert(path, format!("{} line {line}", self.unit.location));
        }
        let mut input = stdin.clone();
        input.merge(&own);
        let words: Vec<&str> = text.split_whitespace().collect();
        let first_arg = words.get(1).copied().unwrap_or("");
        let interpreter =
            SHELL_EXEC_CMD_RE.is_match(&name) && !matches!(base, "eval" | "source" | ".");
        // An interpreter runs its standard input when given no script:
        // `| sh`, `| bash -s`, `| python3 -`; not `| python -m json.tool`.
        let runs_stdin = interpreter
            && (first_arg.is_empty()
                || first_arg == "-"
                || (first_arg.starts_with('-')
                    && !matches!(
                        first_arg,
                        "-m" | "-c" | "-e" | "-p" | "-E" | "-V" | "-h" | "--version" | "--help"
                    )));
        // What a `-c` / `eval` / `source` runs: its substitutions and variables.
        let inline = (interpreter && matches!(first_arg, "-c" | "-e"))
            || matches!(base, "eval" | "source" | ".") && words.len() > 1;
        let launched = self
            .downloaded
            .iter()
            .find(|(p, _)| {
                name == **p
                    || (interpreter || base == "source" || base == ".")
                        && words
                            .iter()
                            .skip(1)
                            .any(|w| w.trim_matches(['"', '\'']) == p.as_str())
            })
            .map(|(p, w)| (p.clone(), w.clone()));
        if let Some((path, wher)) = launched {
            self.hit(
                "download_exec",
                n,
                format!("file {path:?} written from a download ({wher}) is run (line {line})"),
            );
        } else if runs_stdin && stdin.kinds != 0 {
            self.judge_exec(n, &name, stdin);
        } else if inline {
            let t = self.substitutions(n);
            self.judge_exec(n, &name, &t);
        }
        if NET_CALLEE_RE.is_match(&name) || DNS_CALLEE_RE.is_match(&name) {
            let body = AUTH_CONTEXT_RE.remove(&text);
            let mut t = classify(&body, line, Lang::Bash);
            t.kinds &= !DOWNLOAD;
            // Variables reached the body only if named outside the auth parts.
            for (id, v) in self.vars.iter() {
                if body.contains(&format!("${id}")) || body.contains(&format!("${{{id}}}")) {
                    t.merge(v);
                }
            }
            t.merge(stdin);
            let dns = DNS_CALLEE_RE.is_match(&name);
            self.judge_send(n, &name, &t, dns);
        }
        if name == "crontab" && stdin.kinds | own.kinds != 0 {
            let t = input.clone();
            self.persistence(n, line, &t, "crontab");
        }
        input
    }

    /// Taint of the command substitutions and variables inside `n`.
    fn substitutions(&self, n: Node<'_>) -> Taint {
        let mut t = Taint::default();
        for node in walked(n) {
            match node.kind() {
                "command_substitution" | "process_substitution" => {
                    t.merge(&classify(
                        head(self.text(node)),
                        self.line(node),
                        Lang::Bash,
                    ));
                }
                "variable_name" => {
                    if let Some(v) = self.vars.get(self.text(node)) {
                        t.merge(v);
                    }
                }
                _ => {}
            }
        }
        t
    }

    fn bash_redirect(&mut self, n: Node<'_>) {
        let mut cursor = n.walk();
        let children: Vec<Node<'_>> = n.named_children(&mut cursor).collect();
        let Some(body) = children.first().copied() else {
            return;
        };
        for r in children.iter().skip(1) {
            if r.kind() != "file_redirect" {
                continue;
            }
            let dest = r
                .child_by_field_name("destination")
                .map(|d| self.text(d).trim_matches(['"', '\'']).to_string())
                .unwrap_or_default();
            let body_text = head(self.text(body)).to_string();
            if (body_text.starts_with("curl") || body_text.starts_with("wget")) && !dest.is_empty()
            {
                self.downloaded.insert(
                    dest.clone(),
                    format!("{} line {}", self.unit.location, self.line(n)),
                );
            }
            let op = self.text(*r);
            if PERSIST_RE.is_match(&dest) && (op.starts_with('>') || op.starts_with("&>")) {
                let t = self.taint_of(body);
                self.persistence(n, self.line(n), &t, &dest);
            }
        }
    }

    fn hit(&mut self, check: &'static str, n: Node<'_>, detail: String) {
        let line = self.line(n);
        if self
            .hits
            .iter()
            .any(|h| h.check == check && h.line == line && h.location == self.unit.location)
        {
            return;
        }
        self.hits.push(FlowHit {
            check,
            location: self.unit.location.to_string(),
            line,
            // A pipeline stage is shown with its whole pipeline (`curl … | bash`).
            snippet: short(head(self.text(match n.parent() {
                Some(p) if p.kind() == "pipeline" => p,
                _ => n,
            }))),
            detail,
        });
    }
}

/// At most `MAX_EXPR_BYTES` of `text`, cut at a character boundary.
fn head(text: &str) -> &str {
    if text.len() <= MAX_EXPR_BYTES {
        return text;
    }
    let mut end = MAX_EXPR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The file a `curl`/`wget` command writes (`-o F`, `--output F`, `-O F` for wget).
fn output_path(cmd: &str) -> Option<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let wget = words.first().is_some_and(|w| w.ends_with("wget"));
    for (i, w) in words.iter().enumerate() {
        let flag =
            *w == "-o" || *w == "--output" || (wget && (*w == "-O" || *w == "--output-document"));
        if flag && let Some(p) = words.get(i + 1) {
            let p = p.trim_matches(['"', '\'']);
            if p != "-" && p != "/dev/null" {
                return Some(p.to_string());
            }
        }
        if let Some(p) = w
            .strip_prefix("--output=")
            .or_else(|| w.strip_prefix("--output-document="))
        {
            return Some(p.trim_matches(['"', '\'']).to_string());
        }
    }
    None
}
