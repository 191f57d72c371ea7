//! Structural checks: logic in code, id/severity/wording from rule files.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

/// Names a rule file may use in `check = "..."`.
pub const KNOWN_CHECKS: &[&str] = &[
    // skills and MCP
    "encoded_literal",
    // skills
    "skill_name_typosquat",
    "install_typosquat",
    "symlink_escape",
    "frontmatter_missing",
    "frontmatter_malformed",
    "scan_incomplete",
    // language-aware flows (flows.rs)
    "secret_exfil",
    "secret_to_network",
    "download_exec",
    "staged_payload",
    "persistence_payload",
    "persistence_write",
    // SKILL.md instructions (instructions.rs; weights in instruction_weights.toml)
    "instruction_risk",
    // MCP server definitions
    "mcp_shell_wrapper",
    "mcp_inline_code",
    "mcp_network_tool",
    "mcp_inline_script_danger",
    "mcp_unpinned_package",
    "mcp_package_typosquat",
    "mcp_dependency_confusion",
    "mcp_plaintext_secret",
    "mcp_remote_http",
    "mcp_auto_approve",
    "mcp_auto_approve_all",
];

/// Top-level scalar keys of a SKILL.md YAML front matter, and the line the
/// body starts on. Only what the checks need: `key: value` and `key:` lists.
pub(crate) fn front_matter(text: &str) -> Option<BTreeMap<String, String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return None;
    }
    let mut map = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in lines {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed == "..." {
            return Some(map);
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ')
            && !line.starts_with('\t')
            && !line.starts_with('-')
            && let Some((k, v)) = trimmed.split_once(':')
        {
            let key = k.trim().to_string();
            let value = unquote(v.trim());
            map.insert(key.clone(), value);
            current = Some(key);
            continue;
        }
        // Continuation lines (lists, folded text) are appended to the key.
        if let Some(key) = &current
            && let Some(v) = map.get_mut(key)
        {
            if !v.is_empty() {
                v.push(' ');
            }
            v.push_str(trimmed.trim_start_matches([' ', '\t', '-']).trim());
        }
    }
    None
}

/// Why a SKILL.md's front matter is not well-formed YAML, with the 1-based line
/// to point at. Another parser (OpenClaw's) may read such a header differently
/// from [`front_matter`], or refuse it, so the skill is not what it seems.
/// Checks only what a strict parser rejects and [`front_matter`] would let
/// through: an unclosed flow collection or quoted value, a top-level line that
/// is not `key: value`, a key given twice, and tab indentation.
pub(crate) fn front_matter_problem(text: &str) -> Option<(u32, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l.trim_end()) != Some("---") {
        return None;
    }
    let mut keys: Vec<String> = Vec::new();
    // The value being read across lines: its key, first line and what it waits for.
    let mut open: Option<(String, usize, Pending)> = None;
    let line_no = |i: usize| u32::try_from(i + 1).unwrap_or(u32::MAX);
    let unclosed = |key: &str, at: usize, pending: &Pending| {
        (
            line_no(at),
            format!(
                "the value of `{key}` never closes its `{}`",
                pending.closer()
            ),
        )
    };
    for (i, line) in lines {
        let trimmed = line.trim_end();
        let top_level = !line.starts_with([' ', '\t', '-']);
        let ends_header = trimmed == "---" || trimmed == "...";
        if (ends_header || (top_level && !trimmed.is_empty() && !trimmed.starts_with('#')))
            && let Some((key, at, pending)) = &open
        {
            return Some(unclosed(key, *at, pending));
        }
        if ends_header {
            return None;
        }
        if let Some((key, at, pending)) = &mut open {
            match pending.feed(trimmed) {
                Fed::Open => {}
                Fed::Closed => open = None,
                Fed::Mismatch => return Some(unclosed(key, *at, pending)),
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with('\t') {
            return Some((line_no(i), "a line is indented with a tab".into()));
        }
        if !top_level {
            continue;
        }
        let Some((k, v)) = trimmed.split_once(':') else {
            return Some((line_no(i), format!("line {} is not `key: value`", i + 1)));
        };
        let key = k.trim().to_owned();
        if keys.contains(&key) {
            return Some((line_no(i), format!("the key `{key}` is given twice")));
        }
        keys.push(key.clone());
        let v = v.trim();
        let mut pending = match v.chars().next() {
            Some('[' | '{') => Pending::Flow(Vec::new()),
            Some(q @ ('"' | '\'')) => {
                // The rest of the first line, after the opening quote.
                if !v[1..].contains(q) {
                    open = Some((key, i, Pending::Quote(q)));
                }
                continue;
            }
            _ => continue,
        };
        match pending.feed(v) {
            Fed::Closed => {}
            Fed::Open => open = Some((key, i, pending)),
            Fed::Mismatch => return Some(unclosed(&key, i, &pending)),
        }
    }
    open.map(|(key, at, pending)| unclosed(&key, at, &pending))
}

/// A multi-line YAML value not yet closed.
enum Pending {
    /// A flow collection: the closers still expected, innermost last.
    Flow(Vec<char>),
    /// A quoted scalar waiting for this quote.
    Quote(char),
}

enum Fed {
    Open,
    Closed,
    Mismatch,
}

impl Pending {
    fn closer(&self) -> char {
        match self {
            Self::Flow(stack) => stack.last().copied().unwrap_or(']'),
            Self::Quote(q) => *q,
        }
    }

    /// Reads one more line of the value.
    fn feed(&mut self, text: &str) -> Fed {
        match self {
            Self::Quote(q) => match text.contains(*q) {
                true => Fed::Closed,
                false => Fed::Open,
            },
            Self::Flow(stack) => {
                let mut in_quote: Option<char> = None;
                for c in text.chars() {
                    match (in_quote, c) {
                        (Some(q), c) if c == q => in_quote = None,
                        (Some(_), _) => {}
                        (None, '"' | '\'') => in_quote = Some(c),
                        (None, '[') => stack.push(']'),
                        (None, '{') => stack.push('}'),
                        (None, c @ (']' | '}')) => {
                            if stack.pop() != Some(c) {
                                return Fed::Mismatch;
                            }
                            if stack.is_empty() {
                                return Fed::Closed;
                            }
                        }
                        _ => {}
                    }
                }
                Fed::Open
            }
        }
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

// ---------------------------------------------------------------- encoded literals

static B64_TOKEN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_-]{16,}={0,2}").ok());
static HEX_ESCAPES: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:\\x[0-9a-fA-F]{2}){6,}").ok());
static HEX_TOKEN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\b(?:[0-9a-fA-F]{2}){8,}\b").ok());
static DANGEROUS_DECODED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:https?|ftp|wss?)://[a-z0-9.-]+|\b(?:curl|wget|bash|powershell|nc|ncat|socat)\s|/bin/(?:ba)?sh|/dev/tcp/|\bsh\s+-c\b|\bimport\s+(?:os|subprocess|socket|pty)\b|\bos\.(?:system|popen)|\bsubprocess\.|\b(?:exec|eval)\s*\(|\brm\s+-rf\b|\bchmod\s+[0-7+]|\bchild_process\b|\bbase64\s+-d\b|\bInvoke-Expression\b",
    )
    .ok()
});

/// An encoded literal whose decoded text looks like a URL or code.
#[derive(Debug, Clone)]
pub(crate) struct EncodedHit {
    pub start: usize,
    pub end: usize,
    pub encoding: &'static str,
    pub decoded: String,
}

fn mostly_printable(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let ok = bytes
        .iter()
        .filter(|b| (0x20..0x7f).contains(*b) || matches!(**b, b'\n' | b'\r' | b'\t'))
        .count();
    ok * 100 >= bytes.len() * 95
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Lenient base64 (standard or URL-safe, padding optional).
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | b64_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

fn dangerous(decoded: &[u8]) -> Option<String> {
    if !mostly_printable(decoded) {
        return None;
    }
    let text = String::from_utf8_lossy(decoded);
    let re = DANGEROUS_DECODED.as_ref()?;
    re.is_match(&text).then(|| text.into_owned())
}

/// Base64 and hex literals that decode to URLs, shell commands or code.
/// Images and other binary payloads decode to non-text and are ignored.
pub(crate) fn encoded_literals(text: &str, limit: usize) -> Vec<EncodedHit> {
    let mut hits = Vec::new();
    if let Some(re) = B64_TOKEN.as_ref() {
        for m in re.find_iter(text) {
            let tok = m.as_str();
            // Identifiers and paths are not base64 payloads: require a mix.
            let has_digit_or_sym = tok
                .bytes()
                .any(|b| b.is_ascii_digit() || b == b'+' || b == b'/' || b == b'=');
            let has_upper = tok.bytes().any(|b| b.is_ascii_uppercase());
            let has_lower = tok.bytes().any(|b| b.is_ascii_lowercase());
            if !(has_upper && has_lower && has_digit_or_sym) {
                continue;
            }
            if let Some(decoded) = decode_base64(tok).as_deref().and_then(dangerous) {
                hits.push(EncodedHit {
                    start: m.start(),
                    end: m.end(),
                    encoding: "base64",
                    decoded,
                });
                if hits.len() >= limit {
                    return hits;
                }
            }
        }
    }
    for (re, encoding) in [
        (HEX_ESCAPES.as_ref(), "hex escapes"),
        (HEX_TOKEN.as_ref(), "hex"),
    ] {
        let Some(re) = re else { continue };
        for m in re.find_iter(text) {
            let raw = m.as_str().replace("\\x", "");
            if let Some(decoded) = decode_hex(&raw).as_deref().and_then(dangerous) {
                hits.push(EncodedHit {
                    start: m.start(),
                    end: m.end(),
                    encoding,
                    decoded,
                });
                if hits.len() >= limit {
                    return hits;
                }
            }
        }
    }
    hits
}

// ---------------------------------------------------------------- typosquats

/// Popular package, server and skill name parts that attackers imitate.
const POPULAR: &[&str] = &[
    // PyPI
    "requests",
    "numpy",
    "pandas",
    "django",
    "flask",
    "fastapi",
    "urllib3",
    "setuptools",
    "boto3",
    "botocore",
    "certifi",
    "cryptography",
    "pyyaml",
    "jinja2",
    "matplotlib",
    "scipy",
    "tensorflow",
    "pytorch",
    "torch",
    "openai",
    "anthropic",
    "langchain",
    "selenium",
    "beautifulsoup4",
    "colorama",
    "pillow",
    "pydantic",
    "sqlalchemy",
    "psycopg2",
    "pytest",
    "httpx",
    "aiohttp",
    "uvicorn",
    "transformers",
    "python",
    "dateutil",
    "paramiko",
    // npm
    "express",
    "react",
    "lodash",
    "axios",
    "chalk",
    "commander",
    "webpack",
    "typescript",
    "eslint",
    "prettier",
    "mocha",
    "moment",
    "underscore",
    "dotenv",
    "mongoose",
    "nodemon",
    "puppeteer",
    "playwright",
    "electron",
    "jquery",
    "discord",
    "crossenv",
    "cross-env",
    // MCP and skills
    "modelcontextprotocol",
    "filesystem",
    "memory",
    "github",
    "gitlab",
    "postgres",
    "sqlite",
    "slack",
    "brave",
    "search",
    "sequential",
    "thinking",
    "fetch",
    "everything",
    "gdrive",
    "redis",
    "sentry",
    "server",
    "client",
    "webapp",
    "testing",
    "config",
    "parser",
    "validator",
    "formatter",
    "linter",
    "logger",
    "helper",
    "utils",
    "request",
    "docker",
    "kubernetes",
    "docx",
    "xlsx",
    "pptx",
    "creator",
    "builder",
    "design",
    "frontend",
    "backend",
    "artifacts",
    "browser",
    "google",
    "microsoft",
    "notion",
    "stripe",
    "supabase",
    "firebase",
    "vercel",
    "cloudflare",
    "terraform",
    "ansible",
    "context",
    "protocol",
    "format",
    "convert",
    "converter",
    "analyzer",
    "scanner",
    "monitor",
    "reporter",
    "security",
    "markdown",
    "package",
    "manager",
    "install",
    "installer",
];

/// Real words one edit away from a popular name: never a typosquat.
const VOCAB: &[&str] = &[
    "sever",
    "severs",
    "serve",
    "tests",
    "test",
    "parse",
    "parses",
    "fetcher",
    "formats",
    "former",
    "reacts",
    "memo",
    "memos",
    "slake",
    "builders",
    "creators",
    "designs",
    "helpers",
    "loggers",
    "linters",
    "configs",
    "parsers",
    "clients",
    "servers",
    "monitors",
    "reporters",
    "scanners",
    "analyzers",
    "converters",
    "formatters",
    "validators",
    "packages",
    "managers",
    "installs",
    "contexts",
    "protocols",
    "browsers",
    "utils",
    "util",
    "tools",
    "tool",
    "reactor",
    "chalks",
    "commanders",
    "sign",
    "searches",
    "searcher",
    "format",
    "forma",
    "client",
];

fn is_transposition(t: &[u8], w: &[u8]) -> bool {
    if t.len() != w.len() || t == w {
        return false;
    }
    let diff: Vec<usize> = (0..t.len()).filter(|&i| t[i] != w[i]).collect();
    diff.len() == 2
        && diff[1] == diff[0] + 1
        && t[diff[0]] == w[diff[1]]
        && t[diff[1]] == w[diff[0]]
}

/// `short` is `long` with one character removed, not at either end (end
/// edits make plurals and agent nouns, which are real words).
fn is_inner_deletion(short: &[u8], long: &[u8]) -> bool {
    if long.len() != short.len() + 1 || long.len() < 6 {
        return false;
    }
    (1..long.len() - 1).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
}

/// `long` is `short` with one letter doubled (`webbapp`).
fn is_doubling(long: &[u8], short: &[u8]) -> bool {
    if long.len() != short.len() + 1 || short.len() < 5 {
        return false;
    }
    (1..long.len())
        .any(|i| long[i] == long[i - 1] && long[..i] == short[..i] && long[i + 1..] == short[i..])
}

/// The popular name `token` imitates, if it is a near miss of one.
pub(crate) fn typosquat_of(token: &str) -> Option<&'static str> {
    let t = token.to_ascii_lowercase();
    if t.len() < 4 || POPULAR.contains(&t.as_str()) || VOCAB.contains(&t.as_str()) {
        return None;
    }
    let tb = t.as_bytes();
    POPULAR.iter().copied().find(|w| {
        let wb = w.as_bytes();
        w.len() >= 5
            && (is_transposition(tb, wb) || is_inner_deletion(tb, wb) || is_doubling(tb, wb))
    })
}

/// Checks every part of a name split on `-`, `_`, `/`, `.`, `@`, space.
pub(crate) fn name_typosquat(name: &str) -> Option<(String, &'static str)> {
    name.split(['-', '_', '/', '.', '@', ' '])
        .filter(|p| !p.is_empty())
        .find_map(|p| typosquat_of(p).map(|w| (p.to_string(), w)))
}

static INSTALL_CMD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?m)\b(?:pip3?|pipx|uv\s+pip|uv\s+add|poetry\s+add|npm|yarn|pnpm|bun)\s+(?:install|add|i)\s+([^\n;&|#]+)").ok()
});

/// Package names in install commands that look like typos of popular ones.
pub(crate) fn install_typosquats(text: &str) -> Vec<(usize, usize, String, &'static str)> {
    let mut out = Vec::new();
    let Some(re) = INSTALL_CMD.as_ref() else {
        return out;
    };
    for c in re.captures_iter(text) {
        let (Some(all), Some(args)) = (c.get(0), c.get(1)) else {
            continue;
        };
        for word in args
            .as_str()
            .split_whitespace()
            .filter(|w| !w.starts_with('-'))
        {
            let name = word
                .trim_matches(['"', '\'', '`'])
                .split(['=', '<', '>', '[', '~', '!'])
                .next()
                .unwrap_or("");
            // npm `name@1.2.3` / `@scope/name@1.2.3`: drop the version.
            let name = match name.rfind('@') {
                Some(i) if i > 0 => &name[..i],
                _ => name,
            };
            if name.contains("://") || name.contains('.') && name.contains('/') {
                continue;
            }
            if let Some((_, popular)) = name_typosquat(name) {
                out.push((all.start(), all.end(), name.to_string(), popular));
                break;
            }
        }
        if out.len() >= 3 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_front_matter_has_no_problem() {
        for ok in [
            "---\nname: a\ndescription: b\n---\nbody",
            "---\nname: \"a: b\"\ntags: [x, \"y]\", z]\nmeta: {a: 1}\n---\n",
            "---\nname: a\ntags:\n  - x\n  - y\ndescription: >\n  folded\n  text\n---\n",
            "---\nname: a\ntags: [x,\n  y]\n# comment\n---\n",
            "---\nname: 'it''s'\n---\n",
            "no front matter at all",
        ] {
            assert_eq!(front_matter_problem(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn malformed_front_matter_is_named_with_its_line() {
        let cases = [
            (
                "---\nname: [unclosed\ndescription: x\n---\n",
                2,
                "never closes its `]`",
            ),
            (
                "---\nname: x\nmeta: {a: [1, 2}\n---\n",
                3,
                "never closes its `}`",
            ),
            (
                "---\nname: \"open\ndescription: x\n---\n",
                2,
                "never closes its `\"`",
            ),
            (
                "---\nname: a\njust some words\n---\n",
                3,
                "is not `key: value`",
            ),
            ("---\nname: a\nname: b\n---\n", 3, "given twice"),
            ("---\nname: a\ntags:\n\t- x\n---\n", 4, "tab"),
            ("---\nname: [a, b\n", 2, "never closes"),
        ];
        for (text, line, why) in cases {
            let (got_line, got) = front_matter_problem(text).unwrap_or_else(|| panic!("{text:?}"));
            assert_eq!(got_line, line, "{text:?}: {got}");
            assert!(got.contains(why), "{text:?}: {got}");
        }
    }

    #[test]
    fn typos() {
        assert_eq!(typosquat_of("reqeusts"), Some("requests"));
        assert_eq!(typosquat_of("confg"), Some("config"));
        assert_eq!(typosquat_of("webbapp"), Some("webapp"));
        assert_eq!(typosquat_of("protcol"), Some("protocol"));
        assert_eq!(typosquat_of("requests"), None);
        assert_eq!(typosquat_of("parse"), None);
        assert_eq!(typosquat_of("lister"), None);
        assert_eq!(typosquat_of("merger"), None);
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        let hits = encoded_literals("x = 'aHR0cHM6Ly9leGFtcGxlLm9yZy9jb2xsZWN0'", 5);
        assert_eq!(hits.len(), 1);
        assert!(
            encoded_literals(
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
                5
            )
            .is_empty()
        );
    }
}
