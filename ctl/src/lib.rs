//! defenseclawctl: a thin client of defenseclawd's gRPC API on its Unix socket.

pub mod approvals;
pub mod auth;
pub mod cli;
pub mod client;
pub mod commands;
pub mod connect;
pub mod connections;
pub mod connections_ui;
pub mod doctor;
pub mod examples;
pub mod exit;
pub mod export_verify;
pub mod ibom;
pub mod init;
pub mod meta;
pub mod quarantine;
pub mod render;
pub mod scan;

use std::process::ExitCode;

use clap::Parser;

use crate::exit::Failure;

async fn auth_command(
    socket: &std::path::Path,
    action: cli::AuthCommand,
    output: cli::Output,
) -> Result<(), Failure> {
    let json = output == cli::Output::Json;
    match action {
        cli::AuthCommand::Login {
            issuer,
            audience,
            client_id,
            scopes,
            no_browser,
        } => {
            // The daemon says where to log in, unless every flag is given.
            let from_daemon = if issuer.is_none() || audience.is_none() || client_id.is_none() {
                let mut c = client::connect(socket).await?;
                Some(
                    c.get_auth_config(defenseclaw_proto::v1::GetAuthConfigRequest {})
                        .await?
                        .into_inner(),
                )
            } else {
                None
            };
            if let Some(config) = &from_daemon
                && config.mode == "local"
                && issuer.is_none()
            {
                return local_mode_needs_no_login(json);
            }
            let missing: Vec<&str> = [
                (
                    issuer.is_none(),
                    from_daemon.as_ref().map(|c| &c.issuer),
                    "--issuer",
                ),
                (
                    audience.is_none(),
                    from_daemon.as_ref().map(|c| &c.audience),
                    "--audience",
                ),
                (
                    client_id.is_none(),
                    from_daemon.as_ref().map(|c| &c.cli_client_id),
                    "--client-id",
                ),
            ]
            .into_iter()
            .filter(|(unset, daemon, _)| *unset && daemon.is_none_or(|v| v.is_empty()))
            .map(|(_, _, flag)| flag)
            .collect();
            if !missing.is_empty() {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "the daemon's [auth] section does not say where to log in; pass {}",
                        missing.join(" and ")
                    ),
                ));
            }
            let pick = |flag: Option<String>,
                        daemon: Option<&String>,
                        what: &str|
             -> Result<String, Failure> {
                flag.or_else(|| daemon.filter(|v| !v.is_empty()).cloned())
                    .ok_or_else(|| {
                        Failure::new(
                            exit::USAGE,
                            format!(
                                "the daemon has no [auth] {what} configured; pass --{}",
                                what.replace('_', "-")
                            ),
                        )
                    })
            };
            let opts = auth::LoginOptions {
                issuer: pick(issuer, from_daemon.as_ref().map(|c| &c.issuer), "issuer")?,
                audience: pick(
                    audience,
                    from_daemon.as_ref().map(|c| &c.audience),
                    "audience",
                )?,
                client_id: pick(
                    client_id,
                    from_daemon.as_ref().map(|c| &c.cli_client_id),
                    "client_id",
                )?,
                scopes: if scopes.is_empty() {
                    from_daemon.map(|c| c.scopes).unwrap_or_default()
                } else {
                    scopes
                },
                no_browser,
                json,
            };
            auth::login(opts).await?;
            Ok(())
        }
        cli::AuthCommand::Status => {
            auth::status(json).await?;
            Ok(())
        }
        cli::AuthCommand::Logout => {
            auth::logout(json).await?;
            Ok(())
        }
    }
}

/// `auth login` against a local-mode daemon: nothing to log in to, and why.
fn local_mode_needs_no_login(json: bool) -> Result<(), Failure> {
    const WHY: &str = "defenseclawd runs in local mode: it knows each caller by the Unix user \
                       behind the socket (peer credentials), so there is no login. Operator \
                       login applies to a daemon with [auth] mode = \"oidc\".";
    if json {
        render::print_json(&serde_json::json!({
            "mode": "local",
            "login_needed": false,
            "reason": WHY,
        }))
    } else {
        render::write_line(WHY)
    }
}

/// What `mcp allow NAME --connection C…` allows, for the consent check that follows it.
fn allowed_connections(command: &cli::Command) -> Option<connect::AllowedConnections> {
    match command {
        cli::Command::Mcp {
            action: cli::McpCommand::Allow(a),
        } if !a.connections.is_empty() => Some(connect::AllowedConnections {
            server: a.decide.name.clone(),
            connections: a.connections.clone(),
            scopes: a.scopes.clone().unwrap_or_default(),
        }),
        _ => None,
    }
}

/// Parses the command line, runs the command, returns the exit code.
pub fn main_entry() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("defenseclawctl: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        let socket = client::resolve_socket(cli.socket);
        let csv = cli.output == cli::OutputFormat::Csv;
        let (output, wide) = cli.output.resolve();
        render::set_wide(wide);
        match &cli.command {
            cli::Command::Version => return meta::version(&socket, output).await,
            cli::Command::Doctor => return doctor::doctor(&socket, output).await,
            cli::Command::Init {
                config,
                gateway,
                force,
            } => return init::init(config.clone(), *gateway, *force, output).await,
            cli::Command::Completions { shell } => return meta::completions(*shell),
            cli::Command::Man { out_dir } => return meta::man_pages(out_dir),
            _ => {}
        }
        if let cli::Command::Auth { action } = cli.command {
            return auth_command(&socket, action, output).await;
        }
        if let cli::Command::Connections {
            action: cli::ConnectionsCommand::Connect(args),
        } = cli.command
        {
            return connect::connect(&socket, args, output).await;
        }
        if let cli::Command::Connections {
            action: cli::ConnectionsCommand::Unlink(args),
        } = cli.command
        {
            return connect::unlink(&socket, args, output).await;
        }
        // Offline scans and rule commands need no daemon.
        let command = match cli.command {
            cli::Command::Skill {
                action: cli::SkillCommand::Scan(args),
            } if args.common.offline => {
                let args = args.into();
                return scan::offline(defenseclaw_proto::v1::TargetKind::Skill, &args, output);
            }
            cli::Command::Mcp {
                action: cli::McpCommand::Scan(args),
            } if args.common.offline => {
                let args = args.into();
                return scan::offline(defenseclaw_proto::v1::TargetKind::Mcp, &args, output);
            }
            cli::Command::Rule { action } => return scan::rules(&action, output),
            cli::Command::Audit {
                action:
                    cli::AuditCommand::Verify {
                        from_export: Some(file),
                        public_key,
                        ..
                    },
            } => return commands::verify_export(&file, public_key.as_deref(), output),
            other => other,
        };
        let scan_command = matches!(
            &command,
            cli::Command::Skill {
                action: cli::SkillCommand::Scan(_) | cli::SkillCommand::Install(_)
            } | cli::Command::Mcp {
                action: cli::McpCommand::Scan(_)
            }
        );
        if output == cli::Output::Sarif && !scan_command {
            return Err(Failure::new(
                exit::USAGE,
                "-o sarif is only for scan commands",
            ));
        }
        let export = matches!(
            &command,
            cli::Command::Connections {
                action: cli::ConnectionsCommand::Export(_)
            }
        );
        if csv && !export {
            return Err(Failure::new(
                exit::USAGE,
                "-o csv is only for connections export",
            ));
        }
        if let cli::Command::Connections {
            action: cli::ConnectionsCommand::Ui(args),
        } = command
        {
            return connections_ui::serve(&socket, args).await;
        }
        let bearer = client::Bearer::new(
            auth::bearer_token_if_configured()
                .await?
                .as_ref()
                .map(|t| t.expose_secret()),
        )?;
        let consent = allowed_connections(&command);
        let mut client = client::connect_with(&socket, bearer).await?;
        // The inventory and the end user's own grants (`ibom.rs`).
        match command {
            cli::Command::Connections {
                action: cli::ConnectionsCommand::Export(args),
            } => return ibom::export(&mut client, args, csv, output).await,
            cli::Command::Connections {
                action: cli::ConnectionsCommand::List { mine: true, .. },
            } => return ibom::list_mine(&mut client, output).await,
            cli::Command::Connections {
                action:
                    cli::ConnectionsCommand::Revoke {
                        server,
                        connection,
                        reason,
                        mine: true,
                        ..
                    },
            } => {
                return ibom::revoke_mine(&mut client, server, connection, reason, output).await;
            }
            _ => {}
        }
        commands::run(&mut client, command, output, cli.no_wait).await?;
        match consent {
            Some(allowed) => connect::ensure_linked(&socket, &allowed, output).await,
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away: nothing is wrong (see `Failure::writing`).
        Err(failure) if failure.code == exit::OK => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("defenseclawctl: {}", render::escape_text(&failure.message));
            failure.exit_code()
        }
    }
}
