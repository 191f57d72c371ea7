//! Tests of loading, layering and validating the configuration.
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_validate() {
    let s = Settings::load(&ConfigFile::None, &env(&[])).unwrap();
    assert_eq!(s.server.socket_mode_bits().unwrap(), 0o660);
    assert_eq!(s.log.level, "info");
}

#[test]
fn env_overrides_file_and_plain_vars_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        "[server]\nsocket = \"/tmp/from-file.sock\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    let s = Settings::load(
        &ConfigFile::Explicit(file),
        &env(&[
            ("DEFENSECLAW_SERVER__SOCKET", "/tmp/from-env.sock"),
            ("DEFENSECLAW_HOME", "/somewhere"),
            ("DEFENSECLAW_ACCESS__MUTATE_UIDS", "5,6"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.server.socket.as_deref(),
        Some(Path::new("/tmp/from-env.sock"))
    );
    assert_eq!(s.log.level, "debug");
    assert_eq!(s.access.mutate_uids, Some(vec![5, 6]));
}

#[test]
fn unknown_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(&file, "[server]\nsockett = \"/tmp/x\"\n").unwrap();
    let err = Settings::load(&ConfigFile::Explicit(file), &env(&[])).unwrap_err();
    assert!(err.to_string().contains("sockett"), "{err}");
    let err =
        Settings::load(&ConfigFile::None, &env(&[("DEFENSECLAW_LOG__LEVL", "x")])).unwrap_err();
    assert!(err.to_string().contains("levl"), "{err}");
}

#[test]
fn unknown_plain_variables_are_refused_by_name() {
    let err = Settings::load(&ConfigFile::None, &env(&[("DEFENSECLAW_FOOBAR", "1")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DEFENSECLAW_FOOBAR is not a DefenseClaw setting"),
        "{err}"
    );
    for known in env::PLAIN_ENV_VARS {
        Settings::load(&ConfigFile::None, &env(&[(known, "/x")])).unwrap();
    }
}

#[test]
fn export_sinks_come_from_toml_or_the_environment() {
    let s = Settings::load(
        &ConfigFile::None,
        &env(&[
            ("DEFENSECLAW_EXPORT__SIEM__KIND", "syslog"),
            ("DEFENSECLAW_EXPORT__SIEM__URL", "tcp://127.0.0.1:6514"),
            ("DEFENSECLAW_EXPORT__SIEM__BATCH_SIZE", "10"),
            ("DEFENSECLAW_EXPORT_SIEM_TOKEN", "not-a-config-key"),
        ]),
    )
    .unwrap();
    let sink = &s.export["siem"];
    assert_eq!(sink.kind, crate::export::SinkKind::Syslog);
    assert_eq!(sink.batch_size, 10);
    assert!(!s.to_toml().unwrap().contains("not-a-config-key"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        "[export.local]\nkind = \"file\"\nurl = \"/var/log/dc.jsonl\"\nactions = [\"block\"]\nmin_severity = \"HIGH\"\n",
    )
    .unwrap();
    let s = Settings::load(&ConfigFile::Explicit(file.clone()), &env(&[])).unwrap();
    assert_eq!(s.export["local"].actions, vec!["block".to_owned()]);

    for (toml, needle) in [
        (
            "[export.Bad]\nkind = \"file\"\nurl = \"/x\"\n",
            "sink names",
        ),
        (
            "[export.a]\nkind = \"file\"\nurl = \"rel\"\n",
            "export.a.url",
        ),
        (
            "[export.a]\nkind = \"syslog\"\nurl = \"udp://h:1\"\n",
            "export.a.url",
        ),
        (
            "[export.a]\nkind = \"syslog\"\nurl = \"tcp://h:1\"\nbatch_size = 0\n",
            "batch_size",
        ),
        (
            "[export.a]\nkind = \"file\"\nurl = \"/x\"\ntarget_kinds = [\"x\"]\n",
            "target_kinds",
        ),
        (
            "[export.a]\nkind = \"file\"\nurl = \"/x\"\nfilter = 1\n",
            "filter",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let err = Settings::load(&ConfigFile::Explicit(file.clone()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{toml}: {err}");
    }
    // A token variable for a malformed name is still a typo.
    assert!(
        Settings::load(
            &ConfigFile::None,
            &env(&[("DEFENSECLAW_EXPORT_siem_TOKEN", "x")])
        )
        .is_err()
    );
}

#[test]
fn a_bad_environment_value_names_its_variable() {
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_SERVER__MAX_CONNECTIONS", "abc")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("variable DEFENSECLAW_SERVER__MAX_CONNECTIONS"),
        "{err}"
    );
}

#[test]
fn log_levels_must_name_a_level() {
    for bad in ["loud", "info,loud", "defenseclawd=verbose", "=", "info,["] {
        let err = Settings::load(&ConfigFile::None, &env(&[("DEFENSECLAW_LOG__LEVEL", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{bad}: {err}");
    }
    for good in [
        "info",
        "WARN",
        "defenseclawd=debug,info",
        "off",
        "tonic=warn, debug",
    ] {
        Settings::load(&ConfigFile::None, &env(&[("DEFENSECLAW_LOG__LEVEL", good)]))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn relative_paths_are_refused() {
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_SERVER__SOCKET", "1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.socket") && err.contains("absolute"),
        "{err}"
    );
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_SCANNER__WATCH_DIRS", "skills")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("scanner.watch_dirs") && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn bad_mode_is_rejected() {
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_SERVER__SOCKET_MODE", "0666")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("server.socket_mode"), "{err}");
}

#[test]
fn server_uids_from_file_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        "[token_vault]\nserver_uids = [\"github-mcp=1000\", \"My.Server=1000,1001\"]\n",
    )
    .unwrap();
    let s = Settings::load(&ConfigFile::Explicit(file.clone()), &env(&[])).unwrap();
    let map = s.token_vault.server_uid_map().unwrap();
    assert_eq!(map["github-mcp"], vec![1000]);
    assert_eq!(map["My.Server"], vec![1000, 1001]);
    let s = Settings::load(
        &ConfigFile::Explicit(file),
        &env(&[("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", "a=0;b=5,6")]),
    )
    .unwrap();
    let map = s.token_vault.server_uid_map().unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!(map["b"], vec![5, 6]);
    for bad in ["github-mcp", "=5", "x=abc", "x=1;x=2", "x="] {
        let err = Settings::load(
            &ConfigFile::None,
            &env(&[("DEFENSECLAW_TOKEN_VAULT__SERVER_UIDS", bad)]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("token_vault.server_uids"),
            "{bad}: {err}"
        );
    }
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_AUDIT__COALESCE_WINDOW_SECS", "0")]),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("audit.coalesce_window_secs"),
        "{err}"
    );
}

#[test]
fn gate_keys_from_env_and_bad_regex_is_named() {
    let s = Settings::load(
        &ConfigFile::None,
        &env(&[
            (
                "DEFENSECLAW_OPENCLAW__ASK_PATTERNS",
                r"\brm\s+-rf\b, ^git push",
            ),
            (
                "DEFENSECLAW_OPENCLAW__TOOL_RULES",
                "browser=deny,mcp:github/delete_repo=ask",
            ),
            ("DEFENSECLAW_OPENCLAW__ON_DAEMON_UNREACHABLE", "allow"),
        ]),
    )
    .unwrap();
    assert_eq!(s.openclaw.ask_patterns, vec![r"\brm\s+-rf\b", "^git push"]);
    assert_eq!(s.openclaw.tool_rules.len(), 2);
    assert_eq!(
        s.openclaw.on_daemon_unreachable,
        crate::openclaw::OnUnreachable::Allow
    );
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_OPENCLAW__ASK_PATTERNS", "rm -rf (")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ask_patterns[0]"), "{err}");
    let err = Settings::load(
        &ConfigFile::None,
        &env(&[("DEFENSECLAW_OPENCLAW__ON_DAEMON_UNREACHABLE", "maybe")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("maybe"), "{err}");
}

#[test]
fn shipped_example_parses() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/defenseclawd.toml");
    Settings::load(&ConfigFile::Explicit(example.clone()), &env(&[])).unwrap();
    // The embedded copy is the shipped file, byte for byte.
    assert_eq!(std::fs::read_to_string(example).unwrap(), EXAMPLE_CONFIG);
}
