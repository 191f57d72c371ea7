//! SARIF 2.1.0 output, so code-scanning tools can ingest scan results.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{ScanReport, Severity};

pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

/// `security-severity` as GitHub code scanning reads it (0.0–10.0).
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "1.0",
    }
}

/// The artifact URI of a finding: the file inside a skill, or the MCP config.
fn artifact_uri(report: &ScanReport, location: &str) -> String {
    let raw = match location.split_once('#') {
        Some((file, _)) => file.to_string(),
        None if report.path.is_empty() => location.to_string(),
        None => format!("{}/{}", report.path.trim_end_matches('/'), location),
    };
    raw.replace('\\', "/").replace(' ', "%20")
}

/// One SARIF log with one run holding every report's findings.
pub fn to_sarif(reports: &[ScanReport]) -> Value {
    let mut rules: BTreeMap<String, Value> = BTreeMap::new();
    let mut results = Vec::new();
    for report in reports {
        for f in &report.findings {
            rules.entry(f.rule_id.clone()).or_insert_with(|| {
                json!({
                    "id": f.rule_id,
                    "name": f.title,
                    "shortDescription": { "text": f.title },
                    "fullDescription": { "text": f.description },
                    "help": { "text": if f.remediation.is_empty() { f.description.clone() } else { f.remediation.clone() } },
                    "defaultConfiguration": { "level": level(f.severity) },
                    "properties": {
                        "category": f.category,
                        "security-severity": security_severity(f.severity),
                        "tags": ["security", f.category],
                    }
                })
            });
            let mut physical = json!({
                "artifactLocation": { "uri": artifact_uri(report, &f.location) }
            });
            if f.line > 0 {
                physical["region"] =
                    json!({ "startLine": f.line, "snippet": { "text": f.snippet } });
            }
            let mut location = json!({ "physicalLocation": physical });
            if f.location.contains('#') {
                location["logicalLocations"] = json!([{ "fullyQualifiedName": f.location }]);
            }
            results.push(json!({
                "ruleId": f.rule_id,
                "level": level(f.severity),
                "message": { "text": format!("{}: {}", f.title, f.description) },
                "locations": [location],
                "properties": {
                    "severity": f.severity.as_str(),
                    "category": f.category,
                    "target": report.name,
                    "kind": report.kind.as_str(),
                }
            }));
        }
    }
    json!({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "defenseclaw-scanner",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules.into_values().collect::<Vec<_>>(),
                }
            },
            "results": results,
        }]
    })
}
