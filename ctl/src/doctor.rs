//! `doctor`: what the CLI can check on its side (the socket, the daemon's
//! answer and version, the operator's session), then the daemon's own checks
//! (`Diagnose`), each with a fix. Exit 15 when any check failed.

use std::path::Path;

use defenseclaw_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cli::Output;
use crate::exit::{DOCTOR_FAILED, Failure};
use crate::render::{self, print_json, print_text};

/// One line of the report.
struct Line {
    name: String,
    state: &'static str,
    detail: String,
    fix: String,
}

impl Line {
    fn new(
        name: &str,
        state: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            state,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Runs every check and prints the report.
pub async fn doctor(socket: &Path, output: Output) -> Result<(), Failure> {
    let lines = checks(socket).await;
    let failed = lines.iter().any(|l| l.state == "fail");
    match output {
        Output::Json | Output::Sarif => print_json(&json!({
            "ok": !failed,
            "checks": lines.iter().map(|l| json!({
                "name": l.name, "state": l.state, "detail": l.detail, "fix": l.fix,
            })).collect::<Vec<Value>>(),
        }))?,
        Output::Table => {
            let mut text = render::table(
                &["STATE", "CHECK", "DETAIL"],
                &lines
                    .iter()
                    .map(|l| vec![l.state.to_owned(), l.name.clone(), l.detail.clone()])
                    .collect::<Vec<_>>(),
            );
            let fixes: Vec<&Line> = lines.iter().filter(|l| !l.fix.is_empty()).collect();
            if !fixes.is_empty() {
                if !text.ends_with("\n\n") {
                    text.push('\n');
                }
                text.push_str("To fix:\n");
                for l in fixes {
                    text.push_str(&format!("  {}: {}\n", l.name, l.fix));
                }
            }
            print_text(&text)?;
        }
    }
    if failed {
        return Err(Failure::new(
            DOCTOR_FAILED,
            "doctor: at least one check failed",
        ));
    }
    Ok(())
}

async fn checks(socket: &Path) -> Vec<Line> {
    let cli_version = env!("CARGO_PKG_VERSION");
    let mut lines = Vec::new();
    // The socket first: the CLI refuses a socket it does not trust (exit 77),
    // so every other answer depends on it.
    let mut plain = match crate::client::connect(socket).await {
        Ok(client) => client,
        Err(f) => {
            let fix = if f.code == crate::exit::PERMISSION_DENIED {
                "run as the daemon's user or root, or ask for the socket group (`[server] socket_mode`)"
            } else {
                "start the daemon (`systemctl start defenseclawd`, or `defenseclawd` for a user install) or pass --socket"
            };
            lines.push(Line::new("socket", "fail", first_line(&f.message), fix));
            return lines;
        }
    };
    lines.push(Line::new(
        "socket",
        "ok",
        format!("{} answers", socket.display()),
        "",
    ));
    let auth = plain.get_auth_config(pb::GetAuthConfigRequest {}).await;
    let oidc = auth.as_ref().is_ok_and(|a| a.get_ref().mode == "oidc");
    let token = crate::auth::bearer_token_if_configured().await;
    lines.push(session_line(oidc, &token));
    let token = token.ok().flatten();
    let bearer = match crate::client::Bearer::new(token.as_ref().map(|t| t.expose_secret())) {
        Ok(b) => b,
        Err(f) => {
            lines.push(Line::new("daemon", "fail", f.message, ""));
            return lines;
        }
    };
    let mut client = match crate::client::connect_with(socket, bearer).await {
        Ok(c) => c,
        Err(f) => {
            lines.push(Line::new("daemon", "fail", first_line(&f.message), ""));
            return lines;
        }
    };
    match client.diagnose(pb::DiagnoseRequest {}).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            if reply.version == cli_version {
                lines.push(Line::new(
                    "daemon",
                    "ok",
                    format!("defenseclawd {} (same as this CLI)", reply.version),
                    "",
                ));
            } else {
                lines.push(Line::new(
                    "daemon",
                    "warn",
                    format!(
                        "defenseclawd {} but defenseclawctl {cli_version}",
                        reply.version
                    ),
                    "install the CLI and the daemon from the same release",
                ));
            }
            lines.extend(reply.checks.into_iter().map(daemon_line));
        }
        Err(status) => lines.push(Line::new(
            "daemon",
            "fail",
            format!(
                "the daemon refused its checks: {:?} {}",
                status.code(),
                status.message()
            ),
            if status.code() == tonic::Code::Unauthenticated {
                "log in: defenseclawctl auth login"
            } else {
                ""
            },
        )),
    }
    lines
}

fn session_line(
    oidc: bool,
    token: &Result<Option<crate::auth::BearerToken>, crate::auth::AuthError>,
) -> Line {
    if !oidc {
        return Line::new(
            "session",
            "ok",
            "local mode: the daemon knows callers by their uid; no login needed",
            "",
        );
    }
    match token {
        Ok(Some(_)) => Line::new("session", "ok", "logged in; the session token is valid", ""),
        Ok(None) => Line::new(
            "session",
            "warn",
            "not logged in: changes will be refused",
            "defenseclawctl auth login",
        ),
        Err(e) => Line::new(
            "session",
            "fail",
            first_line(&e.to_string()),
            "defenseclawctl auth logout, then defenseclawctl auth login",
        ),
    }
}

fn daemon_line(check: pb::DiagnosticCheck) -> Line {
    use pb::diagnostic_check::State;
    let state = match State::try_from(check.state) {
        Ok(State::Ok) => "ok",
        Ok(State::Warn) => "warn",
        Ok(State::Fail) => "fail",
        Ok(State::Unspecified) | Err(_) => "warn",
    };
    Line {
        name: check.name,
        state,
        detail: check.detail,
        fix: check.fix,
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}
