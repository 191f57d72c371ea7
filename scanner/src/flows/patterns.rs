//! The source, transformation and sink patterns the flow analysis matches
//! expressions against, compiled once on first use.

use std::sync::LazyLock;

use regex::Regex;

/// A pattern of this file, compiled on first use (checked by a unit test).
pub(super) struct Pat(LazyLock<Option<Regex>>);

impl Pat {
    pub(super) fn get(&self) -> Option<&Regex> {
        self.0.as_ref()
    }

    pub(super) fn is_match(&self, text: &str) -> bool {
        self.get().is_some_and(|r| r.is_match(text))
    }

    pub(super) fn count(&self, text: &str) -> usize {
        self.get().map_or(0, |r| r.find_iter(text).count())
    }

    pub(super) fn first(&self, text: &str) -> String {
        self.get()
            .and_then(|r| r.find(text))
            .map(|m| m.as_str().chars().take(40).collect())
            .unwrap_or_default()
    }

    pub(super) fn captures<'t>(&self, text: &'t str) -> Vec<regex::Captures<'t>> {
        self.get()
            .map(|r| r.captures_iter(text).take(64).collect())
            .unwrap_or_default()
    }

    pub(super) fn remove(&self, text: &str) -> String {
        match self.get() {
            Some(r) => r.replace_all(text, "").into_owned(),
            None => text.to_string(),
        }
    }
}

macro_rules! re {
    ($name:ident, $src:expr) => {
        pub(super) static $name: Pat = Pat(LazyLock::new(|| Regex::new($src).ok()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn patterns_compile() {
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
}
