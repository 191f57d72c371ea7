//! The environment layer of the configuration: which `DEFENSECLAW_*`
//! variables are config keys, which plain ones are known, and the checks that
//! name the variable an operator actually set.

use std::collections::HashMap;

use super::error::ConfigError;

/// Prefix of every environment variable the daemon reads.
pub const ENV_PREFIX: &str = "DEFENSECLAW";

/// `DEFENSECLAW_*` variables that are not config keys but are read by the
/// daemon, the CLI or the test and benchmark harnesses (a shell may export the
/// CLI's for both). Anything else with the prefix and no `__` is a typo.
pub(super) const PLAIN_ENV_VARS: &[&str] = &[
    "DEFENSECLAW_HOME",
    "DEFENSECLAW_AUTH_CLIENT_SECRET",
    "DEFENSECLAW_LLM_API_KEY",
    defenseclaw_common::paths::DAEMON_UID_ENV,
    "DEFENSECLAW_SOCKET",
    "DEFENSECLAW_SESSION",
    "DEFENSECLAW_TOKEN",
    "DEFENSECLAW_BENCH_TOKEN",
    // The benchmark's write-path profile (crate::store::profile::PROFILE_ENV).
    "DEFENSECLAW_PROFILE_OUT",
];

/// Refuses a `DEFENSECLAW_*` variable that is neither a config key nor one of
/// [`PLAIN_ENV_VARS`], so `DEFENSECLAW_STEPUP_ENABLED=true` (one underscore)
/// is an error rather than a setting silently not applied.
pub(super) fn check_env_names(env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut unknown: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| {
            k.starts_with(&prefix)
                && !k.contains("__")
                && !PLAIN_ENV_VARS.contains(k)
                && !is_export_token(k)
        })
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(ConfigError::Invalid(format!(
            "environment variable {name} is not a DefenseClaw setting: config keys are \
             {ENV_PREFIX}_<SECTION>__<KEY> (two underscores, e.g. {ENV_PREFIX}_LOG__LEVEL); \
             other variables are {}",
            PLAIN_ENV_VARS.join(", ")
        ))),
    }
}

/// `DEFENSECLAW_EXPORT_<NAME>_TOKEN`: a sink's secret (read through the
/// secret sources, never a config key).
fn is_export_token(key: &str) -> bool {
    key.strip_prefix(ENV_PREFIX)
        .and_then(|k| k.strip_prefix("_EXPORT_"))
        .and_then(|k| k.strip_suffix("_TOKEN"))
        .is_some_and(|name| {
            crate::export::settings::valid_name(&name.to_ascii_lowercase())
                && !name.bytes().any(|b| b.is_ascii_lowercase())
        })
}

/// A log filter must say what to log: every directive is a level, or
/// `target=level`. A bare word such as `loud` parses as "everything from target
/// `loud`", which would silence the daemon.
pub(super) fn check_log_level(filter: &str) -> Result<(), ConfigError> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let invalid = |reason: String| ConfigError::Value {
        field: "log.level",
        reason,
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{directive:?} names no level (one of {}, or target=level)",
                LEVELS.join(", ")
            )));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// The config crate names the key of a bad environment value
/// (``for key `server.max_connections` in the environment``); add the variable
/// the operator actually set.
pub(super) fn name_env_variable(message: &str) -> String {
    const MARK: &str = " in the environment";
    let Some(end) = message.find(MARK) else {
        return message.to_owned();
    };
    let key = message[..end]
        .rsplit_once("for key `")
        .and_then(|(_, rest)| rest.strip_suffix('`'));
    match key {
        Some(key) => {
            let variable = format!(
                "{ENV_PREFIX}_{}",
                key.replace('.', "__").to_ascii_uppercase()
            );
            format!("{message} (variable {variable})")
        }
        None => message.to_owned(),
    }
}

/// The env entries that are config keys: `DEFENSECLAW_<SECTION>__<KEY>`.
pub(super) fn config_env(env: &HashMap<String, String>) -> HashMap<String, String> {
    let prefix = format!("{ENV_PREFIX}_");
    env.iter()
        .filter(|(k, _)| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| rest.contains("__"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
