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
