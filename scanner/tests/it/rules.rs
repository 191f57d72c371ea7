use std::collections::BTreeSet;
use std::str::FromStr;

use defenseclaw_scanner::{Engine, ScanError, Severity, validate_rule_file};

use crate::{engine, tree};

#[test]
fn builtin_rules_cover_every_category_of_the_issue() {
    let cats: BTreeSet<&str> = engine()
        .rules()
        .iter()
        .map(|r| r.category.as_str())
        .collect();
    for c in [
        "command_injection",
        "reverse_shell",
        "credential_access",
        "data_exfiltration",
        "obfuscation",
        "prompt_injection",
        "persistence",
        "privilege_escalation",
        "destructive",
        "hardcoded_secret",
        "supply_chain",
        "mcp_config",
    ] {
        assert!(cats.contains(c), "no rule for category {c}");
    }
    let ids: BTreeSet<&str> = engine().rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), engine().rules().len(), "rule ids are unique");
}

#[test]
fn rules_serialize_for_listing() {
    let v = serde_json::to_value(engine().rules()).unwrap();
    let first = &v[0];
    for k in ["id", "category", "severity", "title", "description"] {
        assert!(first.get(k).is_some(), "missing {k}");
    }
}

#[test]
fn severity_order_parse_and_serde() {
    assert!(Severity::Info < Severity::Low && Severity::Low < Severity::Medium);
    assert!(Severity::Medium < Severity::High && Severity::High < Severity::Critical);
    assert_eq!(Severity::from_str("high").unwrap(), Severity::High);
    assert_eq!(
        Severity::from_str(" Critical ").unwrap(),
        Severity::Critical
    );
    assert!(Severity::from_str("severe").is_err());
    assert_eq!(
        serde_json::to_string(&Severity::Medium).unwrap(),
        "\"MEDIUM\""
    );
    assert_eq!(
        serde_json::from_str::<Severity>("\"low\"").unwrap(),
        Severity::Low
    );
    assert_eq!(Severity::High.as_str(), "HIGH");
}

const GOOD: &str = r#"
version = 1

[[rule]]
id = "X-1"
category = "destructive"
severity = "high"
title = "Test rule"
description = "Matches a marker."
file_types = ["markdown"]
patterns = ['''zz-danger-marker''']
"#;

#[test]
fn validate_accepts_a_good_file_and_counts_rules() {
    let dir = tree(&[("a.toml", GOOD.as_bytes())]);
    assert_eq!(validate_rule_file(&dir.path().join("a.toml")).unwrap(), 1);
}

#[test]
fn validate_rejects_bad_files() {
    let cases = [
        GOOD.replace("version = 1", "version = 2"),
        GOOD.replace("zz-danger-marker", "(unclosed"),
        GOOD.replace(
            "patterns = ['''zz-danger-marker''']",
            "check = \"no_such_check\"",
        ),
        GOOD.replace("severity = \"high\"", "severity = \"urgent\""),
        format!("{GOOD}\n{}", &GOOD[GOOD.find("[[rule]]").unwrap()..]),
        GOOD.replace("patterns = ['''zz-danger-marker''']", ""),
        GOOD.replace("title = ", "unknown_field = 1\ntitle = "),
    ];
    for (i, text) in cases.iter().enumerate() {
        let dir = tree(&[("bad.toml", text.as_bytes())]);
        let err = validate_rule_file(&dir.path().join("bad.toml"));
        assert!(
            matches!(err, Err(ScanError::RuleFile { .. })),
            "case {i} accepted: {err:?}"
        );
    }
}

#[test]
fn extra_rule_dirs_add_and_override_rules() {
    let disable = r#"
version = 1

[[rule]]
id = "DC-DS-008"
category = "destructive"
severity = "LOW"
title = "off"
description = "off"
patterns = ['''git''']
enabled = false
"#;
    let dir = tree(&[("a.toml", GOOD.as_bytes()), ("b.toml", disable.as_bytes())]);
    let engine = Engine::load(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(engine.rules().len(), crate::engine().rules().len() + 1);
    let skill = tree(&[(
        "SKILL.md",
        b"---\nname: x\ndescription: y\n---\nzz-danger-marker\ngit reset --hard\n",
    )]);
    let r = engine.scan_skill(skill.path()).unwrap();
    assert!(crate::has(&r, "X-1"), "{}", crate::show(&r));
    assert!(!crate::has(&r, "DC-DS-008"), "disabled rule still ran");
    let r = crate::engine().scan_skill(skill.path()).unwrap();
    assert!(crate::has(&r, "DC-DS-008"));
}

#[test]
fn missing_rule_dir_is_an_error() {
    assert!(Engine::load(&["/nonexistent/rules/dir".into()]).is_err());
}
