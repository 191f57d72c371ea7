//! Language-aware analysis of code: scripts and the fenced code blocks of
//! Markdown are parsed with tree-sitter (Python, JavaScript/TypeScript,
//! Bash), then one pass over assignments and calls, in source order, follows
//! values from sources (secrets, credential files, downloads, the user's
//! files) through transformations (encoding, decoding, string building) to
//! sinks (network, DNS, execution, persistence locations).
//!
//! The taint is deliberately simple (a variable is tainted by what its
//! assigned expression reads; a call is a sink when its callee is one and an
//! argument carries taint) so it stays fast and explainable: each finding
//! names the source, the steps and the sink, with lines. Variables are shared
//! across the code blocks of one Markdown file; downloaded file paths across
//! the whole skill. A file too large to parse, or a parse that runs out of
//! time, is left to the line rules with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use tree_sitter::{Node, ParseOptions, Parser};

use crate::rules::FileType;

/// Larger files (or code blocks) are not parsed; line rules still run.
pub(crate) const MAX_PARSE_BYTES: usize = 512 << 10;
/// Wall-clock budget of one parse.
const PARSE_BUDGET: Duration = Duration::from_millis(250);
/// Syntax nodes visited per parsed unit.
const MAX_NODES: usize = 200_000;
/// Bytes of one expression looked at by the source/sink patterns: an
/// expression wrapping a whole bundle is judged on its head, so the work
/// per file stays linear in its size.
const MAX_EXPR_BYTES: usize = 4096;
/// Findings per check per file.
const MAX_HITS_PER_CHECK: usize = 3;
/// Syntax nodes visited inside one expression.
const MAX_EXPR_NODES: usize = 511;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Python,
    JavaScript,
    Bash,
}

impl Lang {
    fn of_file(t: FileType) -> Option<Lang> {
        match t {
            FileType::Python => Some(Lang::Python),
            FileType::Javascript => Some(Lang::JavaScript),
            FileType::Shell => Some(Lang::Bash),
            _ => None,
        }
    }

    fn of_fence(tag: &str) -> Option<Lang> {
        let tag = tag
            .trim()
            .trim_start_matches('{')
            .split([' ', ',', '}'])
            .next()
            .unwrap_or("")
            .trim_start_matches('.')
            .to_ascii_lowercase();
        match tag.as_str() {
            "python" | "py" | "python3" | "ipython" => Some(Lang::Python),
            "js" | "javascript" | "node" | "nodejs" | "ts" | "typescript" | "mjs" | "jsx"
            | "tsx" => Some(Lang::JavaScript),
            "bash" | "sh" | "shell" | "zsh" | "console" | "shell-session" | "terminal" => {
                Some(Lang::Bash)
            }
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lang::Python => "Python",
            Lang::JavaScript => "JavaScript",
            Lang::Bash => "Bash",
        }
    }
}

/// One finding of the flow analysis; `check` names the rule's check.
#[derive(Debug, Clone)]
pub(crate) struct FlowHit {
    pub check: &'static str,
    pub location: String,
    pub line: u32,
    pub snippet: String,
    pub detail: String,
}

#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub hits: Vec<FlowHit>,
    pub notes: Vec<String>,
}

// What a value carries.
const CRED_FILE: u16 = 1;
const ENV_DUMP: u16 = 1 << 1;
const ENV_SECRET: u16 = 1 << 2;
const HISTORY: u16 = 1 << 3;
const USER_FILES: u16 = 1 << 4;
const DOWNLOAD: u16 = 1 << 5;
const DECODED: u16 = 1 << 6;
const ENCODED: u16 = 1 << 7;
const HARVEST: u16 = 1 << 8;
/// Sources whose arrival at a network sink is exfiltration on its own.
const STRONG_SECRET: u16 = CRED_FILE | ENV_DUMP | HISTORY | HARVEST;

#[derive(Debug, Clone, Default)]
struct Taint {
    kinds: u16,
    /// Human-readable steps with lines, source first.
    steps: Vec<String>,
    /// Names of secret environment variables that reached this value.
    secrets: BTreeSet<String>,
}

impl Taint {
    fn merge(&mut self, other: &Taint) {
        self.kinds |= other.kinds;
        for s in &other.steps {
            if !self.steps.contains(s) && self.steps.len() < 8 {
                self.steps.push(s.clone());
            }
        }
        self.secrets.extend(other.secrets.iter().cloned());
    }

    fn step(&mut self, s: String) {
        if !self.steps.contains(&s) && self.steps.len() < 8 {
            self.steps.push(s);
        }
    }
}

/// A pattern of this file, compiled on first use (checked by a unit test).
struct Pat(LazyLock<Option<Regex>>);

impl Pat {
    fn get(&self) -> Option<&Regex> {
        self.0.as_ref()
    }

    fn is_match(&self, text: &str) -> bool {
        self.get().is_some_and(|r| r.is_match(text))
    }

    fn count(&self, text: &str) -> usize {
        self.get().map_or(0, |r| r.find_iter(text).count())
    }

    fn first(&self, text: &str) -> String {
        self.get()
            .and_then(|r| r.find(text))
            .map(|m| m.as_str().chars().take(40).collect())
            .unwrap_or_default()
    }

    fn captures<'t>(&self, text: &'t str) -> Vec<regex::Captures<'t>> {
        self.get()
            .map(|r| r.captures_iter(text).take(64).collect())
            .unwrap_or_default()
    }

    fn remove(&self, text: &str) -> String {
        match self.get() {
            Some(r) => r.replace_all(text, "").into_owned(),
            None => text.to_string(),
        }
    }
}

macro_rules! re {
    ($name:ident, $src:expr) => {
        static $name: Pat = Pat(LazyLock::new(|| Regex::new($src).ok()));
    };
}

re!(
    CRED_FILE_RE,
    r"(?i)\.ssh/|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.aws/(?:credentials|config)|\.netrc\b|\.pgpass\b|\.kube/config|\.docker/config\.json|\.git-credentials|\.pypirc|\.gnupg\b|/etc/shadow|\.config/gcloud|application_default_credentials|\.azure/|\bkeychain\b|find-(?:generic|internet)-password|login data|\bcookies(?:\.sqlite)?['\x22/]|local state|\bkey4\.db|logins\.json|wallet\.dat|\.ethereum/keystore|\.solana/id\.json|\.config/solana|\.electrum"
);
re!(
    HISTORY_RE,
    r"(?i)\.(?:bash|zsh|sh|python|node_repl|psql|mysql)_?history\b|\bHISTFILE\b"
);
re!(
    ENV_DUMP_RE,
    r"(?i)\bdict\(\s*os\.environ\s*\)|os\.environ\.(?:items|copy|keys|values)\(|\bos\.environ\s*[,)}\]]|\bos\.environ\s*$|in\s+os\.environ\b|json\.dumps\(\s*os\.environ|\bprocess\.env\s*[,)}\];]|\bprocess\.env\s*$|JSON\.stringify\(\s*process\.env|Object\.(?:entries|keys|values|assign)\([^)]*process\.env\s*\)|\.\.\.process\.env|\$\(\s*(?:env|printenv|set)\s*\)|`(?:env|printenv)`"
);
re!(
    ENV_SECRET_RE,
    r#"(?:os\.(?:environ\.get|getenv)\(\s*|os\.environ\[\s*|process\.env\[\s*)['"]([A-Za-z0-9_]+)['"]|process\.env\.([A-Za-z0-9_]+)|\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"#
);
re!(
    SECRET_NAME_RE,
    r"(?i)KEY|TOKEN|SECRET|PASS(?:WORD|WD)?\b|PASSWORD|PWD$|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE"
);
re!(
    USER_FILES_RE,
    r#"(?i)expanduser\(\s*['"]~['"]\s*\)|Path\.home\(\)\s*[,)]|os\.walk\(\s*(?:os\.path\.expanduser|Path\.home|['"]~|['"]/home|['"]/Users)|~/(?:Documents|Desktop|Downloads|Pictures)\b|\$HOME/(?:Documents|Desktop|Downloads|Pictures)\b|os\.homedir\(\)\s*[,)]|\bclipboard\b|pyperclip\.paste"#
);
re!(
    DOWNLOAD_RE,
    r"(?i)\brequests\.get\(|\bhttpx\.get\(|\burlopen\(|\burlretrieve\(|\burllib\.request\b|\bfetch\(\s*['\x22`h]|\baxios\.get\(|\bhttps?\.get\(|\bcurl\b|\bwget\b|Invoke-WebRequest|\biwr\b"
);
re!(
    DECODE_RE,
    r"(?i)b(?:16|32|64|85)decode|a85decode|\bunhexlify|fromhex\(|codecs\.decode|(?:zlib|gzip|lzma|bz2)\.decompress|marshal\.loads|\batob\(|Buffer\.from\([^)]*['\x22](?:base64|hex)['\x22]|base64\s+(?:-d|--decode|-D)\b|xxd\s+-r|openssl\s+(?:enc\s+)?[^|;]*-d\b|\[::-1\]"
);
re!(
    ENCODE_RE,
    r"(?i)b(?:16|32|64|85)encode|\bhexlify|\.hex\(\)|\bbtoa\(|toString\(\s*['\x22](?:base64|hex)['\x22]|(?:zlib|gzip|lzma|bz2)\.compress|\bfernet\b|\bencrypt\(|\bxxd\s+-p|\bbase64\b|\bgzip\b|\bopenssl\s+enc\b"
);
re!(
    NET_CALLEE_RE,
    r"(?i)^(?:requests|httpx|aiohttp|urllib3|session|sess|s|client|http|api)\.(?:post|put|patch|get|request)$|(?:^|\.)urlopen$|(?:^|\.)Request$|\.(?:post|put|patch)$|(?:^|\.)(?:send|sendall|sendto|sendmail|send_message|storbinary)$|^fetch$|^axios(?:\.(?:post|put|get|request|patch))?$|^https?\.request$|^(?:curl|wget|nc|ncat|netcat|socat|telnet|scp|rsync|ftp|sftp|Invoke-WebRequest|Invoke-RestMethod)$"
);
re!(
    DNS_CALLEE_RE,
    r"(?i)(?:^|\.)(?:gethostbyname|gethostbyname_ex|getaddrinfo)$|^dns\.(?:lookup|resolve\w*)$|resolver\.(?:resolve|query)$|^(?:nslookup|dig|host|drill)$"
);
re!(
    EXEC_ALWAYS_RE,
    r"^(?:eval|exec|Function|execSync|os\.system|os\.popen|os\.exec\w*|subprocess\.getoutput|subprocess\.getstatusoutput|commands\.getoutput|child_process\.exec|child_process\.execSync|cp\.exec|cp\.execSync|vm\.runIn\w*|new Function)$"
);
re!(
    EXEC_MAYBE_RE,
    r"^(?:subprocess\.(?:run|call|Popen|check_output|check_call)|child_process\.(?:spawn|spawnSync|execFile|execFileSync)|spawn|spawnSync|execFile|pty\.spawn|asyncio\.create_subprocess_\w+)$"
);
re!(
    SHELL_ARG_RE,
    r#"(?i)shell\s*=\s*True|shell\s*:\s*true|['"](?:/bin/)?(?:ba|z|da)?sh['"]\s*,\s*['"]-c['"]|['"]python3?['"]\s*,\s*['"]-c['"]|create_subprocess_shell"#
);
re!(
    SHELL_EXEC_CMD_RE,
    r"^(?:/bin/|/usr/bin/)?(?:sh|bash|zsh|dash|ksh|eval|source|\.|python|python3|perl|ruby|node|php|iex|Invoke-Expression)$"
);
re!(
    PERSIST_RE,
    r"(?i)\.(?:bashrc|bash_profile|bash_login|zshrc|zprofile|zshenv|profile)\b|/etc/(?:profile|bash\.bashrc|rc\.local|cron|systemd)|\bcrontab\b|/var/spool/cron|\.config/autostart|LaunchAgents|LaunchDaemons|\.git/hooks/|\.github/workflows/|\.gitlab-ci\.yml|\.husky/|authorized_keys|\.claude/|\bCLAUDE\.md\b|\bAGENTS\.md\b|\.openclaw/|\.cursor/|\.mcp\.json|\.vscode/tasks\.json|systemd/user"
);
re!(
    AUTH_CONTEXT_RE,
    r#"(?i)['"]?\b(?:headers|auth|cookies|api_key|apikey|api-key|key|token|bearer_token|access_token)['"]?\s*[=:]\s*(?:\{[^}]*\}|\([^)]*\)|[\w.\[\]'"]+)|['"]?(?:authorization|x-api-key|api-key|x-auth-token)['"]?\s*:\s*[^,}]*|-H\s+['"][^'"]*['"]|--header\s+['"][^'"]*['"]|-u\s+\S+|--user\s+\S+"#
);
re!(
    WRITE_MODE_RE,
    r#"(?i)['"](?:w|a|wb|ab|w\+|a\+)['"]|mode\s*=\s*['"][wa]|\.write_(?:text|bytes)\(|appendFile|writeFile|>>?"#
);
re!(
    PAYLOAD_CMD_RE,
    r"(?i)\b(?:curl|wget|nc|ncat|base64|python3?\s+-c|bash\s+-i)\b|/dev/tcp"
);
re!(STRING_LIT_RE, r#"['"]([^'"\s]{2,200})['"]"#);

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

/// What `text` reads directly (no variables): source kinds and secret names.
fn classify(text: &str, line: u32, lang: Lang) -> Taint {
    let mut t = Taint::default();
    if CRED_FILE_RE.is_match(text) {
        t.kinds |= CRED_FILE;
        t.step(format!(
            "credential store {:?} (line {line})",
            CRED_FILE_RE.first(text)
        ));
    }
    if HISTORY_RE.is_match(text) {
        t.kinds |= HISTORY;
        t.step(format!("shell history (line {line})"));
    }
    if ENV_DUMP_RE.is_match(text) {
        t.kinds |= ENV_DUMP;
        t.step(format!("whole environment (line {line})"));
    }
    for c in ENV_SECRET_RE.captures(text) {
        let name = c.get(1).or_else(|| c.get(2)).or_else(|| c.get(3));
        let Some(name) = name.map(|m| m.as_str()) else {
            continue;
        };
        // `$NAME` counts only in shell, where it is how the environment is read.
        let bash_form = c.get(3).is_some();
        if bash_form && lang != Lang::Bash {
            continue;
        }
        if SECRET_NAME_RE.is_match(name) && t.secrets.len() < 16 {
            t.kinds |= ENV_SECRET;
            if t.secrets.insert(name.to_string()) {
                t.step(format!("secret variable {name} (line {line})"));
            }
        }
    }
    if USER_FILES_RE.is_match(text) {
        t.kinds |= USER_FILES;
        t.step(format!("user files (line {line})"));
    }
    if DOWNLOAD_RE.is_match(text) {
        t.kinds |= DOWNLOAD;
        t.step(format!("download (line {line})"));
    }
    if DECODE_RE.is_match(text) {
        t.kinds |= DECODED;
        t.step(format!("decode (line {line})"));
    }
    if ENCODE_RE.is_match(text) && !DECODE_RE.is_match(text) {
        t.kinds |= ENCODED;
        t.step(format!("encode (line {line})"));
    }
    t
}

/// One parsed piece of code with where its lines start.
struct CodeUnit<'a> {
    location: &'a str,
    lang: Lang,
    text: &'a str,
    first_line: u32,
    /// Units with the same scope share variables (blocks of one Markdown file).
    scope: usize,
}

/// Fenced code blocks of a Markdown text: (language, body, first line of body).
fn fenced_blocks(text: &str) -> Vec<(Lang, &str, u32)> {
    let mut out = Vec::new();
    // (language, body start offset, body first line, fence character)
    let mut open: Option<(Option<Lang>, usize, u32, char)> = None;
    let mut offset = 0usize;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let trimmed = raw.trim();
        let fence = ['`', '~']
            .into_iter()
            .find(|c| trimmed.starts_with(&c.to_string().repeat(3)));
        match (open, fence) {
            (None, Some(c)) => {
                let tag = trimmed.trim_start_matches(c);
                open = Some((
                    Lang::of_fence(tag),
                    offset + raw.len(),
                    line_no.saturating_add(1),
                    c,
                ));
            }
            (Some((lang, start, first, c)), Some(g))
                if g == c && trimmed.chars().all(|x| x == c) =>
            {
                if let Some(lang) = lang {
                    out.push((lang, &text[start..offset], first));
                }
                open = None;
            }
            _ => {}
        }
        offset += raw.len();
    }
    // A block left open runs to the end of the file.
    if let Some((Some(lang), start, first, _)) = open {
        out.push((lang, &text[start..], first));
    }
    out
}

/// Runs the flow analysis over the files of one skill (or one text).
pub(crate) fn analyse(files: &[(&str, FileType, &str)]) -> Analysis {
    let mut units = Vec::new();
    for (scope, (location, ft, text)) in files.iter().enumerate() {
        if let Some(lang) = Lang::of_file(*ft) {
            units.push(CodeUnit {
                location,
                lang,
                text,
                first_line: 1,
                scope,
            });
        } else if *ft == FileType::Markdown {
            for (lang, body, first) in fenced_blocks(text) {
                units.push(CodeUnit {
                    location,
                    lang,
                    text: body,
                    first_line: first,
                    scope,
                });
            }
        }
    }
    let mut analysis = Analysis::default();
    let mut state = SkillState::default();
    for unit in &units {
        let vars = state.scopes.entry(unit.scope).or_default();
        let mut vars = std::mem::take(vars);
        match parse_unit(unit) {
            Ok(tree) => {
                let mut ctx = Ctx {
                    unit,
                    vars: &mut vars,
                    downloaded: &mut state.downloaded,
                    hits: &mut analysis.hits,
                    nodes: 0,
                    file_has_download: DOWNLOAD_RE.is_match(unit.text),
                };
                ctx.walk(tree.root_node());
                if ctx.nodes >= MAX_NODES {
                    analysis.notes.push(format!(
                        "{}: code analysis stopped after {MAX_NODES} syntax nodes",
                        unit.location
                    ));
                }
            }
            Err(why) => analysis.notes.push(format!(
                "{} (line {}): {} code not analysed ({why}); line rules only",
                unit.location,
                unit.first_line,
                unit.lang.name()
            )),
        }
        state.scopes.insert(unit.scope, vars);
    }
    // At most a few findings per check and file, strongest evidence first.
    let mut seen: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    analysis.hits.retain(|h| {
        let n = seen.entry((h.check, h.location.clone())).or_default();
        *n += 1;
        *n <= MAX_HITS_PER_CHECK
    });
    analysis
}

#[derive(Default)]
struct SkillState {
    scopes: BTreeMap<usize, BTreeMap<String, Taint>>,
    /// Paths written by a download anywhere in the skill, with where.
    downloaded: BTreeMap<String, String>,
}

fn parse_unit(unit: &CodeUnit<'_>) -> Result<tree_sitter::Tree, String> {
    if unit.text.len() > MAX_PARSE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_PARSE_BYTES}-byte parse limit",
            unit.text.len()
        ));
    }
    let language: tree_sitter::Language = match unit.lang {
        Lang::Python => tree_sitter_python::LANGUAGE.into(),
        Lang::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
        Lang::Bash => tree_sitter_bash::LANGUAGE.into(),
    };
    let mut parser = Parser::new();
    parser
        .set_language(&language)
        .map_err(|e| format!("grammar not loadable: {e}"))?;
    let bytes = unit.text.as_bytes();
    let deadline = Instant::now() + PARSE_BUDGET;
    let mut cancel = |_: &tree_sitter::ParseState| Instant::now() > deadline;
    let options = ParseOptions::new().progress_callback(&mut cancel);
    parser
        .parse_with_options(
            &mut |offset, _| bytes.get(offset..).unwrap_or(&[]),
            None,
            Some(options),
        )
        .ok_or_else(|| "parse timed out".to_string())
}

struct Ctx<'u, 's> {
    unit: &'u CodeUnit<'u>,
    vars: &'s mut BTreeMap<String, Taint>,
    downloaded: &'s mut BTreeMap<String, String>,
    hits: &'s mut Vec<FlowHit>,
    nodes: usize,
    file_has_download: bool,
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

    fn walk(&mut self, root: Node<'_>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        for re in [
            &CRED_FILE_RE,
            &HISTORY_RE,
            &ENV_DUMP_RE,
            &ENV_SECRET_RE,
            &SECRET_NAME_RE,
            &USER_FILES_RE,
            &DOWNLOAD_RE,
            &DECODE_RE,
            &ENCODE_RE,
            &NET_CALLEE_RE,
            &DNS_CALLEE_RE,
            &EXEC_ALWAYS_RE,
            &EXEC_MAYBE_RE,
            &SHELL_ARG_RE,
            &SHELL_EXEC_CMD_RE,
            &PERSIST_RE,
            &AUTH_CONTEXT_RE,
            &WRITE_MODE_RE,
            &STRING_LIT_RE,
            &PAYLOAD_CMD_RE,
        ] {
            assert!(re.get().is_some(), "a flow pattern failed to compile");
        }
    }

    #[test]
    fn fences() {
        let md = "intro\n```python\nimport os\n```\n\n~~~bash\nls\n~~~\n```\nplain\n```\n";
        let blocks = fenced_blocks(md);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, Lang::Python);
        assert_eq!(blocks[0].2, 3);
        assert_eq!(blocks[1].1, "ls\n");
        let open = fenced_blocks("```sh\ncurl x | sh\n");
        assert_eq!(open.len(), 1, "an unclosed block runs to the end");
    }
}
