//! The governance layer: the only code that builds store write operations and
//! publishes events. RPC adapters make one call into [`Governance`] per
//! request; it decides, writes through the store and tells runtime enforcers.

pub mod admission;
pub mod connections;
pub mod enforcement;
pub mod enforcer;
pub mod exporting;
pub mod findings;
pub mod gate_calls;
pub mod ibom;
pub mod openclaw_host;
pub mod openclaw_setup;
pub mod protection;
pub mod quarantine;
pub mod queries;
pub mod scan_pool;
pub mod scanning;
pub mod skill_coverage;
pub mod skill_dirs;
pub mod source_revocation;
pub mod stepup;
pub mod tool_ask;
pub mod tool_gate;
pub mod vault;

use std::sync::Arc;

use crate::audit::NewEntry;
use crate::audit_coalesce::AuditCoalescer;
use crate::openclaw::MonitorHandle;
use crate::state::StateCache;
use crate::store::Store;
use admission::Admission;
use enforcer::Enforcer;
use stepup::StepUps;
use vault::TokenBroker;

/// Everything a governance decision works on; cheap to clone (shared parts).
#[derive(Clone)]
pub struct Governance {
    store: Store,
    cache: Arc<StateCache>,
    enforcer: Enforcer,
    openclaw: MonitorHandle,
    admission: Admission,
    stepups: Arc<StepUps>,
    vault: Arc<TokenBroker>,
    coalescer: Arc<AuditCoalescer>,
    gate_spec: crate::openclaw::GateSpec,
    quarantine: Arc<quarantine::Quarantine>,
    exporters: crate::export::Exporters,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

/// The services [`Governance`] is made of, as the daemon built them.
#[derive(Debug)]
pub struct Parts {
    /// The store every write goes through.
    pub store: Store,
    /// The in-memory decisions, for checks without the store.
    pub cache: Arc<StateCache>,
    /// Commits and publishes enforcement changes.
    pub enforcer: Enforcer,
    /// The OpenClaw monitor, for its status and the approvals it saw.
    pub openclaw: MonitorHandle,
    /// Scan, record, decide.
    pub admission: Admission,
    /// Human approval of protected changes.
    pub stepups: Arc<StepUps>,
    /// The Token Vault broker.
    pub vault: Arc<TokenBroker>,
    /// Refused calls are audited through it, one entry per key and window.
    pub coalescer: Arc<AuditCoalescer>,
    /// What `openclaw setup` puts into the gateway.
    pub gate_spec: crate::openclaw::GateSpec,
    /// Moves skill folders into quarantine and back.
    pub quarantine: Arc<quarantine::Quarantine>,
    /// The audit export sinks' delivery state.
    pub exporters: crate::export::Exporters,
}

impl Governance {
    /// Governance over the daemon's services.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            store,
            cache,
            enforcer,
            openclaw,
            admission,
            stepups,
            vault,
            coalescer,
            gate_spec,
            quarantine,
            exporters,
        } = parts;
        Self {
            store,
            cache,
            enforcer,
            openclaw,
            admission,
            stepups,
            vault,
            coalescer,
            gate_spec,
            quarantine,
            exporters,
        }
    }

    /// Audits a refused call, coalesced with its like under `key`. A failure
    /// to audit is logged: the caller is refused either way.
    pub async fn audit_refusal(&self, key: String, entry: NewEntry) {
        if let Err(e) = self.coalescer.record(key, entry).await {
            tracing::error!(error = %e, "could not audit a refused call");
        }
    }
}

impl Governance {
    /// Scans a skill folder or an MCP config and applies the admission policy.
    pub async fn scan(
        &self,
        actor: crate::model::Actor,
        req: admission::ScanRequest,
    ) -> crate::error::Result<Vec<admission::ScanResult>> {
        self.admission.run(actor, req).await
    }

    /// Moves a skill's folder into quarantine (audited with `actor`).
    pub async fn quarantine_skill(
        &self,
        actor: crate::model::Actor,
        name: &str,
        path: Option<std::path::PathBuf>,
        reason: String,
    ) -> crate::error::Result<quarantine::QuarantineOutcome> {
        self.quarantine.quarantine(actor, name, path, reason).await
    }

    /// Moves a quarantined skill's folder back; its enforcement is unchanged.
    pub async fn restore_skill(
        &self,
        actor: crate::model::Actor,
        name: &str,
    ) -> crate::error::Result<quarantine::QuarantineOutcome> {
        self.quarantine.restore(actor, name).await
    }

    /// Every quarantined skill.
    pub async fn list_quarantined(
        &self,
    ) -> crate::error::Result<Vec<crate::store::quarantine::QuarantineRow>> {
        self.quarantine.list().await
    }

    /// An operator withdraws a pending step-up request.
    pub async fn cancel_step_up(
        &self,
        id: &str,
        actor: crate::model::Actor,
    ) -> crate::error::Result<crate::store::stepup::StepUpRow> {
        self.stepups.cancel(id, actor).await
    }
}
