//! `openclaw setup` against the real gateway: from a fresh gateway the gate
//! plugin turns active and the exec policy asks; a dry run writes nothing; a
//! second run changes nothing; `--undo` restores the config exactly; someone
//! turning the gate off is put back by reconciliation and audited.

use std::path::PathBuf;

use defenseclaw_proto::v1 as pb;
use defenseclaw_testkit::daemon::TestDaemon;
use defenseclaw_testkit::openclaw::{GatewayClient, OpenClawGateway};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::openclaw::{REAL_GATEWAY, eventually};

type Client = pb::control_client::ControlClient<Channel>;

/// The gate plugin shipped in `deploy/openclaw-plugin`.
fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/openclaw-plugin")
        .canonicalize()
        .expect("deploy/openclaw-plugin exists")
}

async fn start() -> (OpenClawGateway, TestDaemon, Client, GatewayClient) {
    let gw = OpenClawGateway::start_with(json!({}))
        .await
        .expect("starting the real OpenClaw gateway");
    let url = gw.url();
    let dir = plugin_dir().display().to_string();
    let d = TestDaemon::start_with(&[
        ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
        ("DEFENSECLAW_OPENCLAW__URL", &url),
        ("DEFENSECLAW_OPENCLAW__PLUGIN_DIR", &dir),
        ("OPENCLAW_GATEWAY_TOKEN", &gw.token),
    ])
    .await
    .unwrap();
    let c = d.client().await.unwrap();
    eventually("the daemon connected with the gate read", || {
        let mut c = c.clone();
        async move { gate(&mut c).await }
    })
    .await;
    let operator = GatewayClient::connect(&url, Some(&gw.token), &[])
        .await
        .unwrap();
    (gw, d, c, operator)
}

async fn gate(c: &mut Client) -> Option<pb::OpenClawGate> {
    let s = c
        .get_status(pb::GetStatusRequest {})
        .await
        .ok()?
        .into_inner();
    let oc = s.openclaw?;
    (oc.state == "connected").then_some(())?;
    // The gate object carries the decision counters from the start; its
    // plugin state once the daemon has read the gateway's plugins.
    oc.gate.filter(|g| !g.plugin.is_empty())
}

async fn setup(c: &mut Client, dry_run: bool, undo: bool) -> pb::OpenClawSetupReply {
    c.open_claw_setup(pb::OpenClawSetupRequest { dry_run, undo })
        .await
        .unwrap()
        .into_inner()
}

/// The parts of the user's config setup manages (plugins, MCP servers) and
/// the exec policy, as the gateway holds them. (The daemon writes other parts
/// meanwhile: skills it blocks after scanning OpenClaw's bundled ones.)
async fn gateway_docs(operator: &GatewayClient) -> (Value, Value) {
    let cfg = operator.request("config.get", json!({})).await.unwrap();
    let appr = operator
        .request("exec.approvals.get", json!({}))
        .await
        .unwrap();
    (
        json!({"plugins": cfg["parsed"]["plugins"], "mcp": cfg["parsed"]["mcp"]}),
        appr["file"]["defaults"].clone(),
    )
}

/// `config.patch` as an operator does it: against the hash just read, read
/// again when the daemon wrote in between. OpenClaw answering that the write
/// was persisted but superseded (the daemon's reaction to it reached the
/// running gateway first) is the write done.
async fn patch_config(operator: &GatewayClient, patch: Value) {
    for _ in 0..10 {
        let cfg = operator.request("config.get", json!({})).await.unwrap();
        match operator
            .request(
                "config.patch",
                json!({"raw": patch.to_string(), "baseHash": cfg["hash"]}),
            )
            .await
        {
            Ok(_) => return,
            Err(e) if e.to_string().contains("superseded") => return,
            Err(e) if e.to_string().contains("changed since last load") => continue,
            Err(e) => panic!("config.patch {patch}: {e}"),
        }
    }
    panic!("config.patch {patch}: the config kept changing under it");
}

fn changed(r: &pb::OpenClawSetupReply) -> Vec<&str> {
    r.changes
        .iter()
        .filter(|c| c.changed)
        .map(|c| c.path.as_str())
        .collect()
}

async fn audit(c: &mut Client, action: &str) -> Vec<pb::AuditEntry> {
    c.list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_turns_the_gate_on_once_and_undo_restores_the_config() {
    let _one_at_a_time = REAL_GATEWAY.lock().await;
    let (_gw, _d, mut c, operator) = start().await;
    let fresh = gateway_docs(&operator).await;
    let initial = eventually("the gate state read", || {
        let mut c = c.clone();
        async move { gate(&mut c).await }
    })
    .await;
    assert_eq!(initial.plugin, "missing", "{initial:?}");

    // Dry run: every setting reported as changing, nothing written.
    let dry = setup(&mut c, true, false).await;
    assert!(dry.dry_run && dry.audit_seq == 0, "{dry:?}");
    assert_eq!(changed(&dry).len(), 6, "{dry:?}");
    assert_eq!(gateway_docs(&operator).await, fresh, "a dry run wrote");
    assert!(audit(&mut c, "openclaw-setup").await.is_empty());

    // Setup: the plugin is active, the exec policy asks.
    let first = setup(&mut c, false, false).await;
    assert_eq!(first.plugin, "active", "{first:?}");
    assert_eq!(changed(&first).len(), 6, "{first:?}");
    let (cfg, defaults) = gateway_docs(&operator).await;
    assert_eq!(
        cfg["plugins"]["entries"]["defenseclaw-gate"]["enabled"],
        true
    );
    let pcfg = &cfg["plugins"]["entries"]["defenseclaw-gate"]["config"];
    assert_eq!(pcfg["onDaemonUnreachable"], "deny");
    assert!(
        pcfg["socketPath"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "{pcfg}"
    );
    assert_eq!(
        defaults,
        json!({"security": "allowlist", "ask": "on-miss", "askFallback": "deny"})
    );
    let list = operator.request("plugins.list", json!({})).await.unwrap();
    let plugin = list["plugins"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == "defenseclaw-gate"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(plugin["runtime"]["state"], "active", "{plugin}");
    let g = eventually("status shows the gate active", || {
        let mut c = c.clone();
        async move { gate(&mut c).await.filter(|g| g.plugin == "active") }
    })
    .await;
    assert_eq!(g.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        g.exec_policy,
        "security=allowlist ask=on-miss askFallback=deny"
    );
    let entries = audit(&mut c, "openclaw-setup").await;
    assert_eq!(entries.len(), 1);
    let actor = entries[0].actor.clone().unwrap_or_default();
    assert_eq!(actor.auth_method, "local", "{actor:?}");
    assert_eq!(entries[0].seq, first.audit_seq);

    // Second run: nothing changes in the gateway.
    let after_first = gateway_docs(&operator).await;
    let second = setup(&mut c, false, false).await;
    assert!(changed(&second).is_empty(), "{second:?}");
    assert_eq!(second.plugin, "active");
    assert_eq!(gateway_docs(&operator).await, after_first);

    // Undo: the config and the exec policy are as before setup.
    let undone = setup(&mut c, false, true).await;
    assert!(undone.undo && undone.audit_seq > 0, "{undone:?}");
    assert_eq!(changed(&undone).len(), 6, "{undone:?}");
    let (cfg, defaults) = gateway_docs(&operator).await;
    assert_eq!(defaults, fresh.1, "exec policy restored");
    assert!(
        cfg["plugins"]["load"]["paths"].is_null()
            && cfg["plugins"]["entries"]["defenseclaw-gate"]["enabled"].is_null()
            && cfg["plugins"]["entries"]["defenseclaw-gate"]["config"].is_null(),
        "{cfg}"
    );
    assert_eq!(audit(&mut c, "openclaw-setup-undo").await.len(), 1);
    eventually("status shows the gate gone", || {
        let mut c = c.clone();
        async move { gate(&mut c).await.filter(|g| g.plugin != "active") }
    })
    .await;
    // Nothing left to undo.
    let again = c
        .open_claw_setup(pb::OpenClawSetupRequest {
            dry_run: false,
            undo: true,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    operator.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_turned_off_in_openclaw_is_put_back_and_audited() {
    let _one_at_a_time = REAL_GATEWAY.lock().await;
    let (_gw, _d, mut c, operator) = start().await;
    let first = setup(&mut c, false, false).await;
    assert_eq!(first.plugin, "active", "{first:?}");

    // Someone loosens the exec policy and disables the plugin.
    let appr = operator
        .request("exec.approvals.get", json!({}))
        .await
        .unwrap();
    let mut file = appr["file"].clone();
    file["defaults"] = json!({"security": "full", "ask": "off", "askFallback": "full"});
    operator
        .request(
            "exec.approvals.set",
            json!({"file": file, "baseHash": appr["hash"]}),
        )
        .await
        .unwrap();

    patch_config(
        &operator,
        json!({"plugins": {"entries": {"defenseclaw-gate": {"enabled": false}}}}),
    )
    .await;
    // Each change the daemon noticed is put back and audited (one entry per
    // reconciliation that found something to re-apply).
    let applied = eventually("both re-applies in the audit log", || {
        let mut c = c.clone();
        async move {
            let all = audit(&mut c, "openclaw-gate-reapplied").await;
            let applied: Vec<String> = all
                .iter()
                .filter(|e| e.outcome == "applied")
                .map(|e| e.details_json.clone())
                .collect();
            let text = applied.join("\n");
            (text.contains("plugins.entries.defenseclaw-gate.enabled")
                && text.contains("exec.approvals.defaults.security"))
            .then_some(all)
        }
    })
    .await;
    // A re-apply that lost a race with our write is audited as an error and
    // retried on the next event; every entry is the daemon's own.
    assert!(
        applied
            .iter()
            .all(|e| e.actor.as_ref().is_some_and(|a| a.auth_method == "system")),
        "{applied:?}"
    );
    eventually("the plugin enabled and the policy tight again", || {
        let operator = &operator;
        async move {
            let (cfg, defaults) = gateway_docs(operator).await;
            (cfg["plugins"]["entries"]["defenseclaw-gate"]["enabled"] == true
                && defaults
                    == json!({"security": "allowlist", "ask": "on-miss", "askFallback": "deny"}))
            .then_some(())
        }
    })
    .await;
    eventually("status shows the gate active again", || {
        let mut c = c.clone();
        async move { gate(&mut c).await.filter(|g| g.plugin == "active") }
    })
    .await;
    operator.close().await;
}

/// Undo lowers protection: with step-up on, the `[stepup]` approver decides
/// it on their phone. Denied: nothing changes and the refusal is audited;
/// approved: the config is restored and the entry names the approver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_under_step_up_waits_for_the_approver() {
    use crate::stepup::{OPERATOR, bearer, operator_token, provider};
    use defenseclaw_testkit::daemon::DaemonBuilder;
    use defenseclaw_testkit::idp::CibaSelector;
    use std::time::Duration;

    let _one_at_a_time = REAL_GATEWAY.lock().await;
    let idp = provider().await;
    let gw = OpenClawGateway::start_with(json!({}))
        .await
        .expect("starting the real OpenClaw gateway");
    let url = gw.url();
    let dir = plugin_dir().display().to_string();
    let d = DaemonBuilder::new()
        .oidc(&idp)
        .envs(&[
            ("DEFENSECLAW_STEPUP__ENABLED", "true"),
            ("DEFENSECLAW_STEPUP__APPROVER", OPERATOR),
            ("DEFENSECLAW_STEPUP__REQUESTED_EXPIRY_SECS", "60"),
            ("DEFENSECLAW_OPENCLAW__ENABLED", "true"),
            ("DEFENSECLAW_OPENCLAW__URL", &url),
            ("DEFENSECLAW_OPENCLAW__PLUGIN_DIR", &dir),
            ("OPENCLAW_GATEWAY_TOKEN", &gw.token),
        ])
        .start()
        .await
        .unwrap();
    let c = d.client().await.unwrap();
    eventually("the daemon connected with the gate read", || {
        let mut c = c.clone();
        async move { gate(&mut c).await }
    })
    .await;
    let operator = GatewayClient::connect(&url, Some(&gw.token), &[])
        .await
        .unwrap();
    let token = operator_token(&idp).await;
    let call = |undo: bool| {
        let mut c = c.clone();
        let token = token.clone();
        async move {
            c.open_claw_setup(bearer(
                pb::OpenClawSetupRequest {
                    dry_run: false,
                    undo,
                },
                &token,
            ))
            .await
        }
    };
    // Setup raises protection: no approval needed.
    let first = call(false).await.unwrap().into_inner();
    assert_eq!(first.plugin, "active", "{first:?}");
    let gated = gateway_docs(&operator).await;

    let mut answered: Vec<String> = Vec::new();
    for approve in [false, true] {
        let phone = async {
            let asked = idp
                .wait_for_ciba(Duration::from_secs(90), |p| {
                    p.binding_message.as_deref().is_some_and(|b| {
                        b.contains("openclaw-setup undo") && !answered.iter().any(|a| a == b)
                    })
                })
                .await
                .expect("the approver's phone prompt");
            let which = CibaSelector::AuthReqId(asked.auth_req_id);
            if approve {
                idp.approve_ciba(&which).await.unwrap();
            } else {
                idp.deny_ciba(&which).await.unwrap();
            }
            asked.binding_message.unwrap_or_default()
        };
        let (undone, binding) = tokio::join!(call(true), phone);
        let code = binding.split(' ').next().unwrap_or_default().to_owned();
        assert!(code.starts_with("DC-"), "{binding}");
        answered.push(binding.clone());
        let mut c = c.clone();
        let entries = audit(&mut c, "openclaw-setup-undo").await;
        let (last, details) = entries
            .iter()
            .find_map(|e| {
                let d: Value = serde_json::from_str(&e.details_json).ok()?;
                (d["request_id"] == code.as_str()).then_some((e, d))
            })
            .expect("the undo audited with its request id");
        assert_eq!(details["request_id"], code.as_str(), "{details}");
        if approve {
            let undone = undone.unwrap().into_inner();
            assert_eq!(changed(&undone).len(), 6, "{undone:?}");
            assert_eq!(last.outcome, "success");
            assert_eq!(details["human_confirmed"], true);
            assert_eq!(details["approver"]["sub"], OPERATOR, "{details}");
            let (cfg, _) = gateway_docs(&operator).await;
            assert!(
                cfg["plugins"]["entries"]["defenseclaw-gate"]["enabled"].is_null(),
                "{cfg}"
            );
        } else {
            let e = undone.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            assert_eq!(last.outcome, "denied");
            assert_eq!(details["human_confirmed"], false);
            assert_eq!(gateway_docs(&operator).await, gated, "a denied undo wrote");
        }
    }
    operator.close().await;
}
