//! Adapters against a fake scanner executable: recorded JSON, failure, hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use defenseclaw_scanner::adapters::{
    AdapterConfig, McpScannerAdapter, SkillScannerAdapter, parse_skill_scanner_json,
};
use defenseclaw_scanner::{ScanError, Severity};

use crate::tree;

/// Writes an executable shell script standing in for the real scanner.
fn fake(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-scanner");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

// Shape recorded from `skill-scanner scan-all --format json` 2.3.2 (trimmed).
const RECORDED: &str = r#"{"summary": {"total_skills_scanned": 2},
 "results": [
  {"skill_name": "data-processor", "skill_path": "DIR/00001", "is_safe": false, "max_severity": "CRITICAL",
   "findings": [
     {"id": "a1", "rule_id": "COMMAND_INJECTION_EVAL", "category": "command_injection", "severity": "CRITICAL",
      "title": "Dangerous code execution", "description": "exec of decoded data", "file_path": "process.py",
      "line_number": 27, "snippet": "exec(base64.b64decode(payload))", "remediation": "Remove exec", "analyzer": "static"},
     {"id": "a2", "rule_id": "ALLOWED_TOOLS_NETWORK_USAGE", "category": "unauthorized_tool_use", "severity": "MEDIUM",
      "title": "Code makes network requests", "description": "d", "file_path": "SKILL.md", "line_number": null, "snippet": null}
   ], "duration_ms": 431},
  {"skill_name": "simple-math", "skill_path": "DIR/00000", "is_safe": true, "max_severity": "SAFE", "findings": [], "duration_ms": 12}
 ]}"#;

#[test]
fn scan_all_batches_skills_and_maps_findings() {
    let tools = tree(&[]);
    // `scan-all DIR --format json`: print the recording with DIR filled in.
    let script = format!(
        "[ \"$1\" = scan-all ] || exit 9\ncat <<'JSON' | sed \"s#DIR#$2#g\"\n{RECORDED}\nJSON"
    );
    let exe = fake(tools.path(), &script);
    let a = tree(&[("SKILL.md", b"x")]);
    let b = tree(&[("SKILL.md", b"y")]);
    let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
    let adapter = SkillScannerAdapter::new(AdapterConfig::new(&exe, Duration::from_secs(20)));
    assert!(adapter.available().is_ok());
    let out = adapter.scan_all(&dirs).unwrap();
    assert_eq!(out.len(), 2);
    let first = out[0].as_ref().unwrap();
    assert_eq!(first.name, "simple-math");
    assert_eq!(first.path, dirs[0].display().to_string());
    assert_eq!(first.max_severity, None);
    let second = out[1].as_ref().unwrap();
    assert_eq!(second.max_severity, Some(Severity::Critical));
    let f = &second.findings[0];
    assert_eq!(
        (
            f.rule_id.as_str(),
            f.category.as_str(),
            f.location.as_str(),
            f.line
        ),
        (
            "COMMAND_INJECTION_EVAL",
            "command_injection",
            "process.py",
            27
        )
    );
    assert_eq!(second.findings[1].line, 0);
}

#[test]
fn single_scan_object_is_parsed() {
    let doc: serde_json::Value = serde_json::from_str(RECORDED).unwrap();
    let one = doc["results"][0].clone();
    let reports = parse_skill_scanner_json(&one).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].findings.len(), 2);
    assert!(parse_skill_scanner_json(&serde_json::json!({"nothing": 1})).is_err());
}

#[test]
fn failing_scanner_is_an_error() {
    let tools = tree(&[]);
    let exe = fake(
        tools.path(),
        "echo 'Error: rule pack failed to load' >&2\nexit 2",
    );
    let adapter = SkillScannerAdapter::new(AdapterConfig::new(&exe, Duration::from_secs(20)));
    let skill = tree(&[("SKILL.md", b"x")]);
    match adapter.scan_skill(skill.path()) {
        Err(ScanError::Adapter { message, .. }) => {
            assert!(message.contains("rule pack failed"), "{message}")
        }
        other => panic!("expected adapter error, got {other:?}"),
    }
}

#[test]
fn hanging_scanner_is_killed_on_timeout() {
    let tools = tree(&[]);
    // A child process keeps the pipes open too: the whole group must die.
    let pid_file = tools.path().join("child.pid");
    let exe = fake(
        tools.path(),
        &format!("sleep 300 &\necho $! > {}\nsleep 300", pid_file.display()),
    );
    let adapter = SkillScannerAdapter::new(AdapterConfig::new(&exe, Duration::from_secs(3)));
    let skill = tree(&[("SKILL.md", b"x")]);
    let err = adapter.scan_skill(skill.path()).unwrap_err();
    assert!(matches!(err, ScanError::AdapterTimeout { .. }), "{err:?}");
    // The background child died with the group (gone, or a zombie awaiting its reaper).
    // SIGKILL is delivered asynchronously, so give the kernel a moment to finish it.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("State:"))
            .is_some_and(|l| !l.contains('Z'))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the scanner's child process survived the timeout");
}

#[test]
fn missing_scanner_is_reported() {
    let adapter = SkillScannerAdapter::new(AdapterConfig::new(
        "/nonexistent/skill-scanner",
        Duration::from_secs(5),
    ));
    assert!(matches!(
        adapter.available(),
        Err(ScanError::AdapterMissing { .. })
    ));
    let skill = tree(&[("SKILL.md", b"x")]);
    assert!(matches!(
        adapter.scan_skill(skill.path()),
        Err(ScanError::AdapterMissing { .. })
    ));
    let adapter = McpScannerAdapter::new(AdapterConfig::new(
        "definitely-not-on-path-mcp-scanner",
        Duration::from_secs(5),
    ));
    assert!(adapter.available().is_err());
}

#[test]
fn mcp_scanner_output_is_mapped() {
    let tools = tree(&[("tools.json", br#"{"tools": []}"#)]);
    let out = r#"[{"tool_name": "add", "is_safe": false, "findings": [{"severity": "HIGH", "summary": "Tool poisoning", "threat_category": "PROMPT INJECTION", "analyzer": "YARA"}]},
                  {"tool_name": "sub", "is_safe": true, "findings": []}]"#;
    let exe = fake(tools.path(), &format!("cat <<'JSON'\n{out}\nJSON"));
    let adapter = McpScannerAdapter::new(AdapterConfig::new(&exe, Duration::from_secs(20)));
    let r = adapter
        .scan_tools(&tools.path().join("tools.json"), "calc")
        .unwrap();
    assert_eq!(r.max_severity, Some(Severity::High));
    assert!(
        r.findings[0].location.ends_with("calc.tools.add"),
        "{}",
        r.findings[0].location
    );
    assert_eq!(r.findings[0].title, "Tool poisoning");
    let exe = fake(tools.path(), "echo not json");
    let adapter = McpScannerAdapter::new(AdapterConfig::new(&exe, Duration::from_secs(20)));
    assert!(
        adapter
            .scan_tools(&tools.path().join("tools.json"), "calc")
            .is_err()
    );
}
