//! defenseclawctl: a thin client of defenseclawd's gRPC API on its Unix socket.

pub mod auth;
pub mod cli;
pub mod client;
pub mod commands;
pub mod exit;
pub mod render;

use std::process::ExitCode;

use clap::Parser;

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
        let mut client = client::connect(&socket).await?;
        commands::run(&mut client, cli.command, cli.output).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("defenseclawctl: {}", failure.message);
            failure.exit_code()
        }
    }
}
