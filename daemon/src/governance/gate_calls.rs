//! The gate plugin's question about one tool call: decide through the tool
//! gate, open an ask when a human must decide, count and audit (`tool-call`).
//!
//! Audit volume: a denied call is written at once, and repeats of the same
//! denied call (tool, rule, argument hash) within `[audit] coalesce_window_secs`
//! are counted into one summary entry. Allowed calls are calls "of no
//! interest": the first per (tool, rule, agent, session) and window is written,
//! the rest only counted into the window's summary (`count`, `first_at`,
//! `last_at`). Asks are audited when they end (approved, denied, timed out).

use serde_json::{Value, json};

use super::Governance;
use super::openclaw_host::{target_of, verdict_in};
use super::tool_gate::{GateVerdict, PendingAsk, ToolCall};
use crate::audit::NewEntry;
use crate::audit_coalesce::key;
use crate::model::Actor;
use crate::openclaw::GatewayState;
use crate::openclaw::redact::{hash_and_preview, redact_text, truncate};

/// Longest command kept in an audit entry.
const MAX_COMMAND_CHARS: usize = 2048;
/// Time OpenClaw waits for the approval beyond the CIBA expiry.
const APPROVAL_MARGIN_MS: u64 = 15_000;

/// Who asked: the plugin's process and the version it reported.
#[derive(Debug, Clone, Default)]
pub struct GatePeer {
    /// Peer uid (SO_PEERCRED).
    pub uid: Option<u32>,
    /// Peer pid.
    pub pid: Option<u32>,
    /// The plugin's version, as it says.
    pub plugin_version: Option<String>,
}

/// What the plugin is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateAnswer {
    /// `allow`, `deny` or `ask`.
    pub decision: &'static str,
    /// Why (the block reason the model sees).
    pub reason: String,
    /// The rule that decided.
    pub rule: String,
    /// For `ask`: the DC code, the approval title and description, and how
    /// long OpenClaw should wait.
    pub ask: Option<AskAnswer>,
}

/// The approval OpenClaw is asked to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskAnswer {
    /// `DC-…`.
    pub code: String,
    /// ≤ 80 characters, starts with the code.
    pub title: String,
    /// ≤ 512 characters.
    pub description: String,
    /// OpenClaw's approval timeout.
    pub timeout_ms: u64,
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Governance {
    /// Decides one tool call for the gate plugin, audits it and counts it.
    pub async fn decide_tool_call(&self, call: ToolCall, peer: GatePeer) -> GateAnswer {
        let gate = self.openclaw.gate().clone();
        let decision = gate.decide(&call, &|k, n| verdict_in(&self.cache, k, n));
        let subject = truncate(&redact_text(&call.subject()), MAX_COMMAND_CHARS);
        let (args_sha256, args_preview) = hash_and_preview(&call.params);
        let mcp = call.mcp_of();
        let mut details = json!({
            "tool": call.tool,
            "command": call.command.as_ref().map(|_| subject.clone()),
            "args_sha256": args_sha256,
            "args_preview": args_preview,
            "agent_id": call.agent_id,
            "session_key": call.session_key,
            "session_id": call.session_id,
            "run_id": call.run_id,
            "tool_call_id": call.tool_call_id,
            "mcp_server": mcp.as_ref().map(|m| m.0.clone()),
            "mcp_tool": mcp.as_ref().map(|m| m.1.clone()),
            "rule": decision.rule,
            "source": source_of(&decision.rule),
            "plugin_version": peer.plugin_version,
            "human_confirmed": false,
        });
        let (answer, outcome) = match decision.verdict {
            GateVerdict::Deny => (
                GateAnswer {
                    decision: "deny",
                    reason: format!("Blocked by DefenseClaw: {}", decision.reason),
                    rule: decision.rule.clone(),
                    ask: None,
                },
                "denied",
            ),
            GateVerdict::Allow | GateVerdict::NoRule => (
                GateAnswer {
                    decision: "allow",
                    reason: decision.reason.clone(),
                    rule: decision.rule.clone(),
                    ask: None,
                },
                "allowed",
            ),
            GateVerdict::Ask => {
                let mut ask = PendingAsk::new(&call.tool, &subject);
                ask.tool_call_id = call.tool_call_id.clone();
                ask.session = call.session_key.clone().unwrap_or_default();
                ask.rule = decision.rule.clone();
                ask.details = details.clone();
                match self.open_ask(ask) {
                    Ok(a) => {
                        // Audited when the approver answers (or does not).
                        self.enforcer
                            .metrics()
                            .decision(crate::metrics::DecisionKind::ToolCall, "ask");
                        return GateAnswer {
                            decision: "ask",
                            reason: decision.reason,
                            rule: decision.rule,
                            ask: Some(a),
                        };
                    }
                    Err(why) => {
                        if let Value::Object(m) = &mut details {
                            m.insert("ask_refused".into(), json!(why));
                        }
                        (
                            GateAnswer {
                                decision: "deny",
                                reason: format!(
                                    "Blocked by DefenseClaw: {} ({}), but {why}",
                                    decision.reason, decision.rule
                                ),
                                rule: decision.rule.clone(),
                                ask: None,
                            },
                            "denied",
                        )
                    }
                }
            }
        };
        gate.stats.record(outcome);
        self.enforcer
            .metrics()
            .decision(crate::metrics::DecisionKind::ToolCall, outcome);
        let target = decision.target.as_ref().and_then(|(k, n)| target_of(*k, n));
        if let (Some((_, name)), Value::Object(m)) = (&decision.target, &mut details) {
            m.insert("openclaw_name".into(), json!(name));
        }
        let coalesce_key = if outcome == "allowed" {
            key(&[
                "tool-call",
                outcome,
                &call.tool,
                &decision.rule,
                call.agent_id.as_deref().unwrap_or(""),
                call.session_key.as_deref().unwrap_or(""),
            ])
        } else {
            key(&[
                "tool-call",
                outcome,
                &call.tool,
                &decision.rule,
                &args_sha256,
            ])
        };
        let entry = NewEntry {
            action: "tool-call".into(),
            target,
            severity: None,
            outcome: outcome.into(),
            reason: truncate(&answer.reason, 512),
            details,
            actor: gate_actor(&peer),
        };
        if let Err(e) = self.coalescer.record(coalesce_key, entry).await {
            tracing::error!(error = %e, "could not audit a tool-call decision");
        }
        answer
    }

    /// Opens an ask when someone can answer it; says why not otherwise.
    fn open_ask(&self, ask: PendingAsk) -> Result<AskAnswer, String> {
        let gate = self.openclaw.gate();
        let backend = gate
            .backend()
            .ok_or("no approver is configured ([stepup] enabled with an approver)")?;
        if self.openclaw.status().state != GatewayState::Connected {
            return Err(
                "the daemon is not connected to the OpenClaw gateway, so nobody could answer the approval"
                    .into(),
            );
        }
        let answer = AskAnswer {
            code: ask.code.clone(),
            title: cut(&format!("{} approve {}", ask.code, ask.tool), 80),
            description: cut(
                &format!(
                    "DefenseClaw asked {} to approve on their device: {} (rule {})",
                    backend.approver(),
                    ask.binding,
                    ask.rule
                ),
                512,
            ),
            timeout_ms: u64::try_from(backend.expiry().as_millis())
                .unwrap_or(u64::MAX / 2)
                .saturating_add(APPROVAL_MARGIN_MS),
        };
        gate.asks.open(ask)?;
        Ok(answer)
    }
}

/// `self-protection`, `policy` (exec rules, blocked targets), `rule`
/// (`tool_rules`, `ask_patterns`) or `default`.
fn source_of(rule: &str) -> &'static str {
    if rule.starts_with("self-protection") {
        "self-protection"
    } else if rule.starts_with("tool_rules") || rule.starts_with("ask_patterns") {
        "rule"
    } else if rule == "no-rule" {
        "default"
    } else {
        "policy"
    }
}

fn gate_actor(peer: &GatePeer) -> Actor {
    Actor {
        id: "system:openclaw-gate".into(),
        name: "openclaw-gate".into(),
        uid: peer.uid,
        pid: peer.pid,
        ..Actor::system()
    }
}
