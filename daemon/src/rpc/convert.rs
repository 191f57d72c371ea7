//! Validation of scanner findings arriving over the API.

use defenseclaw_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::model::{Severity, validate_text};
use crate::store::NewFinding;

const MAX_SHORT: usize = 256;
const MAX_TITLE: usize = 1024;
const MAX_DESCRIPTION: usize = 16 * 1024;
const MAX_LOCATION: usize = 4096;
const MAX_SNIPPET: usize = 2048;

/// Checks one submitted finding; `index` names it in errors.
pub fn finding_from_pb(index: usize, f: pb::FindingInput) -> Result<NewFinding> {
    let field = |name: &'static str| -> &'static str { name };
    let severity = match pb::Severity::try_from(f.severity) {
        Ok(pb::Severity::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "findings.severity",
                format!("finding {index}: severity must be INFO, LOW, MEDIUM, HIGH or CRITICAL"),
            ));
        }
        Ok(s) => Severity::from_rank(s as i64).ok_or_else(|| {
            Error::invalid(
                "findings.severity",
                format!("finding {index}: unknown severity"),
            )
        })?,
    };
    if f.rule_id.trim().is_empty() {
        return Err(Error::invalid(
            "findings.rule_id",
            format!("finding {index}: is required"),
        ));
    }
    if f.title.trim().is_empty() {
        return Err(Error::invalid(
            "findings.title",
            format!("finding {index}: is required"),
        ));
    }
    let at = |e: Error| match e {
        Error::InvalidArgument { field, reason } => Error::InvalidArgument {
            field,
            reason: format!("finding {index}: {reason}"),
        },
        other => other,
    };
    validate_text(field("findings.rule_id"), &f.rule_id, MAX_SHORT).map_err(at)?;
    validate_text(field("findings.category"), &f.category, MAX_SHORT).map_err(at)?;
    validate_text(field("findings.title"), &f.title, MAX_TITLE).map_err(at)?;
    validate_text(
        field("findings.description"),
        &f.description,
        MAX_DESCRIPTION,
    )
    .map_err(at)?;
    validate_text(field("findings.location"), &f.location, MAX_LOCATION).map_err(at)?;
    validate_text(field("findings.snippet"), &f.snippet, MAX_SNIPPET).map_err(at)?;
    Ok(NewFinding {
        rule_id: f.rule_id,
        severity,
        title: f.title,
        description: f.description,
        location: f.location,
        line: f.line,
        category: f.category,
        snippet: f.snippet,
    })
}
