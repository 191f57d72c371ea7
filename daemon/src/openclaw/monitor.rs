//! The monitor's entry point and the handle the daemon keeps: start validates
//! the settings and spawns the connection task; the handle reads its state and
//! queues enforcement changes.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::conn;
use super::device::DeviceIdentity;
use super::host::{Host, TargetKind};
use super::settings::{GatewayToken, OpenClawError, OpenClawSettings};
use super::state::{ApprovalView, GatewayState, GatewayStatus, Shared, lock};
use crate::governance::tool_gate::ToolGate;

/// Entry point of the monitor.
#[derive(Debug)]
pub struct OpenClawMonitor;

impl OpenClawMonitor {
    /// Validates the settings, loads (or creates) the device key in `state_dir`
    /// and spawns the connection task on the current tokio runtime. With
    /// `enabled = false` nothing is spawned and the status reads `disabled`.
    pub fn start<H: Host>(
        settings: OpenClawSettings,
        token: Option<GatewayToken>,
        state_dir: &Path,
        host: Arc<H>,
        cancel: CancellationToken,
    ) -> Result<MonitorHandle, OpenClawError> {
        let (done_tx, done_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(&settings));
        // The gate decides plugin calls even when the monitor is off.
        let gate = Arc::new(ToolGate::from_settings(&settings)?);
        if !settings.enabled {
            let _ = done_tx.send(true);
            return Ok(MonitorHandle {
                shared,
                gate,
                done: done_rx,
            });
        }
        let endpoint = conn::Endpoint::parse(&settings)?;
        let device = DeviceIdentity::load_or_create(state_dir)?;
        shared.set_state(GatewayState::Connecting);
        let ctx = conn::Context::new(
            settings,
            token,
            endpoint,
            gate.clone(),
            device,
            host,
            shared.clone(),
        );
        tokio::spawn(async move {
            conn::run(ctx, cancel).await;
            let _ = done_tx.send(true);
        });
        Ok(MonitorHandle {
            shared,
            gate,
            done: done_rx,
        })
    }
}

/// Handle to the running monitor; cheap to clone.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
    gate: Arc<ToolGate>,
    done: watch::Receiver<bool>,
}

impl MonitorHandle {
    /// Current connection status.
    pub fn status(&self) -> GatewayStatus {
        self.shared.status()
    }

    /// The tool-call gate (rules, counters, pending asks).
    pub fn gate(&self) -> &Arc<ToolGate> {
        &self.gate
    }

    /// Approvals seen (pending and recently resolved) with the daemon's decision, newest last.
    pub fn approvals(&self) -> Vec<ApprovalView> {
        self.shared.approvals()
    }

    /// Pushes a committed block/allow decision into OpenClaw: a skill is
    /// disabled/enabled with `skills.update`, an MCP server with a
    /// `config.patch` on `mcp.servers.<name>.enabled`. When the gateway is not
    /// connected the action stays pending and is applied on reconnect.
    pub fn apply_enforcement(&self, kind: TargetKind, name: &str, blocked: bool) {
        if self.status().state == GatewayState::Disabled {
            // Monitor disabled (or stopped before it ever ran): nothing to push to.
            return;
        }
        self.shared.push_enforcement(kind, name, blocked);
    }

    /// How many enforcement changes wait for the gateway (no copies made).
    pub fn pending_enforcement_count(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Enforcement actions not yet applied in OpenClaw.
    pub fn pending_enforcements(&self) -> Vec<(TargetKind, String, bool)> {
        lock(&self.shared.pending)
            .iter()
            .map(|((k, n), b)| (*k, n.clone(), *b))
            .collect()
    }

    /// The gate as last read from the gateway (`None` before the first read).
    pub fn gate_view(&self) -> Option<super::gate_setup::GateView> {
        self.shared.gate_setup.view()
    }

    /// What setup put into the gateway and reconciliation keeps there
    /// (`None`: setup not done, or undone).
    pub fn set_gate_spec(&self, spec: Option<super::gate_setup::GateSpec>) {
        self.shared.gate_setup.set_spec(spec);
    }

    /// How OpenClaw is to start the MCP servers the daemon allows with
    /// Token Vault connections (`defenseclawctl` and the control socket).
    pub fn set_mcp_wrapper(&self, ctl: String, socket: String) {
        self.shared
            .gate_setup
            .set_wrapper(super::gate_setup::McpWrapper { ctl, socket });
    }

    /// Asks reconciliation to re-check the wired MCP servers (a grant was
    /// given or revoked, a server allowed or blocked).
    pub fn rewire_mcp(&self) {
        self.shared.gate_setup.rewire();
    }

    /// The gate spec reconciliation keeps in the gateway.
    pub fn gate_spec(&self) -> Option<super::gate_setup::GateSpec> {
        self.shared.gate_setup.spec()
    }

    /// Reads the gateway's config and exec policy and plans setup (or its
    /// undo from `recorded`, the changes setup made).
    pub async fn gate_plan(
        &self,
        spec: &super::gate_setup::GateSpec,
        undo_of: Option<&[super::gate_setup::GateChange]>,
    ) -> Result<
        (
            super::gate_setup::GatewayDocs,
            Vec<super::gate_setup::GateChange>,
        ),
        super::gate_setup::GateError,
    > {
        let rpc = self.shared.gate_setup.rpc()?;
        let docs = super::gate_setup::read_docs(&rpc).await?;
        let changes = match undo_of {
            None => super::gate_setup::plan(spec, &docs),
            // Undo also gives every wired MCP server its own command back.
            Some(recorded) => {
                let mut changes = super::gate_setup::plan_undo(spec, recorded, &docs);
                changes.extend(super::mcp_wiring::plan_unwrap_all(docs.config()));
                changes
            }
        };
        Ok((docs, changes))
    }

    /// Writes planned changes into the gateway, then reads the plugin's state
    /// (waiting, bounded, for it to turn active when `wait_active`; without
    /// it, the changes are an undo and written as `gate_setup::apply_undo` does).
    pub async fn gate_apply(
        &self,
        docs: &super::gate_setup::GatewayDocs,
        changes: &[super::gate_setup::GateChange],
        wait_active: bool,
    ) -> Result<super::gate_setup::GateView, super::gate_setup::GateError> {
        let rpc = self.shared.gate_setup.rpc()?;
        let version = env!("CARGO_PKG_VERSION");
        if wait_active {
            super::gate_setup::apply(&rpc, docs, changes).await?;
        } else {
            super::gate_setup::apply_undo(&rpc, docs, changes, version).await?;
        }
        let view = if wait_active {
            super::gate_setup::wait_active(&rpc, version).await?
        } else {
            super::gate_setup::read_view(&rpc, version).await?
        };
        self.shared.gate_setup.set_view(view.clone());
        Ok(view)
    }

    /// Resolves once the connection task has stopped (after cancellation) and
    /// the audit queue has been drained into the host.
    pub async fn stopped(&self) {
        let mut rx = self.done.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}
