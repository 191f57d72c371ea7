//! `skill quarantine`, `skill quarantined` and `skill restore` through the
//! daemon: the folder moves out and back, a clash exits 4 naming the path,
//! and quarantine is refused for MCP servers.

use crate::cli::Ctl;
use defenseclaw_testkit::daemon::TestDaemon;

#[tokio::test(flavor = "multi_thread")]
async fn quarantine_list_and_restore_from_the_command_line() {
    let skills = tempfile::tempdir().unwrap();
    let folder = skills.path().join("dropper");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("SKILL.md"), "---\nname: dropper\n---\nbody\n").unwrap();
    let d = TestDaemon::start_with(&[(
        "DEFENSECLAW_SCANNER__WATCH_DIRS",
        skills.path().to_str().unwrap(),
    )])
    .await
    .unwrap();
    let q = d
        .ctl(&[
            "-o",
            "json",
            "skill",
            "quarantine",
            "dropper",
            "--reason",
            "dropper",
        ])
        .await
        .ok()
        .json();
    assert_eq!(q["state"], "quarantined", "{q}");
    assert!(q["audit_seq"].as_u64().unwrap() > 0);
    assert!(!folder.exists());
    let list = d
        .ctl(&["-o", "json", "skill", "quarantined"])
        .await
        .ok()
        .json();
    assert_eq!(list[0]["name"], "dropper", "{list}");
    assert_eq!(list[0]["reason"], "dropper");

    std::fs::create_dir(&folder).unwrap();
    let clash = d.ctl(&["skill", "restore", "dropper"]).await;
    assert_eq!(clash.code, 4, "{}", clash.stderr);
    assert!(clash.stderr.contains("already exists"), "{}", clash.stderr);
    std::fs::remove_dir(&folder).unwrap();

    let table = d.ctl(&["skill", "restore", "dropper"]).await.ok();
    assert!(table.stdout.contains("restored"), "{}", table.stdout);
    assert!(folder.join("SKILL.md").exists());
    let none = d
        .ctl(&["-o", "json", "skill", "quarantined"])
        .await
        .ok()
        .json();
    assert_eq!(none, serde_json::json!([]));

    let mcp = d.ctl(&["mcp", "quarantine", "x"]).await;
    assert_eq!(mcp.code, 2, "{}", mcp.stderr);
}
