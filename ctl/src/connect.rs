//! `connections connect`: Auth0 Connected Accounts from the CLI.

use std::path::Path;

use crate::cli::{ConnectArgs, Output};
use crate::exit::Failure;

/// Links the operator's account for a connection.
pub async fn connect(_socket: &Path, _args: ConnectArgs, _output: Output) -> Result<(), Failure> {
    Err(Failure::new(crate::exit::FAILURE, "not yet implemented"))
}
