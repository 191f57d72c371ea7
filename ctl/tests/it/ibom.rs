//! The Auth-IBOM from the auditor's seat: `connections export` lists every
//! state change of every grant with its audit entry, follows the schema file
//! in the repository, renders as CSV, and `--verify` names an edited line, a
//! removed event, a removed line, a forged hash and a forged head.

use std::collections::BTreeMap;
use std::path::Path;

use defenseclaw_testkit::daemon::TestDaemon;
use serde_json::{Value, json};

use crate::cli::{Ctl, Run};

/// A minimal JSON Schema check (type, const, enum, pattern-free strings,
/// required, properties with additionalProperties false, items, $ref) — enough
/// to catch the document and the schema file drifting apart.
fn check_schema(schema: &Value, root: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return check_schema(&root["$defs"][name], root, v, at, problems);
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        problems.push(format!("{at}: {v} is not {c}"));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        problems.push(format!("{at}: {v} is not one of {e:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let actual = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.contains(&actual) {
            problems.push(format!("{at}: {actual} is not {types:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for req in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(req.as_str().unwrap()) {
                problems.push(format!("{at}: missing {req}"));
            }
        }
        for (k, val) in obj {
            match props.get(k) {
                Some(s) => check_schema(s, root, val, &format!("{at}.{k}"), problems),
                None => problems.push(format!("{at}: {k} is not in the schema")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check_schema(items, root, item, &format!("{at}[{i}]"), problems);
        }
    }
}

fn schema_file() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/auth-ibom-v1.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn grant<'a>(doc: &'a Value, server: &str, connection: &str) -> &'a Value {
    doc["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["server"] == server && g["connection"] == connection)
        .unwrap_or_else(|| panic!("no grant {server}/{connection} in {doc:#}"))
}

/// The daemon's audit log as seq → hash.
async fn audit_hashes(d: &TestDaemon) -> BTreeMap<u64, String> {
    let out = d.ctl(&["audit", "export"]).await.ok();
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn verify(d: &TestDaemon, file: &Path) -> Run {
    d.ctl(&["connections", "export", "--verify", file.to_str().unwrap()])
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn export_lists_every_state_change_and_verify_catches_edits_and_removals() {
    let d = TestDaemon::start().await.unwrap();
    let allow = |server: &'static str, connection: &'static str| {
        [
            "mcp",
            "allow",
            server,
            "--connection",
            connection,
            "--scopes",
            "repo read:org",
            "--reason",
            "triage",
        ]
    };
    d.ctl(&allow("github-mcp", "github")).await.ok();
    d.ctl(&allow("slack-mcp", "slack")).await.ok();
    for args in [
        &[
            "connections",
            "suspend",
            "github-mcp",
            "github",
            "--reason",
            "idle",
        ][..],
        &[
            "connections",
            "resume",
            "github-mcp",
            "github",
            "--reason",
            "needed again",
        ],
        &[
            "connections",
            "revoke",
            "github-mcp",
            "github",
            "--reason",
            "done",
        ],
    ] {
        d.ctl(args).await.ok();
    }
    // Declared again after the revocation: the same grant, a new approval.
    d.ctl(&allow("github-mcp", "github")).await.ok();

    let out = d.ctl(&["connections", "export", "-o", "json"]).await.ok();
    let doc = out.json();
    assert_eq!(doc["schema"], "auth-ibom/v1");
    let mut problems = Vec::new();
    let schema = schema_file();
    check_schema(&schema, &schema, &doc, "$", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}\n{doc:#}");

    // Every state change, in order, each with its audit entry's seq and hash.
    let g = grant(&doc, "github-mcp", "github");
    let history = g["history"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = history
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("connection-grant", "active"),
            ("connection-suspend", "suspended"),
            ("connection-resume", "active"),
            ("connection-revoke", "revoked"),
            ("connection-grant", "active"),
        ]
    );
    assert_eq!(history[1]["reason"], "idle");
    assert_eq!(history[3]["reason"], "done");
    assert_eq!(g["status"], "active");
    assert_eq!(g["declared_scopes"], json!(["repo", "read:org"]));
    assert_eq!(g["approval"]["method"], "operator");
    assert_eq!(g["approval"]["human_confirmed"], false);
    assert_eq!(g["created_at"], history[0]["ts"]);
    let local_id = history[0]["actor"]["id"].as_str().unwrap().to_owned();
    assert!(local_id.starts_with("uid:"), "{local_id}");
    assert_eq!(g["approval"]["approved_by"], local_id.as_str());
    assert_eq!(grant(&doc, "slack-mcp", "slack")["status"], "active");
    let hashes = audit_hashes(&d).await;
    for e in history {
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(
            Some(e["hash"].as_str().unwrap()),
            hashes.get(&seq).map(String::as_str)
        );
    }
    let head = doc["audit_head"]["seq"].as_u64().unwrap();
    assert_eq!(
        doc["audit_head"]["hash"].as_str(),
        hashes.get(&head).map(String::as_str)
    );
    assert!(head >= history[4]["seq"].as_u64().unwrap());

    // CSV: a header and one row per grant, the columns as documented.
    let csv = d.ctl(&["connections", "export", "-o", "csv"]).await.ok();
    let rows: Vec<&str> = csv.stdout.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{}", csv.stdout);
    assert!(rows[0].starts_with("\"server\",\"connection\",\"status\",\"declared_scopes\""));
    let columns = rows[0].split(',').count();
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/auth-ibom-v1.md"),
    )
    .unwrap();
    for column in rows[0].split(',') {
        let name = column.trim_matches('"');
        assert!(
            documented.contains(&format!("`{name}`")),
            "{name} is not documented"
        );
    }
    let row = rows
        .iter()
        .find(|r| r.starts_with("\"github-mcp\""))
        .unwrap();
    assert_eq!(row.split("\",\"").count(), columns, "{row}");
    assert!(row.contains("connection-suspend:suspended@"), "{row}");
    assert!(row.contains("connection-revoke:revoked@"), "{row}");
    // -o csv is for the export only.
    let other = d.ctl(&["-o", "csv", "connections", "list"]).await;
    assert_eq!(other.code, 2, "{}", other.stderr);

    // The untouched document verifies, also after the log grew.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ibom.json");
    std::fs::write(&file, &out.stdout).unwrap();
    d.ctl(&["connections", "suspend", "slack-mcp", "slack"])
        .await
        .ok();
    let ok = verify(&d, &file).await;
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("matches the audit log"), "{}", ok.stdout);

    let suspend_seq = history[1]["seq"].as_u64().unwrap();
    let resume_seq = history[2]["seq"].as_u64().unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let suspend_line = lines
        .iter()
        .position(|l| l.contains("\"action\": \"connection-suspend\""))
        .unwrap();
    let status_line = suspend_line
        + lines[suspend_line..]
            .iter()
            .position(|l| l.contains("\"status\": \"suspended\""))
            .unwrap();

    // An edited line: the suspension rewritten as if nothing happened.
    let mut edited = lines.clone();
    let replaced = lines[status_line].replace("suspended", "active");
    edited[status_line] = &replaced;
    std::fs::write(&file, edited.join("\n")).unwrap();
    let bad = verify(&d, &file).await;
    assert_eq!(bad.code, 8, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout.contains(&format!(
            "grant github-mcp/github: event seq {suspend_seq} (connection-suspend): status is \"active\" in the document, \"suspended\" in the audit log"
        )),
        "{}",
        bad.stdout
    );

    // A removed event: the resumption dropped from the history.
    let mut removed = doc.clone();
    removed["grants"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["server"] == "github-mcp")
        .unwrap()["history"]
        .as_array_mut()
        .unwrap()
        .remove(2);
    std::fs::write(&file, serde_json::to_string_pretty(&removed).unwrap()).unwrap();
    let bad = verify(&d, &file).await;
    assert_eq!(bad.code, 8, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout.contains(&format!(
            "grant github-mcp/github: event seq {resume_seq} (connection-resume → active, by {local_id}) is in the audit log but missing from the document"
        )),
        "{}",
        bad.stdout
    );

    // A removed line: the suspension's status gone.
    let mut cut = lines.clone();
    cut.remove(status_line);
    std::fs::write(&file, cut.join("\n")).unwrap();
    let bad = verify(&d, &file).await;
    assert_eq!(bad.code, 8, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr.contains("missing field `status`"),
        "{}",
        bad.stderr
    );

    // A whole grant removed.
    let mut dropped = doc.clone();
    dropped["grants"]
        .as_array_mut()
        .unwrap()
        .retain(|g| g["server"] != "slack-mcp");
    std::fs::write(&file, serde_json::to_string_pretty(&dropped).unwrap()).unwrap();
    let bad = verify(&d, &file).await;
    assert_eq!(bad.code, 8);
    assert!(
        bad.stdout
            .contains("grant slack-mcp/slack is in the audit log but missing from the document"),
        "{}",
        bad.stdout
    );

    // A forged event hash and a forged head.
    let mut forged = doc.clone();
    let fake = "f".repeat(64);
    forged["grants"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["server"] == "github-mcp")
        .unwrap()["history"][3]["hash"] = json!(fake);
    forged["audit_head"]["hash"] = json!(fake);
    std::fs::write(&file, serde_json::to_string_pretty(&forged).unwrap()).unwrap();
    let bad = verify(&d, &file).await;
    assert_eq!(bad.code, 8);
    let revoke_seq = history[3]["seq"].as_u64().unwrap();
    assert!(
        bad.stdout.contains(&format!(
            "event seq {revoke_seq} (connection-revoke): hash is {fake} in the document"
        )),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout
            .contains(&format!("the document's audit head {head} has hash {fake}")),
        "{}",
        bad.stdout
    );

    // --since: the slack grant is still live, so it stays; a future bound keeps only live grants.
    let since = d
        .ctl(&[
            "-o",
            "json",
            "connections",
            "export",
            "--since",
            "2999-01-01T00:00:00Z",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        since["since"].as_str().map(|s| s.starts_with("2999")),
        Some(true)
    );
    assert_eq!(since["grants"].as_array().unwrap().len(), 2);
    let bad_since = d
        .ctl(&["connections", "export", "--since", "yesterday"])
        .await;
    assert_eq!(bad_since.code, 2, "{}", bad_since.stderr);
}
