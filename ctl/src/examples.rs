//! The EXAMPLES section of each command's help (shown by `--help` and in the man pages).

/// `skill`.
pub const SKILL: &str = "\
Examples:
  defenseclawctl skill install ~/.openclaw/skills/pdf-tools
  defenseclawctl skill list
  defenseclawctl skill block pdf-tools --reason \"exfiltrates ~/.ssh\"";

/// `skill list`.
pub const SKILL_LIST: &str = "\
Examples:
  defenseclawctl skill list
  defenseclawctl skill list -o json | jq '.[] | select(.state == \"blocked\")'";

/// `skill show`.
pub const SKILL_SHOW: &str = "\
Examples:
  defenseclawctl skill show pdf-tools";

/// `skill scan`.
pub const SKILL_SCAN: &str = "\
Examples:
  defenseclawctl skill scan ~/.openclaw/skills/pdf-tools
  defenseclawctl skill scan --offline --fail-on high skills/*    # CI: no daemon, exit 9 on HIGH
  defenseclawctl skill scan --offline -o sarif skills/* > scan.sarif";

/// `skill install`.
pub const SKILL_INSTALL: &str = "\
Examples:
  defenseclawctl skill install ./pdf-tools            # exit 14 when it is blocked
  defenseclawctl skill install ./pdf-tools --fail-on medium";

/// `skill block`.
pub const SKILL_BLOCK: &str = "\
Examples:
  defenseclawctl skill block pdf-tools --reason \"posts files to a pastebin\"";

/// `skill allow`.
pub const SKILL_ALLOW: &str = "\
Examples:
  defenseclawctl skill allow pdf-tools --reason \"reviewed by secops\"
  defenseclawctl --no-wait skill allow pdf-tools     # print the approval request and return";

/// `skill unblock`.
pub const SKILL_UNBLOCK: &str = "\
Examples:
  defenseclawctl skill unblock pdf-tools --reason \"finding dismissed\"";

/// `skill quarantine`.
pub const SKILL_QUARANTINE: &str = "\
Examples:
  defenseclawctl skill quarantine pdf-tools --reason \"under investigation\"
  defenseclawctl skill quarantined";

/// `skill restore`.
pub const SKILL_RESTORE: &str = "\
Examples:
  defenseclawctl skill restore pdf-tools";

/// `mcp`.
pub const MCP: &str = "\
Examples:
  defenseclawctl mcp scan --config ~/.openclaw/openclaw.json
  defenseclawctl mcp allow github-mcp --connection github --scopes \"repo read:user\"
  defenseclawctl mcp exec github-mcp -- npx -y @modelcontextprotocol/server-github";

/// `mcp list`.
pub const MCP_LIST: &str = "\
Examples:
  defenseclawctl mcp list";

/// `mcp show`.
pub const MCP_SHOW: &str = "\
Examples:
  defenseclawctl mcp show github-mcp";

/// `mcp scan`.
pub const MCP_SCAN: &str = "\
Examples:
  defenseclawctl mcp scan --config .mcp.json
  defenseclawctl mcp scan github-mcp --config claude_desktop_config.json
  defenseclawctl mcp scan --offline --fail-on high --config A.json B.json";

/// `mcp block`.
pub const MCP_BLOCK: &str = "\
Examples:
  defenseclawctl mcp block shell-server --reason \"runs arbitrary commands\"";

/// `mcp allow`.
pub const MCP_ALLOW: &str = "\
Examples:
  defenseclawctl mcp allow filesystem --reason \"read-only mount\"
  defenseclawctl mcp allow github-mcp --connection github --scopes \"repo read:user\"";

/// `mcp unblock`.
pub const MCP_UNBLOCK: &str = "\
Examples:
  defenseclawctl mcp unblock shell-server";

/// `mcp exec`.
pub const MCP_EXEC: &str = "\
Examples:
  defenseclawctl mcp exec github-mcp -- npx -y @modelcontextprotocol/server-github
  defenseclawctl mcp exec github-mcp --env GITHUB_TOKEN=github -- ./server";

/// `doctor`.
pub const DOCTOR: &str = "\
Checks: socket, session, daemon version, config source, state directory and store modes,
free disk space, auth mode, step-up approvers, client secret, Token Vault key, identity
provider discovery and keys, OpenClaw gateway.

Examples:
  defenseclawctl doctor
  defenseclawctl doctor -o json | jq '.checks[] | select(.state != \"ok\")'";

/// `init`.
pub const INIT: &str = "\
OpenClaw monitoring is turned on only when a gateway answers on 127.0.0.1:18789.

Examples:
  defenseclawctl init && defenseclawd &
  sudo defenseclawctl init --force      # rewrite /etc/defenseclaw/defenseclawd.toml";

/// `connections export`.
pub const CONNECTIONS_EXPORT: &str = "\
Examples:
  defenseclawctl connections export > ibom.json                 # auth-ibom/v1, docs/schema/auth-ibom-v1.json
  defenseclawctl connections export --since 2026-07-01T00:00:00Z -o csv > q3.csv
  defenseclawctl connections export --verify ibom.json          # exit 8 naming what differs from the audit log";

/// `connections ui`.
pub const CONNECTIONS_UI: &str = "\
Examples:
  defenseclawctl auth login && defenseclawctl connections ui    # opens http://127.0.0.1:<port>/?token=…
  defenseclawctl connections ui --no-browser                    # print the one-time link only";
