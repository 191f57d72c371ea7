//! `connections unlink CONNECTION [--account ID]`: deletes the caller's linked account at
//! the identity provider (`DELETE <issuer>me/v1/connected-accounts/accounts/{id}`, with the
//! same MRRT-or-device-flow token as `connections connect`), then tells the daemon, which
//! marks every grant using it `unlinked`. A provider failure is told to the daemon too (the
//! grants are cut here all the same) and ends the command with the provider's exit code.

use std::path::Path;

use defenseclaw_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::flow::{ConnectedAccount, check_connection_name, issuer_from_daemon};
use super::my_account::MyAccount;
use crate::auth::{AudienceRequest, Auth, my_account_audience};
use crate::cli::{Output, UnlinkArgs};
use crate::client;
use crate::exit::{self, Failure};

/// Scopes to find and delete connected accounts (My Account API).
const UNLINK_SCOPES: [&str; 2] = ["read:me:connected_accounts", "delete:me:connected_accounts"];

#[derive(Deserialize)]
struct Accounts {
    #[serde(default)]
    accounts: Vec<ConnectedAccount>,
}

/// What happened at the provider.
struct AtProvider {
    /// `deleted`, `not_found` or `failed`.
    outcome: &'static str,
    /// The account (empty when it could not be learned).
    account_id: String,
    /// The failure, for the daemon and the exit code.
    failure: Option<Failure>,
}

/// `connections unlink CONNECTION [--account ID] [--no-browser]`.
pub async fn unlink(socket: &Path, args: UnlinkArgs, output: Output) -> Result<(), Failure> {
    if output == Output::Sarif {
        return Err(Failure::new(
            exit::USAGE,
            "-o sarif is only for scan commands",
        ));
    }
    check_connection_name(&args.connection)?;
    if let Some(id) = &args.account {
        defenseclaw_common::names::account_id("--account", id)
            .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    }
    let auth = Auth::from_env()?;
    let json = output == Output::Json || !auth.console().stdout_is_tty();
    let at_provider = match delete_at_provider(socket, &auth, &args, json).await {
        Ok(done) => done,
        // Nothing was asked of the provider that could be half done: stop here.
        Err(f) if f.code == exit::USAGE || f.code == exit::CANCELLED => return Err(f),
        Err(f) => AtProvider {
            outcome: "failed",
            account_id: args.account.clone().unwrap_or_default(),
            failure: Some(f),
        },
    };
    let bearer = client::Bearer::new(
        crate::auth::bearer_token_if_configured()
            .await?
            .as_ref()
            .map(|t| t.expose_secret()),
    )?;
    let said_there = match (&at_provider.failure, at_provider.outcome) {
        (Some(f), _) => format!("NOT deleted at the identity provider: {}", f.message),
        (None, "not_found") => "no such account was linked at the identity provider".to_owned(),
        (None, _) => format!(
            "deleted at the identity provider (account {})",
            at_provider.account_id
        ),
    };
    let mut c = client::connect_with(socket, bearer).await.map_err(|f| {
        Failure::new(
            f.code,
            format!(
                "your {} account was {said_there}, but defenseclawd could not be told, so its grants are not marked unlinked: {}",
                args.connection, f.message
            ),
        )
    })?;
    let reply = c
        .unlink_connected_account(pb::UnlinkConnectedAccountRequest {
            connection: args.connection.clone(),
            account_id: at_provider.account_id.clone(),
            provider_outcome: at_provider.outcome.to_owned(),
            provider_error: at_provider
                .failure
                .as_ref()
                // Within the daemon's bound (2000 bytes), without control characters.
                .map(|f| {
                    f.message
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .take(500)
                        .collect()
                })
                .unwrap_or_default(),
        })
        .await
        .map_err(|s| {
            let f = Failure::from_status(&s);
            Failure::new(
                f.code,
                format!(
                    "your {} account was {said_there}, but defenseclawd refused to mark its grants unlinked: {}",
                    args.connection, f.message
                ),
            )
        })?
        .into_inner();
    let grants: Vec<Value> = reply.grants.iter().map(crate::connections::grant).collect();
    if json {
        crate::render::print_json(&json!({
            "connection": args.connection,
            "account_id": at_provider.account_id,
            "at_provider": {
                "outcome": at_provider.outcome,
                "error": at_provider.failure.as_ref().map(|f| f.message.clone()),
            },
            "grants_unlinked": grants,
            "record_removed": reply.record_removed,
            "audit_seq": reply.audit_seq,
        }))?;
    } else {
        let names: Vec<String> = reply
            .grants
            .iter()
            .map(|g| format!("{}/{}", g.server, g.connection))
            .collect();
        crate::render::print_text(&format!(
            "Your {} account was {said_there}; {} (audit #{}).",
            args.connection,
            if names.is_empty() {
                "no grant used it".to_owned()
            } else {
                format!("marked unlinked: {}", names.join(", "))
            },
            reply.audit_seq
        ))?;
    }
    match at_provider.failure {
        Some(f) => Err(Failure::new(
            f.code,
            format!(
                "the grants are unlinked here (audit #{}), but the account was not deleted at the identity provider: {}",
                reply.audit_seq, f.message
            ),
        )),
        None => Ok(()),
    }
}

/// Finds the account (the one on CONNECTION, or `--account`) and deletes it.
async fn delete_at_provider(
    socket: &Path,
    auth: &Auth,
    args: &UnlinkArgs,
    json: bool,
) -> Result<AtProvider, Failure> {
    let (issuer, client_id) = match auth.load_session()? {
        Some(s) if !s.client_id.is_empty() => (s.issuer, s.client_id),
        _ => issuer_from_daemon(socket).await?,
    };
    let audience = my_account_audience(&issuer);
    let token = auth
        .token_for_audience(
            &AudienceRequest {
                issuer,
                client_id,
                audience: audience.clone(),
                scopes: UNLINK_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                no_browser: args.no_browser,
                json,
            },
            crate::auth::ctrl_c(),
        )
        .await?;
    let api = MyAccount {
        http: auth.http(),
        base: format!("{audience}v1/connected-accounts/"),
        token: &token,
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("connection", &args.connection);
    let listed: Accounts = api
        .get(&format!("accounts?{}", query.finish()), &args.connection)
        .await?;
    let mine: Vec<&ConnectedAccount> = listed
        .accounts
        .iter()
        .filter(|a| a.connection == args.connection)
        .collect();
    let account = match (&args.account, mine.as_slice()) {
        (Some(id), _) => match mine.iter().find(|a| &a.id == id) {
            Some(a) => a.id.clone(),
            None => {
                return Ok(AtProvider {
                    outcome: "not_found",
                    account_id: id.clone(),
                    failure: None,
                });
            }
        },
        (None, []) => {
            return Ok(AtProvider {
                outcome: "not_found",
                account_id: String::new(),
                failure: None,
            });
        }
        (None, [one]) => one.id.clone(),
        (None, several) => {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "you have {} {} accounts linked ({}); say which with --account ID",
                    several.len(),
                    args.connection,
                    several
                        .iter()
                        .map(|a| a.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let path = format!(
        "accounts/{}",
        url::form_urlencoded::byte_serialize(account.as_bytes()).collect::<String>()
    );
    match api.delete(&path, &args.connection).await {
        Ok(()) => Ok(AtProvider {
            outcome: "deleted",
            account_id: account,
            failure: None,
        }),
        Err(f) if f.code == exit::NOT_FOUND => Ok(AtProvider {
            outcome: "not_found",
            account_id: account,
            failure: None,
        }),
        Err(f) => Ok(AtProvider {
            outcome: "failed",
            account_id: account,
            failure: Some(f),
        }),
    }
}
