//! Read-side questions the RPC layer answers: each is one function here, so a
//! new read RPC touches the proto, one adapter and one of these.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::Governance;
use super::stepup::StepUpEvent;
use crate::audit::{Entry, Head, Verification};
use crate::error::{Error, Result};
use crate::model::{Severity, Target, TargetKind};
use crate::openclaw::{ApprovalView, GatewayStatus};
use crate::state::Verdict;
use crate::store::connections::{GrantRow, LinkedAccountRow};
use crate::store::stepup::StepUpRow;
use crate::store::{AuditQuery, FindingRow, TargetRow};

/// What `GetStatus` reports about the governance state.
#[derive(Debug)]
pub struct StatusView {
    /// Database path, reported so operators know which store answers.
    pub store_path: PathBuf,
    /// Known targets, blocked ones and allowed ones (from memory).
    pub targets: (u64, u64, u64),
    /// Open findings over all targets (from the store).
    pub open_findings: u64,
    /// The audit chain's head; its seq is the number of entries (no gaps).
    pub head: Head,
    /// The OpenClaw monitor's connection state.
    pub openclaw: GatewayStatus,
    /// Enforcement changes not yet pushed into OpenClaw.
    pub pending_enforcements: usize,
    /// The tool-call gate's counters.
    pub gate: super::tool_gate::GateCounts,
    /// Each audit export sink's delivery state.
    pub exporters: Vec<crate::export::SinkStatus>,
    /// The public key (hex) signing exported head records.
    pub export_signing_key: Option<String>,
    /// The gate plugin and exec policy as last read from the gateway.
    pub gate_setup: Option<crate::openclaw::GateView>,
}

/// A target with its findings and the step-up holding it, if any.
#[derive(Debug)]
pub struct TargetDetail {
    /// The target and its decision.
    pub summary: TargetRow,
    /// Its findings, dismissed ones included.
    pub findings: Vec<FindingRow>,
    /// The pending step-up request holding it.
    pub pending: Option<StepUpRow>,
}

impl Governance {
    /// The figures `GetStatus` reports.
    pub async fn status(&self) -> Result<StatusView> {
        let open_findings = self.store.open_findings().await?;
        Ok(StatusView {
            store_path: self.store.path().to_path_buf(),
            targets: self.cache.counts(),
            open_findings,
            head: self.store.head(),
            openclaw: self.openclaw.status(),
            pending_enforcements: self.openclaw.pending_enforcement_count(),
            gate: self.openclaw.gate().stats.counts(),
            exporters: self.exporters.snapshot(),
            export_signing_key: self.exporters.signing_key().map(str::to_owned),
            gate_setup: self.openclaw.gate_view(),
        })
    }

    /// Targets with their decisions, of one kind or all.
    pub async fn list_targets(&self, kind: Option<TargetKind>) -> Result<Vec<TargetRow>> {
        self.store.list_targets(kind).await
    }

    /// One target in full; `NotFound` when the daemon never saw it.
    pub async fn target_detail(&self, target: Target) -> Result<TargetDetail> {
        let summary = self
            .store
            .get_target(target.clone())
            .await?
            .ok_or_else(|| Error::NotFound(format!("{} {:?}", target.kind, target.name)))?;
        let (target_kind, target_name) = (target.kind, target.name.clone());
        let findings = self.store.list_findings(Some(target), None, true).await?;
        let pending = match self.cache.held_by(target_kind, &target_name) {
            Some(id) => self
                .store
                .get_stepup(id)
                .await?
                .filter(|r| r.status.is_pending()),
            None => None,
        };
        Ok(TargetDetail {
            summary,
            findings,
            pending,
        })
    }

    /// The verdict in force for a target, from memory (the hot path).
    pub fn check(&self, kind: TargetKind, name: &str) -> Verdict {
        let verdict = self.cache.check(kind, name);
        let outcome = match &verdict {
            Verdict::Unknown => "unknown",
            Verdict::Allowed(_) => "allowed",
            Verdict::Blocked(_) => "blocked",
        };
        self.enforcer
            .metrics()
            .decision(crate::metrics::DecisionKind::Check, outcome);
        verdict
    }

    /// Findings, filtered by target and lowest severity.
    pub async fn list_findings(
        &self,
        target: Option<Target>,
        min: Option<Severity>,
        include_dismissed: bool,
    ) -> Result<Vec<FindingRow>> {
        self.store
            .list_findings(target, min, include_dismissed)
            .await
    }

    /// Audit entries matching `query`, newest first.
    pub async fn list_audit(&self, query: AuditQuery) -> Result<Vec<Entry>> {
        self.store.list_audit(query).await
    }

    /// Up to `limit` audit entries after `after`, in order (for streams).
    pub async fn audit_page(&self, after: u64, limit: u32) -> Result<Vec<Entry>> {
        self.store.audit_page(after, limit).await
    }

    /// Every audit entry committed from now on.
    pub fn follow_audit(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.store.subscribe()
    }

    /// The audit chain's head now.
    pub fn audit_head(&self) -> Head {
        self.store.head()
    }

    /// Re-checks the audit chain, against a recorded head when one is given.
    pub async fn verify_audit(&self, expected: Option<Head>) -> Result<Verification> {
        self.store.verify_audit(expected).await
    }

    /// Step-up requests, newest first.
    pub async fn list_stepups(&self, pending_only: bool, limit: u32) -> Result<Vec<StepUpRow>> {
        self.store.list_stepups(pending_only, limit).await
    }

    /// One step-up request, if it exists.
    pub async fn get_stepup(&self, id: String) -> Result<Option<StepUpRow>> {
        self.store.get_stepup(id).await
    }

    /// Progress of every step-up request from now on.
    pub fn follow_stepups(&self) -> broadcast::Receiver<StepUpEvent> {
        self.stepups.subscribe()
    }

    /// Approvals the OpenClaw monitor saw, with what it decided.
    pub fn openclaw_approvals(&self) -> Vec<ApprovalView> {
        self.openclaw.approvals()
    }

    /// Connection grants (of one server or all) and linked accounts.
    pub async fn list_connections(
        &self,
        server: Option<String>,
    ) -> Result<(Vec<GrantRow>, Vec<LinkedAccountRow>)> {
        let grants = self.store.list_grants(server).await?;
        let accounts = self.store.list_linked_accounts().await?;
        Ok((grants, accounts))
    }
}
