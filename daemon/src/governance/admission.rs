//! Scan, record, decide: the path shared by `ScanTarget` (and `skill install`)
//! and the skill watcher.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::governance::enforcer::Enforcer;
use crate::governance::protection::{Change, Ruling};
use crate::governance::scanning::{ScanService, Scanned};
use crate::governance::stepup::StepUps;
use crate::model::{Actor, EnforcementAction, EnforcementState, Severity, Target, TargetKind};
use crate::state::{StateCache, Verdict};
use crate::store::stepup::StepUpAction;
use crate::store::{Audit, FindingRow, ReportOrigin, ReportStored, ScanReport, Store};

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// Skill folder or MCP config.
    pub kind: TargetKind,
    /// Absolute path the daemon reads.
    pub path: PathBuf,
    /// The skill's name as the caller knows it: must be the folder's name (a
    /// skill is named after its folder, never by the caller or its SKILL.md).
    pub name: Option<String>,
    /// One MCP server of the config.
    pub server: Option<String>,
    /// Decide allowed/blocked even when below the threshold.
    pub install: bool,
}

/// What one scanned target came to: its stored findings and the admission decision.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// The skill or MCP server scanned.
    pub target: Target,
    /// The path the scanners read.
    pub path: String,
    /// Highest severity among the stored findings.
    pub max_severity: Option<Severity>,
    /// Stored findings (with ids) from every scanner that ran.
    pub findings: Vec<FindingRow>,
    /// How long the scan took.
    pub duration_ms: f64,
    /// What the scanners skipped (binary files, size limits, links out of the target).
    pub notes: Vec<String>,
    /// `blocked`, `allowed`, `unchanged`, `bypassed` or `pending` (held for a human).
    pub decision: String,
    /// Why the decision was taken.
    pub decision_reason: String,
    /// The audit entry of the decision (0 when nothing was decided).
    pub audit_seq: u64,
    /// Scanners that ran.
    pub scanners: Vec<String>,
    /// Scanners that were configured but failed (never silently ignored).
    pub scanner_errors: Vec<String>,
}

/// Everything the admission path works on.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Findings and decisions are written here.
    pub store: Store,
    /// In-memory decisions, to know what is already blocked without the store.
    pub cache: Arc<StateCache>,
    /// Scanners and policy.
    pub scan: Arc<ScanService>,
    /// Commits enforcement changes and tells runtime enforcers about them.
    pub enforcer: Enforcer,
    /// Human approval of blocks on CRITICAL findings.
    pub stepups: Arc<StepUps>,
    /// `[admission] quarantine`: a skill folder the daemon knows is moved to
    /// quarantine when a scan blocks it.
    pub quarantine: Option<Arc<crate::governance::quarantine::Quarantine>>,
}

impl Admission {
    /// With step-up on, a finding at or above `auto_block_severity` makes the
    /// daemon propose a block, held for a human. Returns the request id.
    pub async fn propose_block_if_critical(
        &self,
        target: &Target,
        max: Option<Severity>,
    ) -> Option<String> {
        if !self.stepups.enabled()
            || max.is_none_or(|m| m < self.stepups.settings().auto_block_severity)
        {
            return None;
        }
        if matches!(
            self.cache.check(target.kind, &target.name),
            Verdict::Blocked(_)
        ) {
            return None;
        }
        let system = Actor {
            id: "system:scanner".into(),
            name: "defenseclawd".into(),
            ..Actor::system()
        };
        let reason = format!("scan found a {} finding", max.map_or("", |m| m.as_str()));
        match self
            .stepups
            .request(
                system,
                target.clone(),
                StepUpAction::Block,
                reason,
                None,
                Default::default(),
            )
            .await
        {
            Ok(row) => Some(row.id),
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "could not propose a block for approval");
                let _ = self
                    .store
                    .write(Audit(crate::audit::NewEntry {
                        action: "stepup-error".into(),
                        target: Some(target.clone()),
                        severity: max,
                        outcome: "error".into(),
                        reason: format!("could not ask for approval of a block: {e}"),
                        details: serde_json::json!({}),
                        actor: Actor::system(),
                    }))
                    .await;
                None
            }
        }
    }

    /// Scans, stores each scanner's findings and applies the admission policy.
    pub async fn run(&self, actor: Actor, req: ScanRequest) -> Result<Vec<ScanResult>> {
        if !req.path.is_absolute() {
            return Err(Error::invalid(
                "path",
                "must be absolute (the daemon resolves no relative paths)",
            ));
        }
        if let Some(name) = &req.name {
            crate::names::target_name("name", name)?;
        }
        // A skill is named after its folder (the key OpenClaw reports), never by its
        // SKILL.md nor by the caller: a scan of one folder cannot write findings or
        // decisions under another skill's name.
        let folder = match req.kind {
            TargetKind::Skill => {
                // What the path is comes first: a FIFO or a link is refused as such,
                // before its name is judged.
                defenseclaw_scanner::check_skill_folder(&req.path)
                    .map_err(|e| Error::invalid("path", e.to_string()))?;
                Some(self.skill_name(&actor, &req).await?)
            }
            TargetKind::Mcp => None,
        };
        let scanners = self.scan.scanners.clone();
        let (kind, path, server) = (req.kind, req.path.clone(), req.server.clone());
        // On the scan pool: bounded, and never in the way of store reads.
        let scanned: Vec<Scanned> = self
            .scan
            .pool
            .run(move || match kind {
                TargetKind::Skill => scanners.scan_skill(&path).map(|s| vec![s]),
                TargetKind::Mcp => scanners.scan_mcp(&path, server.as_deref()),
            })
            .await?;
        let mut results = Vec::with_capacity(scanned.len());
        for mut s in scanned {
            let name = match &folder {
                Some(folder) => {
                    if s.report.name != *folder {
                        s.report.notes.push(format!(
                            "SKILL.md names the skill {:?}; it is recorded under its folder name {folder:?}",
                            s.report.name
                        ));
                    }
                    folder.clone()
                }
                None => s.report.name.clone(),
            };
            crate::names::target_name("name", &name).map_err(|_| {
                Error::invalid(
                    "name",
                    format!(
                        "{} (from the scanned target) is not a valid target name; pass a name",
                        crate::error::quoted(&name)
                    ),
                )
            })?;
            let target = Target { kind, name };
            // The LLM analyzer (when on and the skill is in its band); an
            // allow-listed target is not scanned, so not reviewed either.
            if !self.scan.admission.allow_listed(&target) {
                self.scan.scanners.review(&mut s).await;
            }
            let mut result = self
                .record_and_decide(&actor, target, s, req.install)
                .await?;
            if kind == TargetKind::Skill {
                self.quarantine_if_blocked(&req.path, &mut result).await;
            }
            results.push(result);
        }
        Ok(results)
    }

    /// `[admission] quarantine`: a skill this scan just blocked is moved to
    /// quarantine when its folder is one the daemon knows as a skill
    /// (reported by OpenClaw or in a watched directory): a scan of any other
    /// path never makes the daemon move it. The outcome is a note of the
    /// result (and audited by the quarantine itself).
    async fn quarantine_if_blocked(&self, path: &std::path::Path, result: &mut ScanResult) {
        let Some(q) = &self.quarantine else {
            return;
        };
        if result.decision != "blocked" || result.audit_seq == 0 {
            return;
        }
        if !q.known().is_known(path) {
            result.notes.push(
                "not quarantined: the folder is not one the daemon knows as a skill (OpenClaw-reported or in a watched directory)"
                    .into(),
            );
            return;
        }
        let actor = Actor {
            id: "system:admission".into(),
            name: "admission".into(),
            ..Actor::system()
        };
        let reason = format!("admission blocked it: {}", result.decision_reason);
        match q
            .quarantine(actor, &result.target.name, Some(path.to_path_buf()), reason)
            .await
        {
            Ok(done) => result
                .notes
                .push(format!("quarantined to {}", done.record.stored_path)),
            Err(e) => {
                tracing::warn!(skill = %result.target.name, error = %e, "could not quarantine a blocked skill");
                result.notes.push(format!("quarantine failed: {e}"));
            }
        }
    }

    /// Records what a scan of `target` found (a scan the daemon ran itself,
    /// e.g. of OpenClaw's tool catalog) and applies the admission policy as a
    /// watched-folder scan does (never an install).
    pub async fn record_scanned(
        &self,
        actor: Actor,
        target: Target,
        scanned: Scanned,
    ) -> Result<ScanResult> {
        crate::names::target_name("name", &target.name)?;
        self.record_and_decide(&actor, target, scanned, false).await
    }

    /// The skill's name: its folder's. A caller-supplied name that differs is
    /// refused (and audited): it would let a scan of one folder claim another skill.
    async fn skill_name(&self, actor: &Actor, req: &ScanRequest) -> Result<String> {
        let folder = req
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::names::target_name("path", &folder).map_err(|_| {
            Error::invalid(
                "path",
                "must end in the skill's folder, whose name is the skill's name",
            )
        })?;
        match &req.name {
            Some(claimed) if *claimed != folder => {
                let reason = format!(
                    "name {claimed:?} differs from the skill folder's name {folder:?}; a skill is named after its folder"
                );
                let audit = Audit(crate::audit::NewEntry {
                    action: "scan-target".into(),
                    target: Some(Target {
                        kind: TargetKind::Skill,
                        name: claimed.clone(),
                    }),
                    severity: None,
                    outcome: "denied".into(),
                    reason: reason.clone(),
                    details: serde_json::json!({
                        "path": req.path.display().to_string(),
                        "folder_name": folder,
                        "peer": {"uid": actor.uid, "pid": actor.pid},
                    }),
                    actor: actor.clone(),
                });
                if let Err(e) = self.store.write(audit).await {
                    tracing::error!(error = %e, "could not audit a refused scan");
                }
                Err(Error::invalid("name", reason))
            }
            _ => Ok(folder),
        }
    }

    /// Allows `target` on admission (install, allow list) if the protection
    /// invariant lets it commit; otherwise asks a human and holds it. Returns
    /// the decision and its reason.
    async fn admit(
        &self,
        actor: &Actor,
        target: &Target,
        reason: String,
        details: serde_json::Value,
        result: &mut ScanResult,
    ) -> Result<()> {
        match self
            .stepups
            .protection()
            .rule(target, Change::Allow)
            .await?
        {
            Ruling::Commit => {
                let (_, seq) = self
                    .enforce(
                        actor,
                        target,
                        EnforcementAction::Allow,
                        reason.clone(),
                        details,
                    )
                    .await?;
                result.decision = "allowed".into();
                result.decision_reason = reason;
                result.audit_seq = seq;
            }
            Ruling::NeedsApproval | Ruling::FailClosed => {
                let row = self
                    .stepups
                    .request(
                        actor.clone(),
                        target.clone(),
                        StepUpAction::Allow,
                        reason,
                        None,
                        Default::default(),
                    )
                    .await?;
                result.decision = "pending".into();
                result.decision_reason = format!(
                    "open findings reach [stepup] min_severity: the allow waits for human approval ({})",
                    row.id
                );
            }
        }
        Ok(())
    }

    async fn record_and_decide(
        &self,
        actor: &Actor,
        target: Target,
        s: Scanned,
        install: bool,
    ) -> Result<ScanResult> {
        let mut result = ScanResult {
            target: target.clone(),
            path: s.report.path.clone(),
            max_severity: None,
            findings: Vec::new(),
            duration_ms: s.report.duration_ms,
            notes: s.report.notes.clone(),
            decision: String::new(),
            decision_reason: String::new(),
            audit_seq: 0,
            scanners: Vec::new(),
            scanner_errors: s.errors.clone(),
        };
        if self.scan.admission.allow_listed(&target) {
            result.decision = "bypassed".into();
            result.decision_reason = "on the admission allow list; not scanned".into();
            if install {
                self.admit(
                    actor,
                    &target,
                    "admission: allow list".into(),
                    serde_json::json!({"admission": "allow_list"}),
                    &mut result,
                )
                .await?;
                if result.decision == "allowed" {
                    result.decision = "bypassed".into();
                    result.decision_reason = "on the admission allow list; not scanned".into();
                }
            }
            return Ok(result);
        }
        let mut max = None;
        for (scanner, findings) in s.by_scanner {
            result.scanners.push(scanner.clone());
            let ReportStored { findings, .. } = self
                .store
                .write(ScanReport {
                    scanner,
                    target: target.clone(),
                    findings,
                    actor: actor.clone(),
                    origin: ReportOrigin::Daemon,
                    keep_open_at: self.stepups.protection().report_keeps_open_at(),
                })
                .await?;
            for f in &findings {
                max = max.max(Some(f.severity));
            }
            result.findings.extend(findings);
        }
        result.max_severity = max;
        let threshold = self.scan.admission.threshold(target.kind);
        let summary = serde_json::json!({
            "admission": true,
            "findings": result.findings.len(),
            "max_severity": max.map(|m| m.as_str()),
            "threshold": threshold.as_str(),
            "scanners": result.scanners,
            "scanner_errors": result.scanner_errors,
        });
        let blocked_now = matches!(
            self.cache.check(target.kind, &target.name),
            Verdict::Blocked(_)
        );
        if max.is_some_and(|m| m >= threshold)
            && let Some(id) = self.propose_block_if_critical(&target, max).await
        {
            result.decision = "pending".into();
            result.decision_reason = format!("block held for human approval ({id})");
        } else if max.is_some_and(|m| m >= threshold) {
            let reason = format!(
                "admission: {} finding(s), max {} (blocks at {})",
                result.findings.len(),
                max.map_or("", |m| m.as_str()),
                threshold.as_str()
            );
            let (changed, seq) = self
                .enforce(
                    actor,
                    &target,
                    EnforcementAction::Block,
                    reason.clone(),
                    summary,
                )
                .await?;
            result.decision = if changed {
                "blocked".into()
            } else {
                "unchanged".into()
            };
            result.decision_reason = reason;
            result.audit_seq = seq;
        } else if install && blocked_now {
            result.decision = "blocked".into();
            result.decision_reason = "on the block list; an operator must unblock it".into();
        } else if install {
            let reason = format!(
                "admission: {} finding(s) below {}",
                result.findings.len(),
                threshold.as_str()
            );
            self.admit(actor, &target, reason, summary, &mut result)
                .await?;
        } else {
            result.decision = "unchanged".into();
            result.decision_reason = format!("below the blocking threshold {}", threshold.as_str());
        }
        Ok(result)
    }

    async fn enforce(
        &self,
        actor: &Actor,
        target: &Target,
        action: EnforcementAction,
        reason: String,
        details: serde_json::Value,
    ) -> Result<(bool, u64)> {
        let done = self
            .enforcer
            .commit(target, action, reason, actor.clone(), details)
            .await?;
        debug_assert!(
            done.decision.state != EnforcementState::None || action == EnforcementAction::Unblock
        );
        Ok((done.changed, done.entry.seq))
    }
}
