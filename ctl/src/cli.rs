//! Command-line definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Output format, as the commands print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people (`-o table`, or `-o wide` with no cell shortened).
    Table,
    /// One JSON document.
    Json,
    /// SARIF 2.1.0.
    Sarif,
}

/// `-o`: the output format asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people; long cells end in `…`.
    Table,
    /// Aligned columns with every cell in full.
    Wide,
    /// One JSON document (JSON lines for `audit export`, `audit tail` and scans).
    Json,
    /// SARIF 2.1.0 (scan commands only), for code-scanning tools.
    Sarif,
    /// CSV, one row per grant (`connections export` only).
    Csv,
}

impl OutputFormat {
    /// The format the commands print, and whether table cells stay whole.
    pub fn resolve(self) -> (Output, bool) {
        match self {
            Self::Table => (Output::Table, false),
            Self::Wide => (Output::Table, true),
            Self::Json => (Output::Json, false),
            Self::Sarif => (Output::Sarif, false),
            // Only `connections export` accepts it (checked before it runs).
            Self::Csv => (Output::Json, false),
        }
    }
}

/// Command-line client for defenseclawd.
#[derive(Debug, Parser)]
#[command(name = "defenseclawctl", version, about, after_help = crate::exit::HELP)]
pub struct Cli {
    /// The daemon's Unix socket. Default: $XDG_RUNTIME_DIR/defenseclaw/, else
    /// /run/defenseclaw/ (root), else /run/user/<uid>/defenseclaw/, else
    /// ~/.defenseclaw/run/. The CLI only talks to a socket whose directories
    /// are owned by root, you or the daemon's service user (`defenseclaw`, or
    /// the uid in DEFENSECLAW_DAEMON_UID) and served by one of them (exit 77).
    #[arg(long, global = true, env = "DEFENSECLAW_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// When a change needs a human approval, print the request and return at
    /// once (also a flag of the commands that can need one).
    #[arg(long)]
    pub no_wait: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// bash (`source <(defenseclawctl completions bash)`).
    Bash,
    /// zsh (write it to a directory on `$fpath` as `_defenseclawctl`).
    Zsh,
    /// fish (write it to `~/.config/fish/completions/defenseclawctl.fish`).
    Fish,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon version, uptime, socket, store, counts and audit head.
    Status,
    /// This CLI's version, and the daemon's when it answers.
    Version,
    /// Write a starting config (a user's own, or root's system file) and explain the two modes.
    #[command(after_help = crate::examples::INIT)]
    Init {
        /// Where to write it (default: ~/.config/defenseclaw/defenseclawd.toml, or
        /// /etc/defenseclaw/defenseclawd.toml for root).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Where the OpenClaw gateway listens (default 127.0.0.1:18789).
        #[arg(long, value_name = "HOST:PORT")]
        gateway: Option<std::net::SocketAddr>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check the setup end to end and say how to fix what is wrong (exit 15 if anything failed).
    #[command(after_help = crate::examples::DOCTOR)]
    Doctor,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write a man page per command (defenseclawctl.1, defenseclawctl-skill.1, …) into DIR.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Skills: list, show, scan, install, block, allow, unblock, quarantine.
    #[command(after_help = crate::examples::SKILL)]
    Skill {
        /// What to do.
        #[command(subcommand)]
        action: SkillCommand,
    },
    /// MCP servers: list, show, scan, block, allow (with connections), unblock, exec.
    #[command(after_help = crate::examples::MCP)]
    Mcp {
        /// What to do.
        #[command(subcommand)]
        action: McpCommand,
    },
    /// Scanner findings.
    Finding {
        /// What to do.
        #[command(subcommand)]
        action: FindingCommand,
    },
    /// Feed scan results to the daemon.
    Scan {
        /// What to do.
        #[command(subcommand)]
        action: ScanCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Operator login (OAuth device flow), session status, logout.
    Auth {
        /// What to do.
        #[command(subcommand)]
        action: AuthCommand,
    },
    /// Step-up approvals: changes held until a human confirms them.
    Approvals {
        /// What to do.
        #[command(subcommand)]
        action: ApprovalsCommand,
    },
    /// Scanner rules: list the built-in and configured rules, validate a rule file.
    Rule {
        /// What to do.
        #[command(subcommand)]
        action: RuleCommand,
    },
    /// The OpenClaw gateway the daemon monitors.
    Openclaw {
        /// What to do.
        #[command(subcommand)]
        action: OpenclawCommand,
    },
    /// Token Vault connections: link your accounts, the auth inventory, revoke grants.
    Connections {
        /// What to do.
        #[command(subcommand)]
        action: ConnectionsCommand,
    },
}

/// Connection commands.
#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Link your account for CONNECTION (Auth0 Connected Accounts) in the browser.
    Connect(ConnectArgs),
    /// Every grant: server, connection, scopes, approver, last use, status.
    List {
        /// Only this MCP server.
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
        /// Only the grants that use your own credential or linked accounts
        /// (needs a login, no operator role).
        #[arg(long, conflicts_with = "server")]
        mine: bool,
    },
    /// Revoke SERVER's grant for CONNECTION and drop its stored credential (audited).
    Revoke {
        /// MCP server name.
        server: String,
        /// Connection name.
        connection: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Also revoke the grant's stored refresh token at the identity provider
        /// (unattended grants) before dropping it; the grant is revoked here even
        /// when the provider fails (exit 1, saying so).
        #[arg(long, conflicts_with = "mine")]
        at_provider: bool,
        /// Revoke one of your own grants (as `list --mine` shows them), audited
        /// as you; needs a login, no operator role.
        #[arg(long)]
        mine: bool,
    },
    /// Delete your linked account for CONNECTION at the identity provider (My
    /// Account API) and mark every grant using it unlinked (audited).
    Unlink(UnlinkArgs),
    /// Stop serving SERVER's grant for CONNECTION until it is resumed; its cached
    /// tokens are dropped at once (audited).
    Suspend(GrantArgs),
    /// Serve a suspended grant again (audited).
    Resume(GrantArgs),
    /// The Auth-IBOM: every grant ever made with its status history, each event
    /// naming its audit entry (`auth-ibom/v1`, `-o json` or `-o csv`), or
    /// `--verify FILE` to check such a document against the audit log.
    #[command(after_help = crate::examples::CONNECTIONS_EXPORT)]
    Export(ExportArgs),
    /// A local web page (127.0.0.1) listing your grants, with a Revoke button each.
    #[command(after_help = crate::examples::CONNECTIONS_UI)]
    Ui(UiArgs),
}

/// Arguments of `connections export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only grants changed since TIME (RFC 3339) or not ended before it, each
    /// with its whole history.
    #[arg(long, value_name = "TIME", conflicts_with = "verify")]
    pub since: Option<String>,
    /// Check a JSON document written by `connections export` against the
    /// daemon's audit log and its head (exit 8 naming what differs).
    #[arg(long, value_name = "FILE")]
    pub verify: Option<std::path::PathBuf>,
}

/// Arguments of `connections ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Do not try to open a browser (print the URL only).
    #[arg(long)]
    pub no_browser: bool,
}

/// A grant and why it changes (`connections suspend|resume`).
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// MCP server name.
    pub server: String,
    /// Connection name.
    pub connection: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Arguments of `connections unlink`.
#[derive(Debug, Args)]
pub struct UnlinkArgs {
    /// The Auth0 connection name (e.g. github).
    pub connection: String,
    /// The connected account's id (`cac_…`), when you linked several on CONNECTION.
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,
    /// Do not try to open a browser (for a device-flow login, if one is needed).
    #[arg(long)]
    pub no_browser: bool,
}

/// Arguments of `connections connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The Auth0 connection name (e.g. github).
    pub connection: String,
    /// Provider scopes to request, space-separated (default: the connection's).
    #[arg(long, value_name = "SCOPES")]
    pub scopes: Option<String>,
    /// Do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// Auth commands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Log in with the device flow; the daemon supplies issuer, audience and client id.
    Login {
        /// Issuer URL or Auth0 domain (default: the daemon's).
        #[arg(long)]
        issuer: Option<String>,
        /// API identifier (default: the daemon's).
        #[arg(long)]
        audience: Option<String>,
        /// The CLI's client id (default: the daemon's).
        #[arg(long)]
        client_id: Option<String>,
        /// Extra API scope to request (repeatable; default: the daemon's role scopes).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Who is logged in, issuer, expiry, scopes.
    Status,
    /// Revoke the refresh token and delete the session.
    Logout,
}

/// Approval commands.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Pending and recent step-up requests.
    List {
        /// Only pending ones.
        #[arg(long)]
        pending: bool,
    },
    /// One request.
    Show {
        /// Request id (e.g. DC-4F2A91C30B7E55D1).
        id: String,
    },
    /// Follow a request until it ends; exits with its outcome's code.
    Watch {
        /// Request id.
        id: String,
    },
    /// Cancel a pending request (audited).
    Cancel {
        /// Request id.
        id: String,
    },
}

/// Rule commands.
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Every rule (built-in plus --rules directories).
    List {
        /// Extra rule directories.
        #[arg(long = "rules", value_name = "DIR")]
        rule_dirs: Vec<PathBuf>,
    },
    /// Check a rule file and report how many rules it holds.
    Validate {
        /// The rule file (TOML).
        file: PathBuf,
    },
}

/// OpenClaw commands.
#[derive(Debug, Subcommand)]
pub enum OpenclawCommand {
    /// Approvals the daemon has seen (pending and recent) and what it decided.
    Approvals,
    /// Install and enable the gate plugin and set OpenClaw's exec policy so
    /// nothing runs unasked, through the daemon's gateway connection
    /// (idempotent; reports each setting it manages). While it is in effect,
    /// MCP servers allowed with Token Vault connections are started through
    /// `defenseclawctl mcp exec`.
    Setup {
        /// Report what would change without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Restore what setup changed (and every wired MCP server's own
        /// command). With step-up on, the [stepup] approver must approve it
        /// first: the command waits for the answer.
        #[arg(long)]
        undo: bool,
    },
}

/// Skill commands.
#[derive(Debug, Subcommand)]
pub enum SkillCommand {
    /// Every skill the daemon knows, with its state.
    #[command(after_help = crate::examples::SKILL_LIST)]
    List,
    /// One skill with its findings.
    #[command(after_help = crate::examples::SKILL_SHOW)]
    Show {
        /// Skill name (its folder's name).
        name: String,
    },
    /// Scan skill folders with the built-in scanner (through the daemon, or `--offline`).
    #[command(after_help = crate::examples::SKILL_SCAN)]
    Scan(SkillScanArgs),
    /// Scan a skill folder, then admit it as allowed or blocked per policy (audited).
    #[command(after_help = crate::examples::SKILL_INSTALL)]
    Install(InstallArgs),
    /// Block the skill (audited; OpenClaw disables it).
    #[command(after_help = crate::examples::SKILL_BLOCK)]
    Block(Decide),
    /// Allow the skill (a HIGH/CRITICAL one waits for the approver when step-up is on).
    #[command(after_help = crate::examples::SKILL_ALLOW)]
    Allow(Decide),
    /// Remove a block or allow decision.
    #[command(after_help = crate::examples::SKILL_UNBLOCK)]
    Unblock(Decide),
    /// Move the skill's folder to the daemon's quarantine (audited; nothing is
    /// ever replaced; enforcement is unchanged).
    #[command(after_help = crate::examples::SKILL_QUARANTINE)]
    Quarantine(QuarantineArgs),
    /// Move a quarantined skill's folder back where it was (a blocked skill stays blocked).
    #[command(after_help = crate::examples::SKILL_RESTORE)]
    Restore {
        /// Skill name.
        name: String,
    },
    /// The quarantined skills and where they came from.
    Quarantined,
}

/// MCP server commands.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Every MCP server the daemon knows, with its state.
    #[command(after_help = crate::examples::MCP_LIST)]
    List,
    /// One MCP server with its findings.
    #[command(after_help = crate::examples::MCP_SHOW)]
    Show {
        /// Server name (its key in the client config).
        name: String,
    },
    /// Scan the servers of MCP client config files with the built-in scanner.
    #[command(after_help = crate::examples::MCP_SCAN)]
    Scan(McpScanArgs),
    /// Block the server (audited; OpenClaw disables it).
    #[command(after_help = crate::examples::MCP_BLOCK)]
    Block(Decide),
    /// Allow the server, with the Token Vault connections it may use.
    #[command(after_help = crate::examples::MCP_ALLOW)]
    Allow(AllowArgs),
    /// Remove a block or allow decision.
    #[command(after_help = crate::examples::MCP_UNBLOCK)]
    Unblock(Decide),
    /// Run the server with its connection tokens in its environment (put this
    /// in OpenClaw's `mcp.servers.NAME.command`).
    #[command(after_help = crate::examples::MCP_EXEC)]
    Exec(ExecArgs),
}

/// What `skill …` and `mcp …` ask of the daemon, once parsed: one command set
/// for both kinds, so the requests are built in one place.
#[derive(Debug)]
pub enum TargetCommand {
    /// `list`.
    List,
    /// `show NAME`.
    Show {
        /// Target name.
        name: String,
    },
    /// `block`.
    Block(Decide),
    /// `allow` (connections for MCP servers only).
    Allow(AllowArgs),
    /// `unblock`.
    Unblock(Decide),
    /// `scan` through the daemon.
    Scan(ScanArgs),
    /// `skill install`.
    Install(InstallArgs),
    /// `mcp exec`.
    Exec(ExecArgs),
    /// `skill quarantine`.
    Quarantine(QuarantineArgs),
    /// `skill restore`.
    Restore {
        /// Skill name.
        name: String,
    },
    /// `skill quarantined`.
    Quarantined,
}

impl From<SkillCommand> for TargetCommand {
    fn from(c: SkillCommand) -> Self {
        match c {
            SkillCommand::List => Self::List,
            SkillCommand::Show { name } => Self::Show { name },
            SkillCommand::Scan(args) => Self::Scan(args.into()),
            SkillCommand::Install(args) => Self::Install(args),
            SkillCommand::Block(d) => Self::Block(d),
            SkillCommand::Allow(decide) => Self::Allow(AllowArgs {
                decide,
                connections: Vec::new(),
                scopes: None,
            }),
            SkillCommand::Unblock(d) => Self::Unblock(d),
            SkillCommand::Quarantine(args) => Self::Quarantine(args),
            SkillCommand::Restore { name } => Self::Restore { name },
            SkillCommand::Quarantined => Self::Quarantined,
        }
    }
}

impl From<McpCommand> for TargetCommand {
    fn from(c: McpCommand) -> Self {
        match c {
            McpCommand::List => Self::List,
            McpCommand::Show { name } => Self::Show { name },
            McpCommand::Scan(args) => Self::Scan(args.into()),
            McpCommand::Block(d) => Self::Block(d),
            McpCommand::Allow(args) => Self::Allow(args),
            McpCommand::Unblock(d) => Self::Unblock(d),
            McpCommand::Exec(args) => Self::Exec(args),
        }
    }
}

/// Arguments of `skill quarantine`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// Skill name (its folder's name).
    pub name: String,
    /// The folder, when the daemon knows several skill folders of that name.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Arguments of `mcp allow`.
#[derive(Debug, Args)]
pub struct AllowArgs {
    /// Target name and reason.
    #[command(flatten)]
    pub decide: Decide,
    /// An Auth0 connection the server may use (repeatable).
    #[arg(long = "connection", value_name = "NAME")]
    pub connections: Vec<String>,
    /// Provider scopes requested for the connections, space-separated.
    #[arg(long, value_name = "SCOPES")]
    pub scopes: Option<String>,
}

/// Arguments of `mcp exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The MCP server's name (as allowed in the daemon).
    pub name: String,
    /// VAR=CONNECTION: put CONNECTION's token in VAR (repeatable; default: each
    /// declared connection as `<CONNECTION>_TOKEN`, upper-cased).
    #[arg(long = "env", value_name = "VAR=CONNECTION")]
    pub env: Vec<String>,
    /// The real server command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `skill scan`.
#[derive(Debug, Args)]
pub struct SkillScanArgs {
    /// Skill folders.
    #[arg(value_name = "DIR")]
    pub dirs: Vec<String>,
    /// Options both scan commands take.
    #[command(flatten)]
    pub common: ScanCommon,
}

/// Arguments of `mcp scan`.
#[derive(Debug, Args)]
pub struct McpScanArgs {
    /// Server names in the config files (give them before `--config`, or use `--server`).
    #[arg(value_name = "SERVER")]
    pub servers: Vec<String>,
    /// MCP client config files (`.mcp.json`, `claude_desktop_config.json`, OpenClaw config):
    /// `--config A --config B` or `--config A B`. Each server's result names its file.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// Only this server of the config files.
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
    /// Options both scan commands take.
    #[command(flatten)]
    pub common: ScanCommon,
}

/// Options of `skill scan` and `mcp scan`.
#[derive(Debug, Args)]
pub struct ScanCommon {
    /// Scan in this process with no daemon and no store (CI pipelines, pre-commit hooks).
    #[arg(long)]
    pub offline: bool,
    /// Exit 9 when a finding reaches this severity (info, low, medium, high, critical).
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<String>,
    /// Extra rule directories (offline scans; the daemon uses its own config).
    #[arg(long = "rules", value_name = "DIR")]
    pub rule_dirs: Vec<PathBuf>,
}

/// A scan as the scan code runs it, for either kind.
#[derive(Debug)]
pub struct ScanArgs {
    /// Skill folders (skill scan), or MCP server names in the config files (mcp scan).
    pub targets: Vec<String>,
    /// MCP client config files.
    pub config: Vec<PathBuf>,
    /// Only this server of the config files.
    pub server: Option<String>,
    /// Scan in this process with no daemon and no store.
    pub offline: bool,
    /// Exit 9 when a finding reaches this severity.
    pub fail_on: Option<String>,
    /// Extra rule directories.
    pub rule_dirs: Vec<PathBuf>,
}

impl From<SkillScanArgs> for ScanArgs {
    fn from(a: SkillScanArgs) -> Self {
        Self {
            targets: a.dirs,
            config: Vec::new(),
            server: None,
            offline: a.common.offline,
            fail_on: a.common.fail_on,
            rule_dirs: a.common.rule_dirs,
        }
    }
}

impl From<McpScanArgs> for ScanArgs {
    fn from(a: McpScanArgs) -> Self {
        Self {
            targets: a.servers,
            config: a.config,
            server: a.server,
            offline: a.common.offline,
            fail_on: a.common.fail_on,
            rule_dirs: a.common.rule_dirs,
        }
    }
}

/// Arguments of `skill install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The skill folder.
    pub path: PathBuf,
    /// The skill's name, checked against the folder: a skill is named after its folder (never its SKILL.md), and another name is refused.
    #[arg(long)]
    pub name: Option<String>,
    /// Exit 9 when a finding reaches this severity (a blocked skill exits 14 first).
    #[arg(long, value_name = "SEVERITY")]
    pub fail_on: Option<String>,
}

/// Arguments of block/allow/unblock.
#[derive(Debug, Args)]
pub struct Decide {
    /// Target name.
    pub name: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// When the change needs a human approval, print the request and return at once.
    #[arg(long)]
    pub no_wait: bool,
}

/// Finding commands.
#[derive(Debug, Subcommand)]
pub enum FindingCommand {
    /// Open findings.
    List {
        /// Only this target, as KIND/NAME (e.g. skill/evil-skill).
        #[arg(long, value_name = "KIND/NAME")]
        target: Option<String>,
        /// Only findings at or above this severity.
        #[arg(long, value_name = "SEVERITY")]
        min_severity: Option<String>,
        /// Include dismissed findings.
        #[arg(long)]
        all: bool,
    },
    /// Dismiss a finding (audited).
    Dismiss {
        /// Finding id.
        id: u64,
        /// Why the finding is dismissed (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// When the dismissal needs a human approval, print the request and return at once.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Scan commands.
#[derive(Debug, Subcommand)]
pub enum ScanCommand {
    /// Submit a scan report file: {"scanner", "target": {"kind", "name"}, "findings": [...]}.
    Report {
        /// Report file ("-" for stdin).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recent entries, newest first.
    List {
        /// At most this many (0: all of them).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries by this actor (id or name).
        #[arg(long, value_name = "ID")]
        actor: Option<String>,
        /// Only entries about this target, as KIND/NAME.
        #[arg(long, value_name = "KIND/NAME")]
        target: Option<String>,
    },
    /// Follow new entries live.
    Tail {
        /// Replay the whole log first.
        #[arg(long)]
        from_start: bool,
    },
    /// Recompute the hash chain; optionally check a head recorded earlier.
    Verify {
        /// SEQ:HASH recorded earlier (catches truncation).
        #[arg(long, value_name = "SEQ:HASH", conflicts_with = "from_export")]
        head: Option<String>,
        /// Check a JSON-lines export from any sink instead (no daemon needed; "-" for stdin).
        #[arg(long, value_name = "FILE")]
        from_export: Option<PathBuf>,
        /// With --from-export: every head record must be signed by this Ed25519
        /// public key (64 hex digits: `status -o json` .export_signing_key).
        #[arg(long, value_name = "KEY", requires = "from_export")]
        public_key: Option<String>,
    },
    /// Every entry as JSON lines, oldest first.
    Export,
}
