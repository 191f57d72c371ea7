//! The gate in the gateway: what `openclaw setup` wants in OpenClaw's config
//! (the gate plugin loaded, enabled and configured) and exec policy (nothing
//! runs unasked), planning those changes against what the gateway holds,
//! applying them (compare-and-swap on the gateway's hashes), and the plugin's
//! state as status reports it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::conn::rpc::{Rpc, RpcError};

/// The gate plugin's id (`openclaw.plugin.json`).
pub const PLUGIN_ID: &str = "defenseclaw-gate";

/// Exec approval defaults setup sets: allowlisted commands run, others ask,
/// and with no approver the answer is deny.
pub const EXEC_DEFAULTS: [(&str, &str); 3] = [
    ("security", "allowlist"),
    ("ask", "on-miss"),
    ("askFallback", "deny"),
];

const CONFIG_PATHS: &str = "plugins.load.paths";
const EXEC_PREFIX: &str = "exec.approvals.defaults.";

/// Re-applies allowed per window before reconciliation stops fighting the gateway.
const MAX_REAPPLIES: usize = 3;
const REAPPLY_WINDOW: Duration = Duration::from_secs(600);
/// How long setup waits for the plugin to turn active.
const ACTIVE_WAIT: Duration = Duration::from_secs(20);

/// What setup puts into the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    /// Absolute folder of the plugin (`plugins.load.paths`).
    pub plugin_dir: String,
    /// Absolute path of the daemon's gate socket.
    pub socket_path: String,
    /// `deny` or `allow`.
    pub on_daemon_unreachable: String,
    /// The plugin's wait for a decision.
    pub decision_timeout_ms: u64,
}

impl GateSpec {
    fn plugin_config(&self) -> Value {
        json!({
            "socketPath": self.socket_path,
            "onDaemonUnreachable": self.on_daemon_unreachable,
            "decisionTimeoutMs": self.decision_timeout_ms,
        })
    }
}

/// One setting setup manages: its dotted path, the value before and after
/// (`null`: absent), and whether they differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateChange {
    /// e.g. `plugins.entries.defenseclaw-gate.enabled`, `exec.approvals.defaults.ask`.
    pub path: String,
    /// Value found.
    pub before: Value,
    /// Value wanted.
    pub after: Value,
    /// Whether applying writes anything.
    pub changed: bool,
}

impl GateChange {
    pub(crate) fn new(path: String, before: Value, after: Value) -> Self {
        let changed = before != after;
        Self {
            path,
            before,
            after,
            changed,
        }
    }
}

/// The gateway documents setup works on.
#[derive(Debug, Clone)]
pub struct GatewayDocs {
    config: Value,
    config_hash: Option<String>,
    approvals: Value,
    approvals_hash: Option<String>,
}

impl GatewayDocs {
    /// The user's config as the gateway parsed it.
    pub(crate) fn config(&self) -> &Value {
        &self.config
    }
}

/// The gate as status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GateView {
    /// `active`, `missing`, `disabled` or `stale`.
    pub plugin: String,
    /// The plugin's version in the gateway.
    pub version: Option<String>,
    /// The exec approval defaults, `security=… ask=… askFallback=…`.
    pub exec_policy: String,
}

/// Error of a gate operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    /// The gateway connection is not up.
    #[error("the OpenClaw gateway is not connected")]
    NotConnected,
    /// A gateway call failed.
    #[error("{method}: {error}")]
    Gateway {
        /// The method.
        method: &'static str,
        /// Its error.
        error: String,
    },
}

impl GateError {
    /// Whether the gateway refused a write because its document changed since
    /// it was read (re-reading and planning again may succeed).
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Gateway { error, .. } => {
                let e = error.to_lowercase();
                e.contains("changed since last load") || e.contains("hash")
            }
            Self::NotConnected => false,
        }
    }
}

fn gw(method: &'static str) -> impl FnOnce(RpcError) -> GateError {
    move |error| GateError::Gateway {
        method,
        error: error.to_string(),
    }
}

/// How OpenClaw should start an MCP server wired to the Token Vault: the CLI
/// and the daemon's control socket (see `mcp_wiring`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpWrapper {
    /// Absolute path of `defenseclawctl`.
    pub ctl: String,
    /// The daemon's control socket the wrapper asks for the token.
    pub socket: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The gate's part of the state shared with the connection task.
#[derive(Debug, Default)]
pub(crate) struct GateShared {
    rpc: Mutex<Option<Rpc>>,
    view: Mutex<Option<GateView>>,
    spec: Mutex<Option<GateSpec>>,
    reapplies: Mutex<VecDeque<Instant>>,
    wrapper: Mutex<Option<McpWrapper>>,
    rewire: tokio::sync::Notify,
}

impl GateShared {
    pub(crate) fn set_rpc(&self, rpc: Option<Rpc>) {
        *lock(&self.rpc) = rpc;
    }

    pub(crate) fn rpc(&self) -> Result<Rpc, GateError> {
        lock(&self.rpc).clone().ok_or(GateError::NotConnected)
    }

    pub(crate) fn view(&self) -> Option<GateView> {
        lock(&self.view).clone()
    }

    pub(crate) fn set_view(&self, view: GateView) {
        *lock(&self.view) = Some(view);
    }

    pub(crate) fn spec(&self) -> Option<GateSpec> {
        lock(&self.spec).clone()
    }

    pub(crate) fn set_spec(&self, spec: Option<GateSpec>) {
        *lock(&self.spec) = spec;
    }

    pub(crate) fn wrapper(&self) -> Option<McpWrapper> {
        lock(&self.wrapper).clone()
    }

    pub(crate) fn set_wrapper(&self, w: McpWrapper) {
        *lock(&self.wrapper) = Some(w);
    }

    /// Asks reconciliation to check the wired MCP servers now.
    pub(crate) fn rewire(&self) {
        self.rewire.notify_one();
    }

    pub(crate) async fn rewire_notified(&self) {
        self.rewire.notified().await;
    }

    /// Whether another re-apply fits in the window (and counts it if so).
    pub(crate) fn admit_reapply(&self) -> bool {
        let mut q = lock(&self.reapplies);
        while q.front().is_some_and(|t| t.elapsed() >= REAPPLY_WINDOW) {
            q.pop_front();
        }
        if q.len() >= MAX_REAPPLIES {
            return false;
        }
        q.push_back(Instant::now());
        true
    }
}

/// The value at a dotted path (`null` when absent).
fn at<'a>(doc: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(doc, |v, k| &v[k])
}

/// A merge patch setting `path` to `value` (`null` deletes).
fn patch_at(patch: &mut Value, path: &str, value: Value) {
    let mut cur = patch;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, k) in keys.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if i + 1 == keys.len() {
            map.insert((*k).to_owned(), value);
            return;
        }
        cur = map.entry((*k).to_owned()).or_insert_with(|| json!({}));
    }
}

/// The merge patch turning `current` into exactly `target` (keys only in
/// `current` are deleted with `null`).
fn replace_with(current: &Value, target: &Value) -> Value {
    match (current, target) {
        (Value::Object(cur), Value::Object(tgt)) => {
            let mut out = Map::new();
            for k in cur.keys().filter(|k| !tgt.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            for (k, v) in tgt {
                out.insert(
                    k.clone(),
                    replace_with(&cur.get(k).cloned().unwrap_or(Value::Null), v),
                );
            }
            Value::Object(out)
        }
        _ => target.clone(),
    }
}

fn entry_path(key: &str) -> String {
    format!("plugins.entries.{PLUGIN_ID}.{key}")
}

/// The user's config as the gateway parsed it (no defaults filled in).
fn user_config(cfg: &Value) -> Value {
    for key in ["parsed", "config"] {
        if cfg[key].is_object() {
            return cfg[key].clone();
        }
    }
    json!({})
}

/// Reads the config and the exec approvals policy.
pub(crate) async fn read_docs(rpc: &Rpc) -> Result<GatewayDocs, GateError> {
    let cfg = rpc
        .call("config.get", json!({}))
        .await
        .map_err(gw("config.get"))?;
    let appr = rpc
        .call("exec.approvals.get", json!({}))
        .await
        .map_err(gw("exec.approvals.get"))?;
    Ok(GatewayDocs {
        config: user_config(&cfg),
        config_hash: cfg["hash"].as_str().map(str::to_owned),
        approvals: match &appr["file"] {
            Value::Object(_) => appr["file"].clone(),
            _ => json!({"version": 1}),
        },
        approvals_hash: appr["hash"].as_str().map(str::to_owned),
    })
}

/// What setup would change, setting by setting.
pub fn plan(spec: &GateSpec, docs: &GatewayDocs) -> Vec<GateChange> {
    let mut out = Vec::new();
    let paths_before = at(&docs.config, CONFIG_PATHS).clone();
    let mut paths: Vec<Value> = paths_before.as_array().cloned().unwrap_or_default();
    if !paths.iter().any(|p| p.as_str() == Some(&spec.plugin_dir)) {
        paths.push(json!(spec.plugin_dir));
    }
    out.push(GateChange::new(
        CONFIG_PATHS.into(),
        paths_before,
        Value::Array(paths),
    ));
    for (key, want) in [("enabled", json!(true)), ("config", spec.plugin_config())] {
        let path = entry_path(key);
        out.push(GateChange::new(
            path.clone(),
            at(&docs.config, &path).clone(),
            want,
        ));
    }
    for (key, want) in EXEC_DEFAULTS {
        out.push(GateChange::new(
            format!("{EXEC_PREFIX}{key}"),
            docs.approvals["defaults"][key].clone(),
            json!(want),
        ));
    }
    out
}

/// What undoing setup changes: every setting setup recorded as changed goes
/// back to its value before setup; the plugin folder leaves
/// `plugins.load.paths` only if setup added it (other paths stay). (The MCP
/// servers wired through `defenseclawctl mcp exec` are `mcp_wiring`'s.)
pub fn plan_undo(spec: &GateSpec, recorded: &[GateChange], docs: &GatewayDocs) -> Vec<GateChange> {
    recorded
        .iter()
        .filter(|c| c.changed)
        .map(|c| {
            let now = current(docs, &c.path);
            let want = if c.path == CONFIG_PATHS {
                let had = c
                    .before
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(&spec.plugin_dir)));
                match now.as_array() {
                    Some(a) if !had => {
                        let kept: Vec<Value> = a
                            .iter()
                            .filter(|p| p.as_str() != Some(&spec.plugin_dir))
                            .cloned()
                            .collect();
                        if kept.is_empty() && c.before.is_null() {
                            Value::Null
                        } else {
                            Value::Array(kept)
                        }
                    }
                    _ => now.clone(),
                }
            } else {
                c.before.clone()
            };
            GateChange::new(c.path.clone(), now, want)
        })
        .collect()
}

fn current(docs: &GatewayDocs, path: &str) -> Value {
    match path.strip_prefix(EXEC_PREFIX) {
        Some(key) => docs.approvals["defaults"][key].clone(),
        None => at(&docs.config, path).clone(),
    }
}

/// Writes the changed settings: one `config.patch` and one
/// `exec.approvals.set`, each against the hash it was planned from.
pub(crate) async fn apply(
    rpc: &Rpc,
    docs: &GatewayDocs,
    changes: &[GateChange],
) -> Result<(), GateError> {
    let mut patch = Value::Object(Map::new());
    let mut exec = docs.approvals.clone();
    let (mut config_changed, mut exec_changed) = (false, false);
    for c in changes.iter().filter(|c| c.changed) {
        match c.path.strip_prefix(EXEC_PREFIX) {
            Some(key) => {
                exec_changed = true;
                if !exec["defaults"].is_object() {
                    exec["defaults"] = json!({});
                }
                if let Value::Object(d) = &mut exec["defaults"] {
                    match &c.after {
                        Value::Null => d.remove(key),
                        v => d.insert(key.to_owned(), v.clone()),
                    };
                }
            }
            None => {
                config_changed = true;
                patch_at(&mut patch, &c.path, replace_with(&c.before, &c.after));
            }
        }
    }
    if config_changed {
        let mut params = json!({"raw": patch.to_string(), "note": "defenseclawd: openclaw setup"});
        // Arrays are replaced whole (undo takes the plugin folder out of the
        // paths; a wired MCP server's args shrink back): say it is meant.
        let replace: Vec<&str> = changes
            .iter()
            .filter(|c| c.changed && (c.path == CONFIG_PATHS || c.after.is_array()))
            .map(|c| c.path.as_str())
            .collect();
        if !replace.is_empty() {
            params["replacePaths"] = json!(replace);
        }
        if let Some(h) = &docs.config_hash {
            params["baseHash"] = json!(h);
        }
        match rpc.call("config.patch", params).await {
            Ok(_) => {}
            // Written to the file, but a newer write reached the running
            // gateway first: ours is in the config; reconciliation reads the
            // result of the newer one on its config event.
            Err(e) if persisted_but_superseded(&e) => {
                tracing::info!("openclaw: config.patch persisted, superseded by a newer write");
            }
            Err(e) => return Err(gw("config.patch")(e)),
        }
    }
    if exec_changed {
        if exec["version"].is_null() {
            exec["version"] = json!(1);
        }
        let mut params = json!({"file": exec});
        if let Some(h) = &docs.approvals_hash {
            params["baseHash"] = json!(h);
        }
        rpc.call("exec.approvals.set", params)
            .await
            .map_err(gw("exec.approvals.set"))?;
    }
    Ok(())
}

/// Undoes setup in two writes. OpenClaw validates a plugin's config against
/// the plugins it has loaded, and the gate plugin requires `socketPath`: its
/// entry cannot lose its config while the plugin is loaded. So the first
/// write disables the plugin and restores everything else (load paths, exec
/// policy, wired MCP servers); once the gateway has unloaded it (bounded
/// wait), the second restores the entry's own settings.
pub(crate) async fn apply_undo(
    rpc: &Rpc,
    docs: &GatewayDocs,
    changes: &[GateChange],
    daemon_version: &str,
) -> Result<(), GateError> {
    let is_entry =
        |c: &GateChange| c.path == entry_path("enabled") || c.path == entry_path("config");
    let clears_config = changes
        .iter()
        .any(|c| c.changed && c.path == entry_path("config") && c.after.is_null());
    if !clears_config {
        return apply(rpc, docs, changes).await;
    }
    let mut first: Vec<GateChange> = changes.iter().filter(|c| !is_entry(c)).cloned().collect();
    first.push(GateChange::new(
        entry_path("enabled"),
        at(&docs.config, &entry_path("enabled")).clone(),
        json!(false),
    ));
    apply(rpc, docs, &first).await?;
    let deadline = Instant::now() + ACTIVE_WAIT;
    while read_view(rpc, daemon_version).await?.plugin != "missing" {
        if Instant::now() >= deadline {
            return Err(GateError::Gateway {
                method: "plugins.list",
                error: format!(
                    "the gateway still lists {PLUGIN_ID} after it was disabled and unloaded; its entry is left disabled (run undo again to remove it)"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let docs = read_docs(rpc).await?;
    let second: Vec<GateChange> = changes
        .iter()
        .filter(|c| is_entry(c))
        .map(|c| {
            GateChange::new(
                c.path.clone(),
                at(&docs.config, &c.path).clone(),
                c.after.clone(),
            )
        })
        .collect();
    apply(rpc, &docs, &second).await
}

/// OpenClaw's answer to a `config.patch` that was written to the config file
/// but not applied because a newer write came after it ("superseded").
fn persisted_but_superseded(e: &RpcError) -> bool {
    matches!(e, RpcError::Gateway { message, .. }
        if message.contains("persisted") && message.contains("superseded"))
}

/// The plugin's state and the exec policy, as status shows them.
pub(crate) async fn read_view(rpc: &Rpc, daemon_version: &str) -> Result<GateView, GateError> {
    let list = rpc
        .call("plugins.list", json!({}))
        .await
        .map_err(gw("plugins.list"))?;
    let appr = rpc
        .call("exec.approvals.get", json!({}))
        .await
        .map_err(gw("exec.approvals.get"))?;
    Ok(view_of(&list, &appr, daemon_version))
}

fn view_of(list: &Value, appr: &Value, daemon_version: &str) -> GateView {
    let plugins = list["plugins"]
        .as_array()
        .or_else(|| list.as_array())
        .cloned()
        .unwrap_or_default();
    let found = plugins.iter().find(|p| p["id"] == PLUGIN_ID);
    let (plugin, version) = match found {
        None => ("missing", None),
        Some(p) => {
            let version = p["version"].as_str().map(str::to_owned);
            let active = p["enabled"] != false && p["runtime"]["state"] == "active";
            let state = if !active {
                "disabled"
            } else if version.as_deref() != Some(daemon_version) {
                "stale"
            } else {
                "active"
            };
            (state, version)
        }
    };
    let defaults = if appr["resolvedDefaults"].is_object() {
        &appr["resolvedDefaults"]
    } else {
        &appr["file"]["defaults"]
    };
    let exec_policy = EXEC_DEFAULTS
        .iter()
        .map(|(k, _)| format!("{k}={}", defaults[*k].as_str().unwrap_or("unset")))
        .collect::<Vec<_>>()
        .join(" ");
    GateView {
        plugin: plugin.into(),
        version,
        exec_policy,
    }
}

/// Polls `plugins.list` until the plugin is active (or the wait ends); the last view read.
pub(crate) async fn wait_active(rpc: &Rpc, daemon_version: &str) -> Result<GateView, GateError> {
    let deadline = Instant::now() + ACTIVE_WAIT;
    loop {
        let view = read_view(rpc, daemon_version).await?;
        if matches!(view.plugin.as_str(), "active" | "stale") || Instant::now() >= deadline {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GateSpec {
        GateSpec {
            plugin_dir: "/opt/gate".into(),
            socket_path: "/run/dc/gate.sock".into(),
            on_daemon_unreachable: "deny".into(),
            decision_timeout_ms: 2000,
        }
    }

    fn docs(config: Value, defaults: Value) -> GatewayDocs {
        GatewayDocs {
            config,
            config_hash: Some("h".into()),
            approvals: json!({"version": 1, "defaults": defaults}),
            approvals_hash: Some("a".into()),
        }
    }

    #[test]
    fn a_fresh_gateway_gets_every_setting_and_a_gated_one_nothing() {
        let fresh = docs(json!({}), json!({}));
        let changes = plan(&spec(), &fresh);
        assert!(changes.iter().all(|c| c.changed), "{changes:?}");
        let gated = docs(
            json!({"plugins": {"load": {"paths": ["/x", "/opt/gate"]}, "entries": {PLUGIN_ID: {"enabled": true, "config": spec().plugin_config()}}}}),
            json!({"security": "allowlist", "ask": "on-miss", "askFallback": "deny"}),
        );
        assert!(plan(&spec(), &gated).iter().all(|c| !c.changed));
    }

    #[test]
    fn undo_restores_values_and_keeps_other_plugin_paths() {
        let before = docs(
            json!({"plugins": {"load": {"paths": ["/x"]}}}),
            json!({"security": "full"}),
        );
        let recorded = plan(&spec(), &before);
        let after = docs(
            json!({"plugins": {"load": {"paths": ["/x", "/opt/gate", "/y"]}, "entries": {PLUGIN_ID: {"enabled": true, "config": spec().plugin_config()}}}}),
            json!({"security": "allowlist", "ask": "on-miss", "askFallback": "deny"}),
        );
        let undo = plan_undo(&spec(), &recorded, &after);
        let want = |p: &str| undo.iter().find(|c| c.path == p).map(|c| c.after.clone());
        assert_eq!(want(CONFIG_PATHS), Some(json!(["/x", "/y"])));
        assert_eq!(
            want("exec.approvals.defaults.security"),
            Some(json!("full"))
        );
        assert_eq!(want("exec.approvals.defaults.ask"), Some(Value::Null));
        assert_eq!(want(&entry_path("enabled")), Some(Value::Null));
    }

    #[test]
    fn replace_patch_deletes_keys_the_target_lacks() {
        let p = replace_with(
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
            &json!({"b": {"c": 2}}),
        );
        assert_eq!(p, json!({"a": null, "b": {"c": 2, "d": null}}));
    }

    #[test]
    fn plugin_states() {
        let appr =
            json!({"resolvedDefaults": {"security": "full", "ask": "off", "askFallback": "deny"}});
        let v = view_of(&json!({"plugins": []}), &appr, "1.0.0");
        assert_eq!(v.plugin, "missing");
        assert_eq!(v.exec_policy, "security=full ask=off askFallback=deny");
        let p = |enabled: bool, state: &str, version: &str| json!({"plugins": [{"id": PLUGIN_ID, "enabled": enabled, "version": version, "runtime": {"state": state}}]});
        assert_eq!(
            view_of(&p(true, "active", "1.0.0"), &appr, "1.0.0").plugin,
            "active"
        );
        assert_eq!(
            view_of(&p(true, "active", "0.9.0"), &appr, "1.0.0").plugin,
            "stale"
        );
        assert_eq!(
            view_of(&p(false, "unloaded", "1.0.0"), &appr, "1.0.0").plugin,
            "disabled"
        );
    }
}
