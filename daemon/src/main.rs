//! `defenseclawd`: parse arguments, load config, start logging, run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use defenseclawd::config::{ConfigFile, Settings};
use defenseclawd::daemon::{self, DaemonOptions};
use defenseclawd::secrets::SecretSources;

/// Exit codes, for `--help` and the README.
const EXIT_CODES: &str = "\
Exit codes:
   0  stopped cleanly (or --check-config / --print-example-config succeeded)
   1  stopped with an error (socket taken, store unreadable, another daemon on the state directory, ...)
  78  invalid configuration (file, environment variable or state directory), also from --check-config";

/// DefenseClaw governance daemon.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Args {
    /// Config file (default: /etc/defenseclaw/defenseclawd.toml when present).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Unix socket to serve on (overrides server.socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit; non-zero if invalid.
    #[arg(long)]
    check_config: bool,
    /// Print the commented example configuration (every key, with its default) and exit.
    #[arg(long, conflicts_with_all = ["check_config", "config", "socket"])]
    print_example_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_example_config {
        // Needs no valid configuration: it is how one starts writing one.
        print!("{}", defenseclawd::config::EXAMPLE_CONFIG);
        return ExitCode::SUCCESS;
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let config_file = match args.config {
        Some(path) => ConfigFile::Explicit(path),
        None => {
            // A user install's own file (written by `defenseclawctl init`), when there is one.
            let user = defenseclaw_common::paths::default_config_path();
            if user != std::path::Path::new(defenseclawd::config::SYSTEM_CONFIG_PATH)
                && user.is_file()
            {
                ConfigFile::User(user)
            } else {
                ConfigFile::System
            }
        }
    };
    let mut settings = match Settings::load(&config_file, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("defenseclawd: {e}");
            return ExitCode::from(78);
        }
    };
    if let Some(socket) = args.socket {
        settings.server.socket = Some(socket);
    }
    let opts = match DaemonOptions::new(settings, config_file, env) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("defenseclawd: {e}");
            return ExitCode::from(78);
        }
    };
    if args.check_config {
        return check_config(&opts);
    }
    let log = defenseclawd::telemetry::init(&opts.settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("defenseclawd")
        // Store reads run on blocking threads (scans have their own pool,
        // see scan_pool); a small pool keeps memory and contention down.
        .max_blocking_threads(16)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("defenseclawd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(opts, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "defenseclawd stopped with an error");
            eprintln!("defenseclawd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(opts: &DaemonOptions) -> ExitCode {
    println!("# effective configuration");
    println!("# state directory: {}", opts.state_dir.display());
    println!("# socket: {}", opts.settings.socket_path().display());
    println!(
        "# store: {}",
        opts.settings.store_path(&opts.state_dir).display()
    );
    let secrets = match SecretSources::load(&opts.env, &opts.state_dir) {
        Ok(secrets) => secrets,
        Err(e) => {
            eprintln!("defenseclawd: {e}");
            return ExitCode::from(78);
        }
    };
    for name in defenseclawd::secrets::KNOWN_SECRETS {
        let state = match secrets.get(*name) {
            Ok(Some((_, origin))) => format!("set (from {origin:?}), value redacted"),
            Ok(None) => "not set".to_owned(),
            Err(e) => format!("unreadable: {e}"),
        };
        println!(
            "# secret {} / credential {}: {state}",
            name.env, name.credential
        );
    }
    // Step-up without the daemon's client secret cannot ask anyone: the start refuses it, so does the check.
    if opts.settings.stepup.enabled
        && !matches!(
            secrets.get(defenseclawd::secrets::AUTH_CLIENT_SECRET),
            Ok(Some(_))
        )
    {
        eprintln!(
            "defenseclawd: invalid configuration: stepup.enabled: [stepup] enabled needs the daemon's client secret (DEFENSECLAW_AUTH_CLIENT_SECRET, the credential auth-client-secret, or <state dir>/.env)"
        );
        return ExitCode::from(78);
    }
    // The token vault key is checked like at start (mode, owner, place, length).
    let key = defenseclawd::governance::vault::seal::Sealer::load(
        secrets.credentials_dir(),
        opts.settings.token_vault.key_file.as_deref(),
        &opts.state_dir,
    );
    match key {
        Ok(Some(sealer)) => println!(
            "# token vault key: loaded from {:?}, value redacted",
            sealer.source()
        ),
        Ok(None) => println!("# token vault key: not configured (unattended exchanges off)"),
        Err(e) => {
            eprintln!("defenseclawd: {e}");
            return ExitCode::from(78);
        }
    }
    println!("{}", opts.settings);
    ExitCode::SUCCESS
}
