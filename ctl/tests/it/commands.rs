//! Every command, its JSON shape and its exit code.

use serde_json::Value;

use crate::cli::{Bounded, Ctl, Run, ctl_at};
use defenseclaw_testkit::daemon::TestDaemon;

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_the_daemon() {
    let d = TestDaemon::start().await.unwrap();
    let s = d.ctl(&["-o", "json", "status"]).await.ok().json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["socket"], d.socket.display().to_string());
    assert_eq!(s["store_path"], d.db_path().display().to_string());
    assert_eq!(s["counts"]["audit_entries"], 0);
    assert_eq!(s["audit_head"]["seq"], 0);
    assert!(s["uptime_secs"].is_u64());
    for key in [
        "state",
        "url",
        "server_version",
        "protocol",
        "scopes",
        "missing_scopes",
        "last_event_at",
        "last_error",
    ] {
        assert!(
            s["openclaw"].get(key).is_some(),
            "status.openclaw lacks {key}: {s}"
        );
    }
    assert_eq!(s["openclaw"]["state"], "disabled");
    assert_eq!(s["auth"]["mode"], "local");
    let approvals = d
        .ctl(&["-o", "json", "openclaw", "approvals"])
        .await
        .ok()
        .json();
    assert!(approvals.as_array().unwrap().is_empty());
    let table = d.ctl(&["status"]).await.ok();
    assert!(table.stdout.contains("defenseclawd"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn skill_and_mcp_lifecycle_with_json_shapes() {
    let d = TestDaemon::start().await.unwrap();
    let blocked = d
        .ctl(&[
            "-o",
            "json",
            "skill",
            "block",
            "evil-skill",
            "--reason",
            "steals ssh keys",
        ])
        .await
        .ok()
        .json();
    assert_eq!(blocked["state"], "blocked");
    assert_eq!(blocked["changed"], true);

    let show = d
        .ctl(&["-o", "json", "skill", "show", "evil-skill"])
        .await
        .ok()
        .json();
    for key in [
        "kind",
        "name",
        "state",
        "reason",
        "decided_by",
        "decided_at",
        "findings",
    ] {
        assert!(show.get(key).is_some(), "skill show lacks {key}: {show}");
    }
    assert_eq!(show["kind"], "skill");
    assert_eq!(show["state"], "blocked");
    assert_eq!(show["reason"], "steals ssh keys");
    assert_eq!(show["decided_by"], "uid:0");
    assert!(show["findings"].as_array().unwrap().is_empty());

    d.ctl(&["mcp", "allow", "github", "--reason", "reviewed"])
        .await
        .ok();
    d.ctl(&["skill", "allow", "good"]).await.ok();
    let list = d.ctl(&["-o", "json", "skill", "list"]).await.ok().json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "mcp targets are not skills: {list:?}");
    assert!(list.iter().all(|t| t.get("findings").is_none()));
    let mcp = d.ctl(&["-o", "json", "mcp", "list"]).await.ok().json();
    assert_eq!(mcp[0]["name"], "github");
    assert_eq!(mcp[0]["state"], "allowed");

    let unblocked = d
        .ctl(&["-o", "json", "skill", "unblock", "evil-skill"])
        .await
        .ok()
        .json();
    assert_eq!(unblocked["state"], "none");
    let again = d
        .ctl(&["-o", "json", "skill", "unblock", "evil-skill"])
        .await
        .ok()
        .json();
    assert_eq!(again["changed"], false);

    let table = d.ctl(&["skill", "list"]).await.ok();
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_are_distinct() {
    let d = TestDaemon::start().await.unwrap();
    let missing = d.ctl(&["skill", "show", "nope"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stderr.contains("not found"));

    let invalid = d.ctl(&["skill", "block", "a/b"]).await;
    assert_eq!(invalid.code, 2);
    assert!(invalid.stderr.contains("target.name"), "{}", invalid.stderr);

    let usage = d.ctl(&["skill", "explode"]).await;
    assert_eq!(usage.code, 2);

    let empty = d
        .ctl(&["-o", "json", "scan", "report", "--file", "/dev/null"])
        .await;
    assert_eq!(
        empty.code, 2,
        "an empty report is a usage error: {}",
        empty.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let down = ctl_at(&socket, &["status"]).await;
    assert_eq!(down.code, 69);
    assert!(
        down.stderr.contains(&socket.display().to_string()),
        "{}",
        down.stderr
    );
    assert!(down.stderr.contains("defenseclawd"), "{}", down.stderr);

    let help = d.ctl(&["--help"]).await.ok();
    assert!(help.stdout.contains("Exit codes"), "{}", help.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn permission_denied_exits_77() {
    let d = TestDaemon::start_with(&[("DEFENSECLAW_ACCESS__MUTATE_UIDS", "4242420")])
        .await
        .unwrap();
    let denied = d.ctl(&["skill", "block", "x"]).await;
    assert_eq!(denied.code, 77, "{}", denied.stderr);
    d.ctl(&["skill", "list"]).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn scan_report_findings_and_dismissal() {
    let d = TestDaemon::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    std::fs::write(
        &report,
        r#"{"scanner": "cisco-ai-skill-scanner", "target": {"kind": "skill", "name": "evil-skill"},
            "findings": [
              {"rule_id": "CMD-001", "severity": "critical", "title": "curl | sh", "description": "downloads and runs",
               "location": "install.sh", "line": 3},
              {"rule_id": "INFO-1", "severity": "INFO", "title": "note", "description": "", "location": "SKILL.md", "line": 1}
            ], "extra_field": "ignored"}"#,
    )
    .unwrap();
    let submitted = d
        .ctl(&[
            "-o",
            "json",
            "scan",
            "report",
            "--file",
            report.to_str().unwrap(),
        ])
        .await
        .ok()
        .json();
    assert_eq!(submitted["findings"].as_array().unwrap().len(), 2);

    let high = d
        .ctl(&[
            "-o",
            "json",
            "finding",
            "list",
            "--target",
            "skill/evil-skill",
            "--min-severity",
            "high",
        ])
        .await
        .ok()
        .json();
    let high = high.as_array().unwrap();
    assert_eq!(high.len(), 1);
    let f = &high[0];
    for key in [
        "id",
        "rule_id",
        "severity",
        "title",
        "description",
        "location",
        "line",
    ] {
        assert!(f.get(key).is_some(), "finding lacks {key}");
    }
    assert_eq!(f["severity"], "CRITICAL");
    assert_eq!(f["line"], 3);
    let id = f["id"].to_string();

    let show = d
        .ctl(&["-o", "json", "skill", "show", "evil-skill"])
        .await
        .ok()
        .json();
    assert_eq!(show["findings"].as_array().unwrap().len(), 2);
    assert_eq!(show["state"], "none");

    let dismissed = d
        .ctl(&[
            "-o",
            "json",
            "finding",
            "dismiss",
            &id,
            "--reason",
            "vendored test file",
        ])
        .await
        .ok()
        .json();
    assert_eq!(dismissed["dismissed"], true);
    let open = d.ctl(&["-o", "json", "finding", "list"]).await.ok().json();
    assert_eq!(open.as_array().unwrap().len(), 1);
    let twice = d.ctl(&["finding", "dismiss", &id, "--reason", "x"]).await;
    assert_eq!(
        twice.code, 4,
        "dismissing twice is a failed precondition: {}",
        twice.stderr
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"scanner": "s", "target": {"kind": "skill", "name": "x"}, "findings": [{"rule_id": "r", "severity": "urgent", "title": "t"}]}"#,
    )
    .unwrap();
    let rejected = d
        .ctl(&["scan", "report", "--file", bad.to_str().unwrap()])
        .await;
    assert_eq!(rejected.code, 2);
    assert!(rejected.stderr.contains("urgent"), "{}", rejected.stderr);
    std::fs::write(&bad, "{not json").unwrap();
    assert_eq!(
        d.ctl(&["scan", "report", "--file", bad.to_str().unwrap()])
            .await
            .code,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_list_export_verify_and_tail() {
    let d = TestDaemon::start().await.unwrap();
    d.ctl(&["skill", "block", "a", "--reason", "first"])
        .await
        .ok();
    d.ctl(&["mcp", "block", "b"]).await.ok();
    d.ctl(&["skill", "allow", "a"]).await.ok();

    let list = d
        .ctl(&["-o", "json", "audit", "list", "--limit", "2"])
        .await
        .ok()
        .json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let e = &list[0];
    for key in [
        "seq",
        "ts",
        "action",
        "target",
        "outcome",
        "reason",
        "actor",
        "prev_hash",
        "hash",
    ] {
        assert!(e.get(key).is_some(), "audit entry lacks {key}: {e}");
    }
    for key in ["id", "name", "auth_method", "uid", "pid"] {
        assert!(e["actor"].get(key).is_some(), "actor lacks {key}: {e}");
    }
    assert_eq!(e["seq"], 3);
    assert_eq!(e["target"]["kind"], "skill");
    assert_eq!(e["actor"]["auth_method"], "local");

    let by_target = d
        .ctl(&["-o", "json", "audit", "list", "--target", "mcp/b"])
        .await
        .ok()
        .json();
    assert_eq!(by_target.as_array().unwrap().len(), 1);
    let by_actor = d
        .ctl(&["-o", "json", "audit", "list", "--actor", "uid:0"])
        .await
        .ok()
        .json();
    assert_eq!(by_actor.as_array().unwrap().len(), 3);
    let since = d
        .ctl(&[
            "-o",
            "json",
            "audit",
            "list",
            "--since",
            "2999-01-01T00:00:00Z",
        ])
        .await
        .ok()
        .json();
    assert!(since.as_array().unwrap().is_empty());

    let export = d.ctl(&["audit", "export"]).await.ok();
    let lines: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);

    let verified = d.ctl(&["-o", "json", "audit", "verify"]).await.ok().json();
    assert_eq!(verified["ok"], true);
    let head = verified["head"].as_str().unwrap().to_owned();
    d.ctl(&["audit", "verify", "--head", &head]).await.ok();

    // Tail: replay, then a live entry.
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "-o",
            "json",
            "audit",
            "tail",
            "--from-start",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    for expected in 1..=3u64 {
        let line = lines.next_line().bounded().await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["seq"],
            expected
        );
    }
    d.ctl(&["skill", "block", "live"]).await.ok();
    let line = lines.next_line().bounded().await.unwrap().unwrap();
    let live: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (live["seq"].as_u64(), live["target"]["name"].as_str()),
        (Some(4), Some("live"))
    );
    tail.kill().await.unwrap();

    // Tampering makes verify exit 8 and name the entry.
    let conn = rusqlite::Connection::open(d.db_path()).unwrap();
    conn.execute("UPDATE audit SET outcome = 'denied' WHERE seq = 2", [])
        .unwrap();
    let broken = d.ctl(&["audit", "verify"]).await;
    assert_eq!(broken.code, 8);
    assert!(broken.stderr.contains("entry 2"), "{}", broken.stderr);
    let broken_json = d.ctl(&["-o", "json", "audit", "verify"]).await;
    assert_eq!(broken_json.json()["first_bad_seq"], 2);
}

/// Runs the CLI with stdout on a pipe, reads one line, closes the pipe and
/// returns how the CLI ended (what `| head -1` does to it).
async fn first_line_then_close(socket: &std::path::Path, args: &[&str]) -> (String, Run) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DEFENSECLAW_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines
        .next_line()
        .bounded()
        .await
        .unwrap()
        .unwrap_or_default();
    drop(lines);
    let out = child.wait_with_output().bounded().await.unwrap();
    (first, Run::from(out))
}

/// `audit export | head -1` and `audit tail | head -1`: the reader leaving is
/// not an error. The command ends with success and says nothing, even when
/// (tail) nothing more would ever be printed.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_output_pipe_ends_export_and_tail_quietly() {
    use defenseclaw_proto::v1::EnforcementAction;
    use defenseclaw_testkit::requests::{set, skill};
    let d = TestDaemon::start().await.unwrap();
    // More than a pipe buffer (64 KiB) of export, so the CLI is still writing
    // when the reader leaves.
    let mut client = d.client().await.unwrap();
    for i in 0..400 {
        client
            .set_enforcement(set(
                skill(&format!("s{i}")),
                EnforcementAction::Block,
                "fill",
            ))
            .await
            .unwrap();
    }
    let (first, run) = first_line_then_close(&d.socket, &["audit", "export"]).await;
    assert!(first.contains("\"seq\""), "{first}");
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "export");

    let (first, run) =
        first_line_then_close(&d.socket, &["-o", "json", "audit", "tail", "--from-start"]).await;
    assert!(first.contains("\"seq\""), "{first}");
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "tail");
}

/// `version` names both sides when the daemon answers, and still succeeds
/// (with the reason) when it does not.
#[tokio::test(flavor = "multi_thread")]
async fn version_reports_the_cli_and_the_daemon() {
    let d = TestDaemon::start().await.unwrap();
    let v = d.ctl(&["-o", "json", "version"]).await.ok().json();
    assert_eq!(v["cli"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["daemon"], env!("CARGO_PKG_VERSION"));
    let missing = d.dir.path().join("nobody-here.sock");
    let v = ctl_at(&missing, &["-o", "json", "version"])
        .await
        .ok()
        .json();
    assert_eq!(v["cli"], env!("CARGO_PKG_VERSION"));
    assert!(v["daemon"].is_null(), "{v}");
    assert!(
        v["daemon_error"].as_str().unwrap().contains("cannot reach"),
        "{v}"
    );
}

/// Completion scripts for the three shells know the command tree, and `man`
/// writes one roff page per command.
#[tokio::test(flavor = "multi_thread")]
async fn completions_and_man_pages_are_generated() {
    let nowhere = std::path::Path::new("/nonexistent/defenseclawd.sock");
    for (shell, marker) in [
        ("bash", "complete -F _defenseclawctl"),
        ("zsh", "#compdef defenseclawctl"),
        ("fish", "complete -c defenseclawctl"),
    ] {
        let run = ctl_at(nowhere, &["completions", shell]).await.ok();
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        for word in ["skill", "audit", "approvals", "connections"] {
            assert!(run.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    ctl_at(nowhere, &["man", out.to_str().unwrap()]).await.ok();
    for page in [
        "defenseclawctl.1",
        "defenseclawctl-skill.1",
        "defenseclawctl-audit-export.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page: {text}");
    }
    let bad = ctl_at(nowhere, &["completions", "tcsh"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// Each kind lists only its own commands and flags, and every target command's
/// help carries examples; a command of the other kind is a usage error.
#[tokio::test(flavor = "multi_thread")]
async fn help_is_per_kind_with_examples() {
    let nowhere = std::path::Path::new("/nonexistent/defenseclawd.sock");
    let help = |args: &'static [&'static str]| async move {
        let mut argv = args.to_vec();
        argv.push("--help");
        ctl_at(nowhere, &argv).await.ok().stdout
    };
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let skill = commands(&help(&["skill"]).await);
    for c in ["scan", "install", "quarantine", "restore"] {
        assert!(skill.contains(&c.to_owned()), "skill lacks {c}: {skill:?}");
    }
    assert!(!skill.contains(&"exec".to_owned()), "{skill:?}");
    let mcp = commands(&help(&["mcp"]).await);
    assert!(mcp.contains(&"exec".to_owned()), "{mcp:?}");
    for c in ["install", "quarantine"] {
        assert!(!mcp.contains(&c.to_owned()), "mcp offers {c}: {mcp:?}");
    }
    let skill_scan = help(&["skill", "scan"]).await;
    assert!(
        !skill_scan.contains("--config") && !skill_scan.contains("--server"),
        "{skill_scan}"
    );
    assert!(help(&["mcp", "scan"]).await.contains("--config"));
    assert!(!help(&["skill", "allow"]).await.contains("--connection"));
    // --no-wait only where a change can wait for a human.
    assert!(!skill_scan.contains("--no-wait"), "{skill_scan}");
    assert!(!help(&["audit", "list"]).await.contains("--no-wait"));
    assert!(help(&["skill", "allow"]).await.contains("--no-wait"));
    assert!(help(&["finding", "dismiss"]).await.contains("--no-wait"));
    assert!(help(&["mcp", "allow"]).await.contains("--connection"));
    for args in [
        &["skill"][..],
        &["skill", "scan"],
        &["skill", "install"],
        &["skill", "block"],
        &["mcp"],
        &["mcp", "allow"],
        &["mcp", "exec"],
    ] {
        let text = help(args).await;
        assert!(
            text.contains("Examples:\n  defenseclawctl "),
            "{args:?}: {text}"
        );
    }
    assert!(help(&["audit", "list"]).await.contains("0: all"));
    let connections = commands(&help(&["connections"]).await);
    for c in ["suspend", "resume", "revoke"] {
        assert!(connections.contains(&c.to_owned()), "{connections:?}");
    }
    for wrong in [
        &["mcp", "install", "x"][..],
        &["skill", "exec", "x", "--", "true"],
    ] {
        let run = ctl_at(nowhere, wrong).await;
        assert_eq!(run.code, 2, "{wrong:?}: {}", run.stderr);
    }
}

/// `auth login` against a local-mode daemon says there is nothing to log in
/// to, and why, instead of asking for an issuer; with an issuer and nothing
/// else, every missing flag is named at once.
#[tokio::test(flavor = "multi_thread")]
async fn local_mode_login_explains_itself() {
    let d = TestDaemon::start().await.unwrap();
    let run = d.ctl(&["auth", "login", "--no-browser"]).await.ok();
    assert!(
        run.stdout.contains("local mode") && run.stdout.contains("peer credentials"),
        "{}",
        run.stdout
    );
    let v = d
        .ctl(&["-o", "json", "auth", "login", "--no-browser"])
        .await
        .ok()
        .json();
    assert_eq!(v["login_needed"], false);
    let partial = d
        .ctl(&[
            "auth",
            "login",
            "--no-browser",
            "--issuer",
            "https://idp.invalid/",
        ])
        .await;
    assert_eq!(partial.code, 2, "{}", partial.stderr);
    assert!(
        partial.stderr.contains("--audience and --client-id"),
        "{}",
        partial.stderr
    );
}

/// `scan report` reads a bounded amount: an endless input is refused at the
/// documented limit (not read into memory), and a report over the daemon's
/// request limit names that limit instead of a transport error.
#[tokio::test(flavor = "multi_thread")]
async fn scan_report_files_are_bounded_with_clear_messages() {
    let d = TestDaemon::start().await.unwrap();
    let endless = d.ctl(&["scan", "report", "--file", "/dev/zero"]).await;
    assert_eq!(endless.code, 2, "{}", endless.stderr);
    assert!(
        endless.stderr.contains("larger than 16 MiB"),
        "{}",
        endless.stderr
    );

    // About 6 MiB of valid findings: under the file limit, over the 4 MiB request limit.
    let finding = serde_json::json!({
        "rule_id": "R-1", "severity": "LOW", "title": "t",
        "description": "x".repeat(1000), "location": "a.sh", "line": 1
    });
    let report = serde_json::json!({
        "scanner": "bulk", "target": {"kind": "skill", "name": "big"},
        "findings": vec![finding; 6000],
    });
    let path = d.dir.path().join("big.json");
    std::fs::write(&path, report.to_string()).unwrap();
    let big = d
        .ctl(&["scan", "report", "--file", path.to_str().unwrap()])
        .await;
    assert_eq!(big.code, 2, "{}", big.stderr);
    assert!(big.stderr.contains("max_message_bytes"), "{}", big.stderr);
    let listed = d.ctl(&["-o", "json", "finding", "list"]).await.ok();
    assert!(!listed.stdout.contains("\"big\""), "{}", listed.stdout);
}

/// The state of check `name` in a `doctor -o json` report.
fn doctor_check(report: &Value, name: &str) -> Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report}"))
        .clone()
}

/// `doctor` passes a healthy daemon (warning about local mode and step-up
/// off), and each broken part fails with a fix and exit 15: a state directory
/// others can read, an OpenClaw gateway that is not there, an identity
/// provider that does not answer, the daemon down.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_each_broken_part_with_a_fix() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = TestDaemon::start().await.unwrap();
    let healthy = d.ctl(&["-o", "json", "doctor"]).await.ok().json();
    assert_eq!(healthy["ok"], true, "{healthy}");
    for name in [
        "socket",
        "session",
        "daemon",
        "config",
        "state-dir",
        "store-file",
        "store-disk",
        "openclaw",
    ] {
        assert_eq!(doctor_check(&healthy, name)["state"], "ok", "{healthy}");
    }
    for name in ["auth-mode", "stepup"] {
        let c = doctor_check(&healthy, name);
        assert_eq!(c["state"], "warn", "{c}");
        assert!(!c["fix"].as_str().unwrap().is_empty(), "{c}");
    }
    let table = d.ctl(&["doctor"]).await.ok();
    assert!(
        table.stdout.contains("To fix:\n  auth-mode: "),
        "{}",
        table.stdout
    );

    let state_dir = d.db_path().parent().unwrap().to_owned();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = d.ctl(&["-o", "json", "doctor"]).await;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(run.code, 15, "{}", run.stderr);
    let c = doctor_check(&run.json(), "state-dir");
    assert_eq!(c["state"], "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().starts_with("chmod 700 "), "{c}");
    d.stop().await.unwrap();
    let down = d.ctl(&["-o", "json", "doctor"]).await;
    assert_eq!(down.code, 15, "{}", down.stderr);
    let c = doctor_check(&down.json(), "socket");
    assert_eq!(c["state"], "fail", "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("start the daemon"),
        "{c}"
    );

    // Nothing listens on these: a gateway and an identity provider that are not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("ws://127.0.0.1:{port}/");
    let issuer = format!("https://127.0.0.1:{port}/");
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
        ("DEFENSECLAW_OPENCLAW__URL", &url),
        ("DEFENSECLAW_AUTH__MODE", "oidc"),
        ("DEFENSECLAW_AUTH__ISSUER", &issuer),
        (
            "DEFENSECLAW_AUTH__AUDIENCE",
            "https://defenseclaw.local/api",
        ),
        ("DEFENSECLAW_AUTH__CLI_CLIENT_ID", "cli-client"),
    ])
    .await
    .unwrap();
    let run = d.ctl(&["-o", "json", "doctor"]).await;
    assert_eq!(run.code, 15, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let openclaw = doctor_check(&report, "openclaw");
    assert_eq!(openclaw["state"], "fail", "{openclaw}");
    assert!(
        openclaw["detail"].as_str().unwrap().contains(&url),
        "{openclaw}"
    );
    let idp = doctor_check(&report, "identity-provider");
    assert_eq!(idp["state"], "fail", "{idp}");
    assert!(
        idp["fix"].as_str().unwrap().contains("[auth] issuer"),
        "{idp}"
    );
    assert_eq!(doctor_check(&report, "auth-mode")["state"], "ok");
    assert_eq!(doctor_check(&report, "session")["state"], "warn");
}

/// `init` writes a private starting config from the shipped example, turns
/// OpenClaw monitoring on only when a gateway answers, and never replaces a
/// file without `--force`.
#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_private_config_and_enables_openclaw_only_when_a_gateway_answers() {
    use std::os::unix::fs::PermissionsExt;
    let nowhere = std::path::Path::new("/nonexistent/defenseclawd.sock");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf/defenseclawd.toml");
    let path_arg = path.to_str().unwrap();
    let openclaw_section = |text: &str| {
        let start = text.find("\n[openclaw]\n").unwrap();
        let rest = &text[start + 1..];
        rest[..rest[1..].find("\n[").map_or(rest.len(), |i| i + 1)].to_owned()
    };

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let v = ctl_at(
        nowhere,
        &[
            "-o",
            "json",
            "init",
            "--config",
            path_arg,
            "--gateway",
            &closed_addr,
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["openclaw"]["gateway_answered"], false, "{v}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        openclaw_section(&text).contains("\nenabled = false\n"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let again = ctl_at(nowhere, &["init", "--config", path_arg]).await;
    assert_eq!(again.code, 4, "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "replaced without --force"
    );

    let gateway = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gateway.local_addr().unwrap().to_string();
    let run = ctl_at(
        nowhere,
        &["init", "--config", path_arg, "--gateway", &addr, "--force"],
    )
    .await
    .ok();
    assert!(
        run.stdout.contains("local ") && run.stdout.contains("oidc "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("defenseclawctl doctor"),
        "{}",
        run.stdout
    );
    let section = openclaw_section(&std::fs::read_to_string(&path).unwrap());
    assert!(section.contains("\nenabled = true\n"), "{section}");
    assert!(
        section.contains(&format!("\nurl = \"ws://{addr}/\"\n")),
        "{section}"
    );

    let relative = ctl_at(nowhere, &["init", "--config", "relative.toml"]).await;
    assert_eq!(relative.code, 2, "{}", relative.stderr);
}

/// Tables: an empty list says `(none)`, a long reason is cut with `…` unless
/// `-o wide`, "decided by" names the user like the audit's actor column, and
/// colour appears only when asked for on a non-terminal and never with NO_COLOR.
#[tokio::test(flavor = "multi_thread")]
async fn tables_are_consistent_cut_or_wide_and_coloured_only_when_wanted() {
    let d = TestDaemon::start().await.unwrap();
    let empty = d.ctl(&["skill", "list"]).await.ok();
    assert_eq!(
        empty.stdout.lines().nth(1),
        Some("(none)"),
        "{}",
        empty.stdout
    );
    let reason = format!("reviewed {}", "carefully ".repeat(12));
    d.ctl(&["skill", "block", "long-reason", "--reason", reason.trim()])
        .await
        .ok();
    let cut = d.ctl(&["skill", "list"]).await.ok();
    assert!(
        cut.stdout.contains('…') && !cut.stdout.contains(reason.trim()),
        "{}",
        cut.stdout
    );
    assert!(
        cut.stdout.contains("root"),
        "decided by shows the user: {}",
        cut.stdout
    );
    assert!(
        !cut.stdout.contains('\u{1b}'),
        "colour off a terminal: {:?}",
        cut.stdout
    );
    let wide = d.ctl(&["-o", "wide", "skill", "list"]).await.ok();
    assert!(wide.stdout.contains(reason.trim()), "{}", wide.stdout);

    let coloured = |no_color: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_defenseclawctl"));
        cmd.arg("--socket")
            .arg(&d.socket)
            .args(["skill", "list"])
            .env("CLICOLOR_FORCE", "1")
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output()
    };
    let forced = Run::from(coloured(false).await.unwrap()).ok();
    assert!(
        forced.stdout.contains("\u{1b}[31mblocked\u{1b}[0m"),
        "{:?}",
        forced.stdout
    );
    let plain = Run::from(coloured(true).await.unwrap()).ok();
    assert!(!plain.stdout.contains('\u{1b}'), "{:?}", plain.stdout);
}
