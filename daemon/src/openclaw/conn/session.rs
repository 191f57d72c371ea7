//! One connected session: the frame loop that reads gateway frames, answers
//! approvals, correlates RPC replies and notices a dead link, with the
//! per-connection background work running beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::handshake::{Conn, End, Sink, Ws, handshake};
use super::reconcile::{Triggers, background, resolve_failed};
use super::rpc::{ALREADY_RESOLVED, Cmd, Pending, Rpc, RpcError};
use crate::governance::tool_gate::{AskOutcome, PendingAsk};
use crate::openclaw::engine::{Engine, Evaluation, Verdict};
use crate::openclaw::host::{Host, MonitorAudit};
use crate::openclaw::redact::truncate;
use crate::openclaw::state::{ApprovalKind, GatewayState};
use crate::openclaw::tool_frame::ToolFrame;

/// Events the monitor acts on; others only update `last_event_at`.
const RELEVANT_EVENTS: [&str; 9] = [
    "exec.approval.requested",
    "exec.approval.resolved",
    "plugin.approval.requested",
    "plugin.approval.resolved",
    "session.tool",
    "skills.changed",
    "config.changed",
    "plugins.changed",
    "shutdown",
];

/// Just the kind of a frame.
#[derive(serde::Deserialize)]
struct FrameHead<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
}

/// One attempt: handshake, then serve frames (with the background work
/// beside) until the link ends; returns how it ended.
pub(super) async fn session<H: Host>(
    conn: &Conn,
    engine: &Arc<Engine<H>>,
    cancel: &CancellationToken,
) -> End {
    let hs_timeout = Duration::from_secs(conn.settings.handshake_timeout_secs.max(1));
    let hs = tokio::select! {
        _ = cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(hs_timeout, handshake(conn)) => r,
    };
    let (ws, hello) = match hs {
        Err(_) => {
            return End::Closed {
                connected: false,
                error: format!("handshake timed out after {}s", hs_timeout.as_secs()),
                restart_after: None,
            };
        }
        Ok(Err(end)) => return end,
        Ok(Ok(x)) => x,
    };
    let shared = &engine.shared;
    shared.update_status(|st| {
        st.state = GatewayState::Connected;
        st.server_version = hello.version.clone();
        st.protocol = u32::try_from(hello.protocol).ok();
        st.scopes = hello.scopes.clone();
        st.missing_scopes = hello.missing.clone();
    });
    tracing::info!(url = %conn.endpoint.url, protocol = hello.protocol, missing_scopes = ?hello.missing, "openclaw gateway connected");
    engine
        .audit(MonitorAudit {
            action: "openclaw.connection".into(),
            target: None,
            outcome: "connected".into(),
            reason: match hello.missing.is_empty() {
                true => "connected to the OpenClaw gateway".into(),
                false => format!("connected; missing scopes: {}", hello.missing.join(", ")),
            },
            details: json!({
                "url": conn.endpoint.url,
                "server_version": hello.version,
                "protocol": hello.protocol,
                "scopes": hello.scopes,
                "missing_scopes": hello.missing,
            }),
        })
        .await;

    let timeout = Duration::from_secs(conn.settings.request_timeout_secs.max(1));
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let rpc = Rpc::new(cmd_tx, timeout);
    shared.gate_setup.set_rpc(Some(rpc.clone()));
    let triggers = Arc::new(Triggers {
        skills: Notify::new(),
        config: Notify::new(),
    });
    let conn_cancel = cancel.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(background(
        engine.clone(),
        rpc.clone(),
        triggers.clone(),
        conn_cancel.clone(),
    ));
    let dead_after = Duration::from_millis(hello.tick_ms.saturating_mul(2).max(100));
    let restart_default = Duration::from_millis(conn.settings.backoff_initial_ms.max(1));
    let end = serve(
        ws,
        engine,
        rpc,
        cmd_rx,
        &triggers,
        dead_after,
        timeout,
        restart_default,
        cancel,
    )
    .await;
    engine.shared.gate_setup.set_rpc(None);
    conn_cancel.cancel();
    tasks.shutdown().await;
    end
}

/// The frame loop's state for one connected session.
struct Serve<'a, H> {
    sink: Sink,
    rpc: Rpc,
    engine: &'a Arc<Engine<H>>,
    triggers: &'a Triggers,
    pending: HashMap<String, Pending>,
    next_id: u64,
    timeout: Duration,
    restart_hint: Option<Duration>,
}

#[allow(clippy::too_many_arguments)]
async fn serve<H: Host>(
    ws: Ws,
    engine: &Arc<Engine<H>>,
    rpc: Rpc,
    mut cmd_rx: mpsc::Receiver<Cmd>,
    triggers: &Triggers,
    dead_after: Duration,
    timeout: Duration,
    restart_default: Duration,
    cancel: &CancellationToken,
) -> End {
    let (sink, mut stream) = ws.split();
    let mut st = Serve {
        sink,
        rpc,
        engine,
        triggers,
        pending: HashMap::new(),
        next_id: 0,
        timeout,
        restart_hint: None,
    };
    let mut last_rx = Instant::now();
    let dead = tokio::time::sleep(dead_after);
    tokio::pin!(dead);
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut cmd_open = true;
    let end = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = st.sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "daemon stopping".into() }))).await;
                break End::Cancelled;
            }
            msg = stream.next() => {
                last_rx = Instant::now();
                match msg {
                    None => break st.closed("connection closed by gateway".into()),
                    Some(Err(e)) => break st.closed(format!("websocket error: {e}")),
                    Some(Ok(Message::Text(t))) => {
                        if let Err(e) = st.on_text(t.as_str()).await {
                            break st.closed(e);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => tracing::warn!("openclaw: ignoring binary frame"),
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                        let restart = if code == 1012 {
                            Some(st.restart_hint.unwrap_or(restart_default))
                        } else {
                            st.restart_hint
                        };
                        break End::Closed {
                            connected: true,
                            error: format!("closed by gateway ({code}: {})", truncate(&reason, 120)),
                            restart_after: restart,
                        };
                    }
                    Some(Ok(_)) => {}
                }
            }
            cmd = cmd_rx.recv(), if cmd_open => match cmd {
                None => cmd_open = false,
                Some(cmd) => {
                    if let Err(e) = st.send_request(cmd).await {
                        break st.closed(e);
                    }
                }
            },
            () = &mut dead => {
                let due = last_rx + dead_after;
                if Instant::now() >= due {
                    let _ = st.sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4000), reason: "dead link".into() }))).await;
                    break st.closed(format!("no frames for {} ms (2x tickIntervalMs); dead link", dead_after.as_millis()));
                }
                dead.as_mut().reset(due);
            }
            _ = sweep.tick() => st.sweep(),
        }
    };
    for (_, p) in st.pending.drain() {
        if let Pending::Call { reply, .. } = p {
            let _ = reply.send(Err(RpcError::Disconnected));
        }
    }
    end
}

impl<H: Host> Serve<'_, H> {
    fn closed(&self, error: String) -> End {
        End::Closed {
            connected: true,
            error,
            restart_after: self.restart_hint,
        }
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("dc-{}", self.next_id)
    }

    async fn send_frame(&mut self, frame: &Value) -> Result<(), String> {
        self.sink
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("websocket send: {e}"))
    }

    async fn send_request(&mut self, cmd: Cmd) -> Result<(), String> {
        let id = self.next_id();
        let frame = json!({"type": "req", "id": id, "method": cmd.method, "params": cmd.params});
        self.pending.insert(
            id,
            Pending::Call {
                reply: cmd.reply,
                expect_final: cmd.expect_final,
                deadline: Instant::now() + self.timeout,
            },
        );
        self.send_frame(&frame).await
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.pending.retain(|id, p| match p {
            Pending::Call { reply, deadline, .. } => !reply.is_closed() && *deadline > now,
            Pending::Resolve { deadline, approval_id, .. } => {
                if *deadline <= now {
                    tracing::warn!(request = %id, approval = %approval_id, "openclaw: no response to approval resolve");
                }
                *deadline > now
            }
        });
        // Timed-out calls: their receivers are dropped by `Rpc::call`'s own timeout.
    }

    async fn on_text(&mut self, text: &str) -> Result<(), String> {
        // Look at the frame kind first: frames the monitor does not act on are
        // not materialized, and session.tool is read into a lean typed form.
        let head: FrameHead<'_> = match serde_json::from_str(text) {
            Ok(h) => h,
            Err(_) => {
                tracing::warn!(len = text.len(), "openclaw: ignoring malformed frame");
                return Ok(());
            }
        };
        // Kind and size only: frames may carry commands, tokens and secrets.
        tracing::trace!(
            kind = head.ty.as_deref().unwrap_or(""),
            event = head.event.as_deref().unwrap_or(""),
            len = text.len(),
            "openclaw frame received"
        );
        if head.ty.as_deref() == Some("event") {
            let event = head.event.as_deref().unwrap_or("");
            if !RELEVANT_EVENTS.contains(&event) {
                self.engine.shared.touch_event();
                return Ok(());
            }
            if event == "session.tool" {
                self.engine.shared.touch_event();
                match serde_json::from_str::<ToolFrame>(text) {
                    Ok(frame) => {
                        if let Some(a) = self.engine.on_tool(&frame.payload) {
                            self.engine.audit(a).await;
                        }
                    }
                    Err(_) => tracing::warn!("openclaw: ignoring malformed session.tool event"),
                }
                return Ok(());
            }
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!(len = text.len(), "openclaw: ignoring malformed frame");
                return Ok(());
            }
        };
        match v["type"].as_str() {
            Some("event") => self.on_event(&v).await,
            Some("res") => {
                self.on_response(&v).await;
                Ok(())
            }
            _ => {
                tracing::warn!("openclaw: ignoring frame of unknown type");
                Ok(())
            }
        }
    }

    async fn on_response(&mut self, v: &Value) {
        let Some(id) = v["id"].as_str() else {
            tracing::warn!("openclaw: response without id");
            return;
        };
        let ok = v["ok"] == true;
        match self.pending.remove(id) {
            None => {
                tracing::debug!(request = %id, "openclaw: response to unknown or expired request")
            }
            Some(Pending::Call {
                reply,
                expect_final,
                deadline,
            }) => {
                if ok && expect_final && v["payload"]["status"] == "accepted" {
                    self.pending.insert(
                        id.to_owned(),
                        Pending::Call {
                            reply,
                            expect_final,
                            deadline,
                        },
                    );
                } else if ok {
                    let _ = reply.send(Ok(v.get("payload").cloned().unwrap_or(Value::Null)));
                } else {
                    let _ = reply.send(Err(RpcError::from_error(&v["error"])));
                }
            }
            Some(Pending::Resolve {
                approval_id, kind, ..
            }) => {
                self.engine.confirmed(&approval_id);
                if !ok {
                    let err = RpcError::from_error(&v["error"]);
                    if err.reason_is(ALREADY_RESOLVED) {
                        tracing::debug!(approval = %approval_id, "openclaw: approval already resolved elsewhere");
                    } else {
                        resolve_failed(self.engine, &approval_id, kind, &err);
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, v: &Value) -> Result<(), String> {
        let Some(event) = v["event"].as_str() else {
            return Ok(());
        };
        let engine = self.engine;
        engine.shared.touch_event();
        let payload = &v["payload"];
        match event {
            "exec.approval.requested" => {
                if let Some(ev) = engine.eval_exec(payload) {
                    self.evaluated(ev).await?;
                }
            }
            "plugin.approval.requested" => {
                if let Some(ev) = engine.eval_plugin(payload) {
                    self.evaluated(ev).await?;
                }
            }
            "exec.approval.resolved" => {
                if let Some(a) = engine.on_resolved(ApprovalKind::Exec, payload) {
                    engine.audit(a).await;
                }
            }
            "plugin.approval.resolved" => {
                if let Some(a) = engine.on_resolved(ApprovalKind::Plugin, payload) {
                    engine.audit(a).await;
                }
            }
            "skills.changed" => self.triggers.skills.notify_one(),
            "config.changed" | "plugins.changed" => self.triggers.config.notify_one(),
            "shutdown" => {
                let ms = payload["restartExpectedMs"].as_u64().unwrap_or(0);
                self.restart_hint = Some(Duration::from_millis(ms.clamp(250, 60_000)));
                tracing::info!(
                    restart_expected_ms = ms,
                    "openclaw gateway announced shutdown"
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Answers an evaluation: at once, or (ask) after the approver's answer.
    async fn evaluated(&mut self, ev: Evaluation) -> Result<(), String> {
        match (ev.verdict, ev.ask) {
            (Verdict::Ask, Some(ask)) => {
                let leftover = self.engine.try_audit(ev.audit);
                if let Some(a) = leftover {
                    self.engine.audit(a).await;
                }
                let engine = self.engine.clone();
                let rpc = self.rpc.clone();
                tokio::spawn(ask_and_resolve(engine, rpc, ev.id, ev.kind, ask));
                Ok(())
            }
            (verdict, _) => self.decide(ev.id, ev.kind, verdict, ev.audit).await,
        }
    }

    /// Audits (queued before the frame when there is room, so nothing is lost)
    /// and sends the resolve frame.
    async fn decide(
        &mut self,
        id: String,
        kind: ApprovalKind,
        verdict: Verdict,
        audit: MonitorAudit,
    ) -> Result<(), String> {
        let leftover = self.engine.try_audit(audit);
        if let Some(decision) = verdict.wire() {
            self.engine.expect_confirmation(&id, decision);
            let method = match kind {
                ApprovalKind::Exec => "exec.approval.resolve",
                ApprovalKind::Plugin => "plugin.approval.resolve",
            };
            let req_id = self.next_id();
            let frame = json!({"type": "req", "id": req_id, "method": method, "params": {"id": id, "decision": decision}});
            self.pending.insert(
                req_id,
                Pending::Resolve {
                    approval_id: id,
                    kind,
                    deadline: Instant::now() + self.timeout,
                },
            );
            self.send_frame(&frame).await?;
        }
        if let Some(a) = leftover {
            self.engine.audit(a).await;
        }
        Ok(())
    }
}

/// Asks the approver (CIBA) about a call OpenClaw holds for approval, then
/// resolves it: `allow-once` on approval, `deny` on denial, timeout or error.
/// The final outcome is audited as `tool-call` with who decided.
async fn ask_and_resolve<H: Host>(
    engine: Arc<Engine<H>>,
    rpc: Rpc,
    id: String,
    kind: ApprovalKind,
    ask: PendingAsk,
) {
    let outcome = match engine.gate.backend() {
        Some(backend) => backend.run(&ask).await,
        None => AskOutcome::Failed(
            "no approver is configured ([stepup] enabled with an approver)".into(),
        ),
    };
    let decision = match outcome {
        AskOutcome::Approved { .. } => "allow-once",
        _ => "deny",
    };
    let method = match kind {
        ApprovalKind::Exec => "exec.approval.resolve",
        ApprovalKind::Plugin => "plugin.approval.resolve",
    };
    engine.expect_confirmation(&id, decision);
    let sent = rpc
        .call(method, json!({"id": id, "decision": decision}))
        .await;
    engine.confirmed(&id);
    if let Err(e) = &sent
        && !e.reason_is(ALREADY_RESOLVED)
    {
        tracing::warn!(approval = %id, error = %e, "could not resolve an approval after asking the approver");
    }
    let audit = ask_audit(&ask, &outcome, &id, decision);
    engine.gate.stats.record(outcome.outcome());
    engine.audit(audit).await;
}

/// The `tool-call` audit entry of an ask's end.
fn ask_audit(
    ask: &PendingAsk,
    outcome: &AskOutcome,
    approval_id: &str,
    decision: &str,
) -> MonitorAudit {
    let mut details = match &ask.details {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let (approver, human, reason) = match outcome {
        AskOutcome::Approved { sub, email } => (
            json!({"sub": sub, "email": email}),
            true,
            format!("approved by {sub} ({})", ask.code),
        ),
        AskOutcome::Denied => (
            Value::Null,
            true,
            format!("denied on the approver's device ({})", ask.code),
        ),
        AskOutcome::TimedOut => (
            Value::Null,
            false,
            format!(
                "no answer from the approver before the deadline ({})",
                ask.code
            ),
        ),
        AskOutcome::Failed(why) => (
            Value::Null,
            false,
            format!("could not ask the approver ({}): {why}", ask.code),
        ),
    };
    if let Value::Object(m) = &mut details {
        m.insert("request_id".into(), json!(ask.code));
        m.insert("binding_message".into(), json!(ask.binding));
        m.insert("approver".into(), approver);
        m.insert("human_confirmed".into(), json!(human));
        m.insert("source".into(), json!("approver"));
        m.insert("rule".into(), json!(ask.rule));
        m.insert("approval_id".into(), json!(approval_id));
        m.insert("decision".into(), json!(decision));
    }
    MonitorAudit {
        action: "tool-call".into(),
        target: None,
        outcome: outcome.outcome().into(),
        reason,
        details,
    }
}
