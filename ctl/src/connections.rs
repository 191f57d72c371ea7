//! Token Vault from the CLI: the auth inventory, revoking grants, and `mcp exec`,
//! which starts an MCP server with its connection tokens in its environment.

use std::os::unix::process::CommandExt;

use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::{ConnectionsCommand, ExecArgs, Output};
use crate::client::Client;
use crate::exit::{FAILURE, Failure, PERMISSION_DENIED, USAGE};
use crate::render;
use crate::render::{print_json, print_text, s};

/// `connections list|revoke` (`connect` runs before a daemon client exists).
pub async fn command(
    client: &mut Client,
    action: ConnectionsCommand,
    output: Output,
) -> Result<(), Failure> {
    // The end user's own grants, the inventory and the page are routed by
    // `lib.rs` to `crate::ibom` and `crate::connections_ui`.
    let action = match action {
        ConnectionsCommand::List { mine: true, .. }
        | ConnectionsCommand::Revoke { mine: true, .. }
        | ConnectionsCommand::Export(_)
        | ConnectionsCommand::Ui(_) => {
            return Err(Failure::new(
                FAILURE,
                "connections list|revoke --mine, export and ui are routed before this",
            ));
        }
        other => other,
    };
    match action {
        ConnectionsCommand::Connect(_) => Err(Failure::new(
            FAILURE,
            "connections connect runs without a daemon client",
        )),
        ConnectionsCommand::Export(_) | ConnectionsCommand::Ui(_) => Ok(()),
        ConnectionsCommand::List { server, .. } => {
            let reply = client
                .list_connections(pb::ListConnectionsRequest {
                    server: server.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let grants: Vec<Value> = reply.grants.iter().map(grant).collect();
            let accounts: Vec<Value> = reply.accounts.iter().map(account).collect();
            match output {
                Output::Json | Output::Sarif => {
                    print_json(&json!({"grants": grants, "accounts": accounts}))
                }
                Output::Table => {
                    let mut text = render::table(
                        &[
                            "SERVER",
                            "CONNECTION",
                            "STATUS",
                            "DECLARED",
                            "GRANTED",
                            "APPROVED BY",
                            "APPROVED AT",
                            "LAST USED",
                            "USES",
                            "UNATTENDED",
                        ],
                        &grants
                            .iter()
                            .map(|g| {
                                vec![
                                    s(&g["server"]),
                                    s(&g["connection"]),
                                    match s(&g["status_reason"]).as_str() {
                                        "" => s(&g["status"]),
                                        why => format!("{} ({why})", s(&g["status"])),
                                    },
                                    words(&g["declared_scopes"]),
                                    words(&g["granted_scopes"]),
                                    s(&g["approved_by"]),
                                    s(&g["approved_at"]),
                                    s(&g["last_used"]),
                                    g["use_count"].to_string(),
                                    if g["unattended"] == json!(true) {
                                        "yes"
                                    } else {
                                        "no"
                                    }
                                    .to_owned(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    );
                    if !accounts.is_empty() {
                        text.push_str("\n\nLinked accounts:\n");
                        text.push_str(&render::table(
                            &["OPERATOR", "CONNECTION", "ACCOUNT", "LINKED AT"],
                            &accounts
                                .iter()
                                .map(|a| {
                                    vec![
                                        s(&a["sub"]),
                                        s(&a["connection"]),
                                        s(&a["account_id"]),
                                        s(&a["linked_at"]),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        ));
                    }
                    print_text(&text)
                }
            }
        }
        ConnectionsCommand::Unlink(_) => Err(Failure::new(
            FAILURE,
            "connections unlink runs without a daemon client",
        )),
        ConnectionsCommand::Revoke {
            server,
            connection,
            reason,
            at_provider: true,
            ..
        } => revoke_at_provider(client, server, connection, reason, output).await,
        ConnectionsCommand::Revoke {
            server,
            connection,
            reason,
            ..
        } => {
            let reply = client
                .revoke_connection(pb::RevokeConnectionRequest {
                    server,
                    connection,
                    reason,
                    at_provider: false,
                })
                .await?
                .into_inner();
            print_grant_change(
                reply.grant.as_ref(),
                reply.audit_seq,
                "revoked",
                "its stored credential was dropped",
                output,
            )
        }
        ConnectionsCommand::Suspend(args) => {
            let reply = client.suspend_connection(status_request(args)).await?;
            let reply = reply.into_inner();
            print_grant_change(
                reply.grant.as_ref(),
                reply.audit_seq,
                "suspended",
                "",
                output,
            )
        }
        ConnectionsCommand::Resume(args) => {
            let reply = client.resume_connection(status_request(args)).await?;
            let reply = reply.into_inner();
            print_grant_change(reply.grant.as_ref(), reply.audit_seq, "resumed", "", output)
        }
    }
}

/// `connections revoke SERVER CONNECTION --at-provider`: the stored refresh
/// token is revoked at the identity provider, then the grant here. The grant
/// is revoked here even when the provider fails; that exits 1, saying so.
async fn revoke_at_provider(
    client: &mut Client,
    server: String,
    connection: String,
    reason: String,
    output: Output,
) -> Result<(), Failure> {
    let reply = client
        .revoke_connection(pb::RevokeConnectionRequest {
            server,
            connection,
            reason,
            at_provider: true,
        })
        .await?
        .into_inner();
    let provider = reply.at_provider.clone().unwrap_or_default();
    let there = at_provider_text(&provider);
    match output {
        Output::Json | Output::Sarif => {
            let mut v = reply.grant.as_ref().map(grant).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("audit_seq".into(), json!(reply.audit_seq));
                map.insert("at_provider".into(), at_provider_json(&provider));
            }
            print_json(&v)?;
        }
        Output::Table => print_grant_change(
            reply.grant.as_ref(),
            reply.audit_seq,
            "revoked",
            &format!("its stored credential was dropped; {there}"),
            output,
        )?,
    }
    if provider.outcome == "failed" {
        return Err(Failure::new(
            FAILURE,
            format!(
                "the grant is revoked here (audit #{}), but its refresh token was not revoked at the identity provider: {}",
                reply.audit_seq, provider.error
            ),
        ));
    }
    Ok(())
}

fn status_request(args: crate::cli::GrantArgs) -> pb::ConnectionStatusRequest {
    pb::ConnectionStatusRequest {
        server: args.server,
        connection: args.connection,
        reason: args.reason,
    }
}

/// A changed grant: the grant with its audit seq as JSON, or one line saying
/// what was `done` (and `then`, when something else happened too).
fn print_grant_change(
    changed: Option<&pb::ConnectionGrant>,
    audit_seq: u64,
    done: &str,
    then: &str,
    output: Output,
) -> Result<(), Failure> {
    let mut v = changed.map(grant).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("audit_seq".into(), json!(audit_seq));
    }
    match output {
        Output::Json | Output::Sarif => print_json(&v),
        Output::Table => print_text(&format!(
            "{done} {}'s grant for {} (audit #{audit_seq}); status {}{}",
            s(&v["server"]),
            s(&v["connection"]),
            s(&v["status"]),
            if then.is_empty() {
                String::new()
            } else {
                format!("; {then}")
            }
        )),
    }
}

fn words(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// JSON form of a grant (the proto's field names).
pub fn grant(g: &pb::ConnectionGrant) -> Value {
    json!({
        "server": g.server,
        "connection": g.connection,
        "declared_scopes": g.declared_scopes,
        "granted_scopes": g.granted_scopes,
        "approved_by": g.approved_by,
        "approved_at": g.approved_at,
        "last_used": if g.last_used.is_empty() { Value::Null } else { json!(g.last_used) },
        "use_count": g.use_count,
        "status": g.status,
        "status_reason": g.status_reason,
        "unattended": g.unattended,
    })
}

fn account(a: &pb::LinkedAccount) -> Value {
    json!({
        "sub": a.sub,
        "connection": a.connection,
        "account_id": a.account_id,
        "linked_at": a.linked_at,
    })
}

/// `GITHUB_TOKEN` for `github`, `GOOGLE_OAUTH2_TOKEN` for `google-oauth2`.
pub fn default_env_var(connection: &str) -> String {
    let mut var: String = connection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    var.push_str("_TOKEN");
    var
}

fn valid_env_var(var: &str) -> bool {
    let mut chars = var.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `VAR=CONNECTION`.
fn parse_env(spec: &str) -> Result<(String, String), Failure> {
    let (var, connection) = spec.split_once('=').ok_or_else(|| {
        Failure::new(
            USAGE,
            format!("--env {spec:?}: expected VAR=CONNECTION, e.g. GITHUB_TOKEN=github"),
        )
    })?;
    if !valid_env_var(var) || connection.is_empty() {
        return Err(Failure::new(
            USAGE,
            format!("--env {spec:?}: VAR must be a shell variable name and CONNECTION not empty"),
        ));
    }
    Ok((var.to_owned(), connection.to_owned()))
}

/// `mcp exec NAME [--env VAR=CONNECTION] -- COMMAND ARGS…`: asks the daemon for
/// each connection's token, puts them in the child's environment only (never
/// argv, never disk) and replaces this process with the server.
pub async fn exec(client: &mut Client, args: ExecArgs) -> Result<(), Failure> {
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(Failure::new(USAGE, "give the server command after --"));
    };
    let mut wanted = args
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    if wanted.is_empty() {
        let reply = client
            .list_connections(pb::ListConnectionsRequest {
                server: args.name.clone(),
            })
            .await?
            .into_inner();
        // Revoked grants stay in: the start fails and says so, rather than
        // starting a server quietly without the credential it expects.
        wanted = reply
            .grants
            .iter()
            .map(|g| (default_env_var(&g.connection), g.connection.clone()))
            .collect();
        note_suspended(&reply.grants);
    }
    if wanted.is_empty() {
        // No credentials involved: still only start an allowed server.
        let reply = client
            .check_target(pb::TargetRef {
                kind: pb::TargetKind::Mcp as i32,
                name: args.name.clone(),
            })
            .await?
            .into_inner();
        if reply.verdict != pb::Verdict::Allowed as i32 {
            return Err(Failure::new(
                PERMISSION_DENIED,
                format!(
                    "MCP server {} is not allowed{}",
                    args.name,
                    if reply.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", reply.reason)
                    }
                ),
            ));
        }
    }
    let mut command = std::process::Command::new(program);
    command.args(program_args);
    // Our own operator token is not the server's business.
    command.env_remove(crate::auth::TOKEN_ENV);
    for (var, connection) in &wanted {
        let token = client
            .get_connection_token(pb::GetConnectionTokenRequest {
                server: args.name.clone(),
                connection: connection.clone(),
                // A start always asks the provider: revocations show at once.
                fresh: true,
            })
            .await
            .map_err(|status| token_failure(&args.name, connection, &status))?
            .into_inner();
        command.env(var, token.access_token);
    }
    let err = command.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    Err(Failure::new(code, format!("cannot run {program}: {err}")))
}

/// Says on stderr that a suspended grant's token request may wait for its
/// approver (the daemon asks over CIBA when step-up is on).
fn note_suspended(grants: &[pb::ConnectionGrant]) {
    for g in grants.iter().filter(|g| g.status == "suspended") {
        eprintln!(
            "{}",
            render::escape_text(&format!(
                "{}'s grant for {} is suspended: its approver is asked to resume it (with step-up on); waiting…",
                g.server, g.connection
            ))
        );
    }
}

/// A failed token request, saying which server and connection, with the
/// identity provider's unavailability told apart from the daemon's.
fn token_failure(server: &str, connection: &str, status: &tonic::Status) -> Failure {
    let mut failure = Failure::from_status(status);
    if status.code() == tonic::Code::Unavailable && !status.message().is_empty() {
        failure.code = u8::try_from(crate::auth::exit_codes::UNAVAILABLE).unwrap_or(FAILURE);
    }
    failure.message = format!("no {connection} token for {server}: {}", failure.message);
    failure
}

/// What happened at the identity provider, as `-o json` shows it.
pub(crate) fn at_provider_json(provider: &pb::ProviderRevocation) -> Value {
    json!({
        "outcome": provider.outcome,
        "endpoint": provider.endpoint,
        "subject_sub": provider.subject_sub,
        "error": provider.error,
        "shared_with": provider.shared_with,
    })
}

/// What happened at the identity provider, in a sentence.
pub(crate) fn at_provider_text(provider: &pb::ProviderRevocation) -> String {
    match provider.outcome.as_str() {
        "revoked" => format!(
            "{}'s refresh token was revoked at the identity provider{}",
            provider.subject_sub,
            if provider.shared_with.is_empty() {
                String::new()
            } else {
                format!(
                    " (it also served {}, which will need re-approval)",
                    provider.shared_with.join(", ")
                )
            }
        ),
        "nothing_stored" => {
            "no refresh token is stored for it (it uses the caller's token): nothing to revoke at the identity provider".to_owned()
        }
        _ => format!(
            "NOT revoked at the identity provider: {}",
            provider.error
        ),
    }
}
