//! Commands about the CLI itself: `version`, `completions` and the hidden `man`
//! (which packaging runs to write the man pages).

use std::path::Path;

use clap::CommandFactory;
use defenseclaw_proto::v1 as pb;
use serde_json::json;

use crate::cli::{Cli, CompletionShell, Output};
use crate::exit::{FAILURE, Failure};
use crate::render::{print_json, write_line};

/// `version`: the CLI's version, and the daemon's when it answers. Always
/// succeeds: a version is worth printing even with the daemon down.
pub async fn version(socket: &Path, output: Output) -> Result<(), Failure> {
    let cli = env!("CARGO_PKG_VERSION");
    let daemon = daemon_version(socket).await;
    match output {
        Output::Json | Output::Sarif => print_json(&json!({
            "cli": cli,
            "daemon": daemon.as_ref().ok(),
            "daemon_error": daemon.as_ref().err(),
        })),
        Output::Table => {
            write_line(&format!("defenseclawctl {cli}"))?;
            match daemon {
                Ok(v) => write_line(&format!("defenseclawd   {v}")),
                Err(why) => write_line(&format!("defenseclawd   unknown ({why})")),
            }
        }
    }
}

async fn daemon_version(socket: &Path) -> Result<String, String> {
    let token = crate::auth::bearer_token_if_configured()
        .await
        .map_err(|e| e.to_string())?;
    let bearer = crate::client::Bearer::new(token.as_ref().map(|t| t.expose_secret()))
        .map_err(|f| f.message)?;
    let mut client = crate::client::connect_with(socket, bearer)
        .await
        .map_err(|f| first_line(&f.message))?;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| s.message().to_owned())?;
    Ok(status.into_inner().version)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

/// `completions SHELL`: the completion script on stdout.
pub fn completions(shell: CompletionShell) -> Result<(), Failure> {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "defenseclawctl", &mut script);
    let script = String::from_utf8(script)
        .map_err(|e| Failure::new(FAILURE, format!("completion script is not UTF-8: {e}")))?;
    write_line(script.trim_end())
}

/// `man DIR`: one roff page per command and subcommand.
pub fn man_pages(out_dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Failure::new(FAILURE, format!("cannot create {}: {e}", out_dir.display())))?;
    let command = Cli::command();
    clap_mangen::generate_to(command, out_dir).map_err(|e| {
        Failure::new(
            FAILURE,
            format!("writing man pages into {}: {e}", out_dir.display()),
        )
    })
}
