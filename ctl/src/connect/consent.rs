//! Consent where the operator approves: after `mcp allow NAME --connection C…`, whether the
//! operator's own account (the credential `mcp exec` exchanges) is linked for each `C`,
//! asked of the My Account API with the session's refresh token only. Not linked: on a
//! terminal the `connections connect C` flow runs right there; without one the command
//! fails (exit 4) naming the exact command to run. Without a session (a token in
//! `DEFENSECLAW_TOKEN`, local mode) nothing can be checked and nothing is said.

use std::io::IsTerminal;
use std::path::Path;

use super::flow::{ConnectOptions, ConnectedAccount, link_account};
use super::my_account::MyAccount;
use crate::auth::{AudienceRequest, Auth, my_account_audience};
use crate::cli::Output;
use crate::client;
use crate::exit::{self, Failure};

#[derive(serde::Deserialize)]
struct Accounts {
    #[serde(default)]
    accounts: Vec<ConnectedAccount>,
}

/// What an `mcp allow` with connections asked for.
#[derive(Debug, Clone)]
pub struct AllowedConnections {
    /// The MCP server.
    pub server: String,
    /// Its connections.
    pub connections: Vec<String>,
    /// The provider scopes asked for (space-separated; empty: the connections' defaults).
    pub scopes: String,
}

/// Checks (and on a terminal, links) the caller's account for each allowed connection.
pub async fn ensure_linked(
    socket: &Path,
    allowed: &AllowedConnections,
    output: Output,
) -> Result<(), Failure> {
    let auth = Auth::from_env()?;
    let interactive = output == Output::Table
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    for connection in &allowed.connections {
        match linked(&auth, connection).await {
            Ok(Some(true)) | Ok(None) => continue,
            Ok(Some(false)) => {}
            Err(why) => {
                eprintln!(
                    "{}",
                    crate::render::escape_text(&format!(
                        "note: could not check whether your {connection} account is linked ({why}); if `mcp exec` says it is not, run `defenseclawctl connections connect {connection}`"
                    ))
                );
                continue;
            }
        }
        let command = connect_command(connection, &allowed.scopes);
        if !interactive {
            return Err(Failure::new(
                exit::FAILED_PRECONDITION,
                format!(
                    "{} may use {connection}, but no {connection} account is linked to you at the identity provider; link it with `{command}`",
                    allowed.server
                ),
            ));
        }
        eprintln!(
            "{}",
            crate::render::escape_text(&format!(
                "{} may use {connection}, but no {connection} account is linked to you: linking it now ({command})",
                allowed.server
            ))
        );
        let bearer = client::Bearer::new(
            crate::auth::bearer_token_if_configured()
                .await?
                .as_ref()
                .map(|t| t.expose_secret()),
        )?;
        let opts = ConnectOptions {
            connection: connection.clone(),
            scopes: allowed
                .scopes
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            no_browser: false,
            json: false,
        };
        link_account(socket, bearer, &auth, &opts, crate::auth::ctrl_c()).await?;
    }
    Ok(())
}

/// `defenseclawctl connections connect C [--scopes "…"]`.
fn connect_command(connection: &str, scopes: &str) -> String {
    if scopes.trim().is_empty() {
        format!("defenseclawctl connections connect {connection}")
    } else {
        format!(
            "defenseclawctl connections connect {connection} --scopes \"{}\"",
            scopes.trim()
        )
    }
}

/// Whether the session's user has an account on `connection`: `None` without a session
/// (nothing to ask with); `Err` when asking failed.
async fn linked(auth: &Auth, connection: &str) -> Result<Option<bool>, String> {
    let Some(session) = auth.load_session().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if session.refresh_token.is_none() || session.client_id.is_empty() {
        return Ok(None);
    }
    let audience = my_account_audience(&session.issuer);
    let token = auth
        .token_from_session(&AudienceRequest {
            issuer: session.issuer.clone(),
            client_id: session.client_id.clone(),
            audience: audience.clone(),
            scopes: vec!["read:me:connected_accounts".to_owned()],
            no_browser: true,
            json: false,
        })
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the session cannot get a My Account API token".to_owned())?;
    let api = MyAccount {
        http: auth.http(),
        base: format!("{audience}v1/connected-accounts/"),
        token: &token,
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("connection", connection);
    let listed: Accounts = api
        .get(&format!("accounts?{}", query.finish()), connection)
        .await
        .map_err(|f| f.message)?;
    Ok(Some(
        listed.accounts.iter().any(|a| a.connection == connection),
    ))
}

#[cfg(test)]
mod tests {
    use super::connect_command;

    #[test]
    fn the_command_to_run_carries_the_scopes() {
        assert_eq!(
            connect_command("github", ""),
            "defenseclawctl connections connect github"
        );
        assert_eq!(
            connect_command("github", "repo read:org"),
            "defenseclawctl connections connect github --scopes \"repo read:org\""
        );
    }
}
