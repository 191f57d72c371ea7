//! Token Vault from the CLI: the auth inventory, revoking grants, and `mcp exec`,
//! which starts an MCP server with its connection tokens in its environment.

use defenseclaw_proto::v1 as pb;

use crate::cli::{ConnectionsCommand, ExecArgs, Output};
use crate::client::Client;
use crate::exit::Failure;

/// `connections list|revoke` (`connect` runs before a daemon client exists).
pub async fn command(
    _client: &mut Client,
    _action: ConnectionsCommand,
    _output: Output,
) -> Result<(), Failure> {
    let _ = pb::ListConnectionsRequest::default();
    Err(Failure::new(crate::exit::FAILURE, "not yet implemented"))
}

/// `mcp exec NAME [--env VAR=CONNECTION] -- COMMAND ARGS…`
pub async fn exec(_client: &mut Client, _args: ExecArgs) -> Result<(), Failure> {
    Err(Failure::new(crate::exit::FAILURE, "not yet implemented"))
}
