//! Findings from outside the daemon: scan reports peers submit, and
//! dismissals, which a protected target holds for a human's approval.

use super::Governance;
use super::protection::{Change, Ruling};
use crate::audit::NewEntry;
use crate::error::{Error, Result};
use crate::model::{Actor, Target};
use crate::store::stepup::{StepUpAction, StepUpRow};
use crate::store::{
    Audit, DismissFinding, FindingRow, NewFinding, ReportOrigin, ReportStored, ScanReport,
};

/// Most findings one scan report may carry.
pub const MAX_FINDINGS_PER_REPORT: usize = 10_000;

/// What a dismissal came to.
#[derive(Debug)]
pub struct Dismissal {
    /// The finding: dismissed now, or as it was while the dismissal waits.
    pub finding: FindingRow,
    /// The step-up request holding the dismissal, when it waits for a human.
    pub pending: Option<StepUpRow>,
}

impl Governance {
    /// Stores a peer's scan report and, with step-up on, proposes a block when
    /// it reaches `auto_block_severity`. `findings` are decoded one by one only
    /// after the scanner name and the count passed, in that order. Returns the
    /// stored findings and the audit seq of the report.
    pub async fn submit_scan_report<I>(
        &self,
        actor: Actor,
        scanner: String,
        target: Target,
        findings: I,
    ) -> Result<(Vec<FindingRow>, u64)>
    where
        I: ExactSizeIterator<Item = Result<NewFinding>>,
    {
        // The daemon's own scanners report only through the daemon: a peer using
        // their name could otherwise rewrite what the daemon found.
        if self.admission.scan.is_daemon_scanner(&scanner) {
            let reason = format!(
                "scanner name {scanner:?} is reserved for the daemon's own scans; submit reports under another scanner name"
            );
            let audit = Audit(NewEntry {
                action: "scan-report".into(),
                target: Some(target),
                severity: None,
                outcome: "denied".into(),
                reason: reason.clone(),
                details: serde_json::json!({
                    "scanner": scanner,
                    "findings": findings.len(),
                    "peer": {"uid": actor.uid, "pid": actor.pid},
                }),
                actor,
            });
            if let Err(e) = self.store.write(audit).await {
                tracing::error!(error = %e, "could not audit a refused scan report");
            }
            return Err(Error::PermissionDenied(reason));
        }
        if findings.len() > MAX_FINDINGS_PER_REPORT {
            return Err(Error::invalid(
                "findings",
                format!("more than {MAX_FINDINGS_PER_REPORT}"),
            ));
        }
        let findings = findings.collect::<Result<Vec<_>>>()?;
        let ReportStored { findings, entry } = self
            .store
            .write(ScanReport {
                scanner,
                target,
                findings,
                actor,
                origin: ReportOrigin::Peer,
                keep_open_at: self.stepups.protection().report_keeps_open_at(),
            })
            .await?;
        if let Some(target) = findings.first().map(|f| f.target.clone()) {
            let max = findings.iter().map(|f| f.severity).max();
            self.admission.propose_block_if_critical(&target, max).await;
        }
        Ok((findings, entry.seq))
    }

    /// Dismisses finding `id`, or asks a human first when the protection rule
    /// holds dismissals on its target.
    pub async fn dismiss_finding(
        &self,
        actor: Actor,
        id: u64,
        reason: String,
    ) -> Result<Dismissal> {
        let existing = self
            .store
            .get_finding(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("finding {id}")))?;
        if existing.dismissed.is_none()
            && self
                .stepups
                .protection()
                .rule(&existing.target, Change::Dismiss)
                .await?
                == Ruling::NeedsApproval
        {
            let row = self
                .stepups
                .request(
                    actor,
                    existing.target.clone(),
                    StepUpAction::Dismiss,
                    reason,
                    Some(id),
                    Default::default(),
                )
                .await?;
            return Ok(Dismissal {
                finding: existing,
                pending: Some(row),
            });
        }
        let finding = self
            .store
            .write(DismissFinding { id, reason, actor })
            .await?
            .finding;
        Ok(Dismissal {
            finding: *finding,
            pending: None,
        })
    }
}
