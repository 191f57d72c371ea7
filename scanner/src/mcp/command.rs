//! The vocabulary of a server's launch command: shells, interpreters,
//! network tools and package runners; splitting a script into its commands,
//! reading a package spec, and telling secrets from placeholders.

use std::sync::LazyLock;

use regex::Regex;

pub(super) const SHELLS: &[&str] = &[
    "sh",
    "bash",
    "zsh",
    "dash",
    "ksh",
    "ash",
    "fish",
    "cmd",
    "powershell",
    "pwsh",
];

pub(super) const INTERPRETERS: &[&str] = &[
    "python",
    "python2",
    "python3",
    "node",
    "nodejs",
    "deno",
    "bun",
    "perl",
    "ruby",
    "php",
    "osascript",
];

pub(super) const NET_TOOLS: &[&str] = &[
    "curl",
    "wget",
    "nc",
    "ncat",
    "netcat",
    "socat",
    "telnet",
    "nslookup",
    "dig",
    "host",
    "drill",
    "ssh",
    "scp",
    "sftp",
    "ftp",
    "tftp",
    "rsync",
    "openssl",
    "invoke-webrequest",
    "iwr",
    "invoke-restmethod",
    "irm",
];

pub(super) const RUNNERS: &[&str] = &["npx", "bunx", "pnpx", "uvx", "pipx"];

pub(super) static SECRET_KEY_NAME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)(api[_-]?key|apikey|token|secret|passw(or)?d|pwd|credential|private[_-]?key|access[_-]?key|auth)").ok()
});

pub(super) static PLACEHOLDER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)^(\$|%|<|\{\{|\[)|your[_-]|xxx|changeme|change[_-]me|example|placeholder|redacted|\*\*\*|^(true|false|none|null|info|debug|warn|error|0|1)$|^\s*$").ok()
});

pub(super) static SECRET_FLAG: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)^--?(api[_-]?key|apikey|token|access[_-]?token|auth[_-]?token|secret|client[_-]?secret|password|passwd|pat)(=(.*))?$").ok()
});

pub(super) static INTERNAL_NAME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)(^|[@/_.-])(internal|private|corp|intranet|in-house|inhouse)([/_.-]|$)|^@[a-z0-9-]*(internal|corp|private)[a-z0-9-]*/").ok()
});

pub(super) fn base_name(cmd: &str) -> String {
    let last = cmd
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(cmd)
        .to_ascii_lowercase();
    last.trim_end_matches(".exe")
        .trim_end_matches(".cmd")
        .to_string()
}

pub(super) fn placeholder(value: &str) -> bool {
    PLACEHOLDER
        .as_ref()
        .is_none_or(|re| re.is_match(value.trim()))
}

/// Splits a shell script into the first word of each simple command.
pub(super) fn command_words(script: &str) -> Vec<String> {
    let mut words = Vec::new();
    for part in script.split(['|', ';', '&', '\n', '`', '(', ')']) {
        let mut it = part
            .split_whitespace()
            .filter(|w| !w.contains('=') || w.starts_with('-'));
        let mut w = it.next();
        while let Some(x) = w {
            if matches!(
                x,
                "sudo"
                    | "exec"
                    | "nohup"
                    | "env"
                    | "command"
                    | "xargs"
                    | "time"
                    | "then"
                    | "do"
                    | "{"
                    | "!"
            ) || x.starts_with('-')
            {
                w = it.next();
            } else {
                break;
            }
        }
        if let Some(x) = w {
            words.push(base_name(x.trim_matches(['"', '\'', '$'])));
        }
    }
    words
}

/// Package name and whether a version is pinned, for a runner's argument.
pub(super) fn package_spec(runner: &str, spec: &str) -> (String, bool) {
    if runner == "uvx" || runner == "pipx" {
        if let Some((n, v)) = spec.split_once("==").or_else(|| spec.split_once('@')) {
            return (n.to_string(), !v.is_empty() && v != "latest");
        }
        return (spec.to_string(), false);
    }
    // npm: `@scope/name@1.2.3` or `name@1.2.3`.
    let at = spec.rfind('@').filter(|i| *i > 0);
    match at {
        Some(i) => {
            let v = &spec[i + 1..];
            (
                spec[..i].to_string(),
                !v.is_empty() && v != "latest" && v != "next",
            )
        }
        None => (spec.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_specs() {
        assert_eq!(
            command_words("sudo curl x | bash; wget y"),
            vec!["curl", "bash", "wget"]
        );
        assert_eq!(
            package_spec("npx", "@scope/pkg@1.2.3"),
            ("@scope/pkg".to_string(), true)
        );
        assert_eq!(
            package_spec("npx", "@scope/pkg"),
            ("@scope/pkg".to_string(), false)
        );
        assert_eq!(
            package_spec("uvx", "mcp-server-git==0.6"),
            ("mcp-server-git".to_string(), true)
        );
    }
}
