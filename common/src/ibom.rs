//! The Auth-IBOM (`auth-ibom/v1`): the compliance inventory of every Token
//! Vault grant, and the one derivation of its grants' history from the audit
//! chain. The daemon builds the document with [`derive`]; `connections export
//! --verify` runs the same derivation over the daemon's verified log and
//! compares, so a document and the log can only agree when nothing was edited,
//! added or removed. The schema file is `docs/schema/auth-ibom-v1.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `schema` value of a version 1 document.
pub const SCHEMA: &str = "auth-ibom/v1";

/// Audit actions the inventory is derived from; every other entry is ignored.
pub const ACTIONS: &[&str] = &[
    "connection-grant",
    "connection-revoke",
    "connection-suspend",
    "connection-resume",
    "connection-unlink",
    "connection-credential-dropped",
    "token-exchange",
    "account-linked",
];

/// Who did something, as the audit entry names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    /// Stable id: the token `sub`, `uid:<n>`, or `system:…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `oidc`, `local` or `system`.
    pub auth_method: String,
}

/// One audit entry, as the derivation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When (the stored timestamp).
    pub ts: String,
    /// The action.
    pub action: String,
    /// `mcp`, `skill` or empty.
    pub target_kind: String,
    /// The target's name (the MCP server for grant actions).
    pub target_name: String,
    /// `success`, `error`, …
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// The details object.
    pub details: Value,
    /// Who.
    pub actor: EventActor,
}

/// The audit head at export time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Last seq (0: empty log).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// One change of a grant, with the audit entry that records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The audit entry's seq.
    pub seq: u64,
    /// The audit entry's hash.
    pub hash: String,
    /// When.
    pub ts: String,
    /// The audit action (`connection-grant`, `connection-suspend`, …).
    pub action: String,
    /// The grant's status after the event.
    pub status: String,
    /// Who made the change.
    pub actor: EventActor,
    /// Why, in the actor's words.
    pub reason: String,
    /// Whether a human confirmed it over step-up (grant events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_confirmed: Option<bool>,
    /// The step-up request id (grant events approved over CIBA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Who approved the grant's latest declaration, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `sub` (or local actor id) of the approver.
    pub approved_by: String,
    /// The approver's email, when the step-up recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_email: Option<String>,
    /// `operator` (declared by an operator directly) or `step-up` (approved over CIBA).
    pub method: String,
    /// A human confirmed it on their device.
    pub human_confirmed: bool,
    /// The step-up request id, when approved over CIBA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who asked (the operator who declared it).
    pub requested_by: EventActor,
    /// When.
    pub approved_at: String,
    /// The declaring audit entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// One server's grant for one connection, over its whole life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// MCP server.
    pub server: String,
    /// Auth0 connection.
    pub connection: String,
    /// Status after the last event: active, suspended, revoked, unlinked, broken.
    pub status: String,
    /// Scopes the latest declaration asked for.
    pub declared_scopes: Vec<String>,
    /// The latest declaration's approval.
    pub approval: Approval,
    /// Whose credentials were exchanged for it (`sub`s, sorted), including a
    /// stored unattended approver's.
    pub subjects: Vec<String>,
    /// A stored refresh token starts it unattended (after the last event).
    pub unattended: bool,
    /// First declaration.
    pub created_at: String,
    /// Scopes the provider granted in the last successful exchange (live; not
    /// covered by the audit chain).
    #[serde(default)]
    pub granted_scopes: Vec<String>,
    /// Last token handed out (live; not covered by the audit chain).
    #[serde(default)]
    pub last_used: Option<String>,
    /// Tokens handed out (live; not covered by the audit chain).
    #[serde(default)]
    pub use_count: u64,
    /// Every change, oldest first.
    pub history: Vec<Event>,
}

/// An account linked through Connected Accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Whose.
    pub sub: String,
    /// Connection.
    pub connection: String,
    /// The provider's connected account id.
    pub account_id: String,
    /// When it was (last) linked.
    pub linked_at: String,
    /// The `account-linked` entry's seq.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// When it was built.
    pub generated_at: String,
    /// The `--since` bound, when given (grants changed since, or not ended before).
    #[serde(default)]
    pub since: Option<String>,
    /// The audit head the document was derived up to.
    pub audit_head: AuditHead,
    /// Every grant, by server and connection.
    pub grants: Vec<Grant>,
    /// Linked accounts.
    pub linked_accounts: Vec<Account>,
}

/// Statuses only a person changes back: an exchange's outcome never does.
fn held(status: &str) -> bool {
    matches!(status, "suspended" | "revoked" | "unlinked")
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn event(e: &ChainEntry, status: &str) -> Event {
    Event {
        seq: e.seq,
        hash: e.hash.clone(),
        ts: e.ts.clone(),
        action: e.action.clone(),
        status: status.to_owned(),
        actor: e.actor.clone(),
        reason: e.reason.clone(),
        // A change a human confirmed over step-up (a grant, a CIBA resumption) says so.
        human_confirmed: e.details.get("human_confirmed").and_then(Value::as_bool),
        request_id: text(&e.details, "request_id").or_else(|| text(&e.details, "stepup")),
    }
}

/// The grants (server, connection) an entry changes.
fn grant_keys(e: &ChainEntry) -> Vec<(String, String)> {
    let server = &e.target_name;
    let mut keys = Vec::new();
    if e.target_kind == "mcp"
        && let Some(c) = text(&e.details, "connection")
    {
        keys.push((server.clone(), c));
    }
    // Entries naming several grants: `connections` (declarations), `dropped`
    // (credentials), `grants` (an unlink reaching every grant of an account).
    for key in ["connections", "dropped"] {
        if e.target_kind == "mcp"
            && let Some(list) = e.details.get(key).and_then(Value::as_array)
        {
            keys.extend(
                list.iter()
                    .filter_map(|c| text(c, "connection"))
                    .map(|c| (server.clone(), c)),
            );
        }
    }
    // An unlink names the connection once and every grant it reached.
    if e.action == "connection-unlink"
        && let (Some(connection), Some(list)) = (
            text(&e.details, "connection"),
            e.details.get("grants_unlinked").and_then(Value::as_array),
        )
    {
        keys.extend(
            list.iter()
                .filter_map(|g| text(g, "server"))
                .map(|server| (server, connection.clone())),
        );
    }
    keys.dedup();
    keys
}

/// Derives grants and linked accounts from audit entries (oldest first; other
/// actions are ignored). With `since`, a grant is kept when it changed at or
/// after `since` or had not ended (revoked, unlinked) before it; kept grants
/// keep their whole history. Live fields (granted scopes, last use, use count)
/// are left empty for the caller to fill.
pub fn derive(
    entries: impl IntoIterator<Item = ChainEntry>,
    since: Option<&str>,
) -> (Vec<Grant>, Vec<Account>) {
    let mut grants: BTreeMap<(String, String), Grant> = BTreeMap::new();
    let mut accounts: BTreeMap<(String, String), Account> = BTreeMap::new();
    for e in entries {
        if e.action == "account-linked" {
            if let (Some(connection), Some(account_id)) = (
                text(&e.details, "connection"),
                text(&e.details, "account_id"),
            ) {
                accounts.insert(
                    (e.actor.id.clone(), connection.clone()),
                    Account {
                        sub: e.actor.id.clone(),
                        connection,
                        account_id,
                        linked_at: e.ts.clone(),
                        seq: e.seq,
                        hash: e.hash.clone(),
                    },
                );
            }
            continue;
        }
        if !ACTIONS.contains(&e.action.as_str()) {
            continue;
        }
        // The account's record goes with an unlink (whatever the provider said).
        if e.action == "connection-unlink"
            && e.details.get("linked_account_record_removed") == Some(&Value::Bool(true))
            && let (Some(sub), Some(connection)) = (
                text(&e.details, "subject_sub"),
                text(&e.details, "connection"),
            )
        {
            accounts.remove(&(sub, connection));
        }
        for (server, connection) in grant_keys(&e) {
            apply(&mut grants, &e, server, connection);
        }
    }
    let grants = grants
        .into_values()
        .filter(|g| match since {
            None => true,
            Some(since) => {
                g.history.iter().any(|ev| ev.ts.as_str() >= since)
                    || !matches!(g.status.as_str(), "revoked" | "unlinked")
            }
        })
        .collect();
    (grants, accounts.into_values().collect())
}

fn apply(
    grants: &mut BTreeMap<(String, String), Grant>,
    e: &ChainEntry,
    server: String,
    connection: String,
) {
    let key = (server, connection);
    if e.action == "connection-grant" {
        if e.outcome != "success" {
            return;
        }
        let decl = e
            .details
            .get("connections")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|c| text(c, "connection") == Some(key.1.clone()))
            });
        let request_id = text(&e.details, "stepup");
        let human = e
            .details
            .get("human_confirmed")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let unattended = e
            .details
            .get("unattended")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let approval = Approval {
            approved_by: text(&e.details, "approved_by").unwrap_or_else(|| e.actor.id.clone()),
            approver_email: e
                .details
                .get("approver")
                .and_then(|a| text(a, "email"))
                .filter(|m| !m.is_empty()),
            method: if request_id.is_some() {
                "step-up".into()
            } else {
                "operator".into()
            },
            human_confirmed: human,
            request_id: request_id.clone(),
            requested_by: e.actor.clone(),
            approved_at: e.ts.clone(),
            seq: e.seq,
            hash: e.hash.clone(),
        };
        let g = grants.entry(key.clone()).or_insert_with(|| Grant {
            server: key.0.clone(),
            connection: key.1.clone(),
            status: String::new(),
            declared_scopes: Vec::new(),
            approval: Approval::default(),
            subjects: Vec::new(),
            unattended: false,
            created_at: e.ts.clone(),
            granted_scopes: Vec::new(),
            last_used: None,
            use_count: 0,
            history: Vec::new(),
        });
        g.status = "active".into();
        g.declared_scopes = strings(decl.and_then(|d| d.get("scopes")));
        if unattended {
            g.unattended = true;
            add_subject(g, &approval.approved_by);
        } else if g.approval.approved_by != approval.approved_by {
            // A stored credential of another approver is dropped on re-declaration.
            g.unattended = false;
        }
        g.approval = approval;
        let mut ev = event(e, "active");
        ev.human_confirmed = Some(human);
        g.history.push(ev);
        return;
    }
    // Everything else changes a grant that was declared before.
    let Some(g) = grants.get_mut(&key) else {
        return;
    };
    match e.action.as_str() {
        "connection-revoke" => {
            g.status = "revoked".into();
            g.unattended = false;
            g.history.push(event(e, "revoked"));
        }
        "connection-suspend" | "connection-resume" if e.outcome == "success" => {
            let to = text(&e.details, "to").unwrap_or_else(|| {
                if e.action == "connection-suspend" {
                    "suspended".into()
                } else {
                    "active".into()
                }
            });
            g.status = to.clone();
            g.history.push(event(e, &to));
        }
        // Marked unlinked whether or not the provider's DELETE succeeded
        // (`partial` says it failed there).
        "connection-unlink" if matches!(e.outcome.as_str(), "success" | "partial") => {
            g.status = "unlinked".into();
            g.unattended = e
                .details
                .get("grants_unlinked")
                .and_then(Value::as_array)
                .and_then(|l| l.iter().find(|x| text(x, "server") == Some(key.0.clone())))
                .and_then(|x| x.get("unattended"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            g.history.push(event(e, "unlinked"));
        }
        "connection-credential-dropped" => {
            g.unattended = false;
            let status = g.status.clone();
            g.history.push(event(e, &status));
        }
        "token-exchange" => {
            if e.outcome == "success"
                && let Some(sub) = text(&e.details, "subject_sub")
            {
                add_subject(g, &sub);
            }
            if let Some(to) = text(&e.details, "grant_status")
                && !held(&g.status)
                && to != g.status
            {
                g.status = to.clone();
                g.history.push(event(e, &to));
            }
        }
        _ => {}
    }
}

fn add_subject(g: &mut Grant, sub: &str) {
    if !sub.is_empty() && !g.subjects.iter().any(|s| s == sub) {
        g.subjects.push(sub.to_owned());
        g.subjects.sort();
    }
}

/// Whether `who` (a token `sub` or local actor id) is behind `g`: its
/// credential was exchanged for it, or they approved it.
pub fn belongs_to(g: &Grant, who: &str) -> bool {
    !who.is_empty() && (g.approval.approved_by == who || g.subjects.iter().any(|s| s == who))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(seq: u64, action: &str, details: Value) -> ChainEntry {
        ChainEntry {
            seq,
            hash: format!("h{seq}"),
            ts: format!("2026-01-0{seq}T00:00:00Z"),
            action: action.into(),
            target_kind: "mcp".into(),
            target_name: "gh".into(),
            outcome: "success".into(),
            reason: String::new(),
            details,
            actor: EventActor {
                id: "auth0|op".into(),
                name: "Op".into(),
                auth_method: "oidc".into(),
            },
        }
    }

    #[test]
    fn every_state_change_is_an_event_and_exchanges_only_count_when_they_change_something() {
        let entries = vec![
            entry(
                1,
                "connection-grant",
                json!({"connections": [{"connection": "github", "scopes": ["repo"]}],
                       "approved_by": "auth0|alice", "unattended": true,
                       "human_confirmed": true, "stepup": "r1"}),
            ),
            entry(
                2,
                "token-exchange",
                json!({"connection": "github", "subject_sub": "auth0|alice", "grant_status": "active"}),
            ),
            entry(
                3,
                "token-exchange",
                json!({"connection": "github", "grant_status": "broken"}),
            ),
            entry(
                4,
                "connection-suspend",
                json!({"connection": "github", "to": "suspended"}),
            ),
            // An exchange racing the suspension cannot reactivate it.
            entry(
                5,
                "token-exchange",
                json!({"connection": "github", "grant_status": "active"}),
            ),
            entry(
                6,
                "connection-resume",
                json!({"connection": "github", "to": "active"}),
            ),
            entry(7, "connection-revoke", json!({"connection": "github"})),
            entry(8, "block", json!({"connection": "github"})),
        ];
        // An unlink (target-less) reaching another grant, and the account record gone.
        let mut linked = entry(
            9,
            "account-linked",
            json!({"connection": "github", "account_id": "acc1"}),
        );
        linked.actor.id = "auth0|alice".into();
        let mut unlink = entry(
            10,
            "connection-unlink",
            json!({"connection": "github", "subject_sub": "auth0|alice",
                   "grants_unlinked": [{"server": "other", "from": "active", "unattended": false}],
                   "linked_account_record_removed": true}),
        );
        unlink.target_kind = String::new();
        unlink.outcome = "partial".into();
        let mut other = entry(
            1,
            "connection-grant",
            json!({"connections": [{"connection": "github", "scopes": []}], "approved_by": "auth0|alice"}),
        );
        other.target_name = "other".into();
        let (both, accounts) = derive(vec![other, entries[0].clone(), linked.clone()], None);
        assert_eq!((both.len(), accounts.len()), (2, 1));
        let mut later = vec![entries[0].clone(), linked, unlink];
        later[0].target_name = "other".into();
        let (unlinked, accounts) = derive(later, None);
        assert_eq!(unlinked[0].status, "unlinked");
        assert_eq!(unlinked[0].history[1].seq, 10);
        assert!(accounts.is_empty());
        let (grants, _) = derive(entries.clone(), None);
        assert_eq!(grants.len(), 1);
        let g = &grants[0];
        let seen: Vec<(u64, &str)> = g
            .history
            .iter()
            .map(|e| (e.seq, e.status.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, "active"),
                (3, "broken"),
                (4, "suspended"),
                (6, "active"),
                (7, "revoked")
            ]
        );
        assert_eq!(g.status, "revoked");
        assert!(!g.unattended);
        assert_eq!(g.subjects, vec!["auth0|alice".to_owned()]);
        assert_eq!(g.approval.request_id.as_deref(), Some("r1"));
        assert!(belongs_to(g, "auth0|alice"));
        assert!(!belongs_to(g, "auth0|bob"));
        assert!(!belongs_to(g, ""));
        // Ended before `since` and untouched since: left out; still live: kept.
        assert!(
            derive(entries.clone(), Some("2026-02-01T00:00:00Z"))
                .0
                .is_empty()
        );
        assert_eq!(derive(entries[..6].to_vec(), Some("2026-02-01")).0.len(), 1);
    }
}
