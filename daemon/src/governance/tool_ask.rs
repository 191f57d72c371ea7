//! Tool calls that wait for a named human: the bounded table of pending asks
//! (matched to OpenClaw's plugin approval by tool call id or DC code) and the
//! CIBA round trip to the `[stepup]` approver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::oidc::ciba::MAX_BINDING_MESSAGE_CHARS;
use crate::oidc::{CibaClient, CibaOutcome, new_request_code};

/// An ask nobody claimed (OpenClaw never asked for the approval) is dropped after this.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

/// One tool call waiting for its approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAsk {
    /// `DC-` and 16 hex digits; on the phone, in the approval title and the audit log.
    pub code: String,
    /// The binding message: `DC-7F3A… exec rm -rf build/`.
    pub binding: String,
    /// Tool call id, when the plugin had one.
    pub tool_call_id: Option<String>,
    /// Session key, for the per-session bound.
    pub session: String,
    /// Audit details of the call (redacted).
    pub details: serde_json::Value,
    /// The tool.
    pub tool: String,
    /// The rule that asked.
    pub rule: String,
}

impl PendingAsk {
    /// A new ask with a fresh code; `what` is the tool and its (redacted) subject.
    pub fn new(tool: &str, subject: &str) -> Self {
        let code = new_request_code();
        let binding = binding(&code, tool, subject);
        Self {
            code,
            binding,
            tool_call_id: None,
            session: String::new(),
            details: serde_json::Value::Null,
            tool: tool.to_owned(),
            rule: String::new(),
        }
    }
}

/// `DC-… <tool> <subject>` in the characters a binding message may hold
/// (others become `.`), whitespace collapsed, cut to 64 characters.
fn binding(code: &str, tool: &str, subject: &str) -> String {
    let raw = format!("{code} {tool} {subject}");
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_whitespace() {
            ' '
        } else if c.is_ascii_alphanumeric() || "+-_.,:#".contains(c) {
            c
        } else {
            '.'
        };
        if c == ' ' && out.ends_with(' ') {
            continue;
        }
        out.push(c);
    }
    out.trim_end()
        .chars()
        .take(MAX_BINDING_MESSAGE_CHARS)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

struct Entry {
    ask: PendingAsk,
    at: Instant,
}

/// The bounded table of asks waiting to be claimed or decided.
pub struct Asks {
    map: Mutex<HashMap<String, Entry>>,
    max_total: usize,
    max_per_session: usize,
}

impl std::fmt::Debug for Asks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asks")
            .field("max_total", &self.max_total)
            .finish_non_exhaustive()
    }
}

impl Asks {
    /// A table of at most `max_total` asks, `max_per_session` per session.
    pub fn new(max_total: usize, max_per_session: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_total: max_total.max(1),
            max_per_session: max_per_session.max(1),
        }
    }

    /// Opens an ask; refused (with why) when a bound is reached.
    pub fn open(&self, ask: PendingAsk) -> Result<(), String> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, e| e.at.elapsed() < UNCLAIMED_TTL);
        if map.len() >= self.max_total {
            return Err(format!(
                "{} tool calls already wait for a human ([openclaw] max_pending_asks)",
                map.len()
            ));
        }
        let in_session = map
            .values()
            .filter(|e| e.ask.session == ask.session)
            .count();
        if in_session >= self.max_per_session {
            return Err(format!(
                "{in_session} tool calls of this session already wait for a human ([openclaw] max_pending_asks_per_session)"
            ));
        }
        map.insert(
            ask.code.clone(),
            Entry {
                ask,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// Claims the ask an approval request stands for: by tool call id, else
    /// by the DC code in its title. Claimed once.
    pub fn claim(&self, tool_call_id: Option<&str>, title: &str) -> Option<PendingAsk> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = map
            .iter()
            .find(|(code, e)| {
                (tool_call_id.is_some() && e.ask.tool_call_id.as_deref() == tool_call_id)
                    || title.contains(code.as_str())
            })
            .map(|(k, _)| k.clone())?;
        map.remove(&key).map(|e| e.ask)
    }

    /// Asks waiting now.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How an ask ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskOutcome {
    /// The approver approved: `{sub, email}`.
    Approved {
        /// Approver `sub`.
        sub: String,
        /// Approver email.
        email: Option<String>,
    },
    /// The approver denied.
    Denied,
    /// Nobody answered in time.
    TimedOut,
    /// It could not be asked (no approver, provider error, shutdown).
    Failed(String),
}

impl AskOutcome {
    /// The audit outcome: `approved`, `denied`, `timed_out`; failures are `denied`.
    pub fn outcome(&self) -> &'static str {
        match self {
            AskOutcome::Approved { .. } => "approved",
            AskOutcome::TimedOut => "timed_out",
            AskOutcome::Denied | AskOutcome::Failed(_) => "denied",
        }
    }
}

/// The CIBA side: the daemon's confidential client and the approver.
pub struct AskBackend {
    ciba: Arc<CibaClient>,
    approver: String,
    expiry_secs: u32,
    cancel: CancellationToken,
}

impl std::fmt::Debug for AskBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AskBackend")
            .field("approver", &self.approver)
            .finish_non_exhaustive()
    }
}

impl AskBackend {
    /// Asks `approver` through `ciba`; each request expires after `expiry_secs`.
    pub fn new(
        ciba: Arc<CibaClient>,
        approver: String,
        expiry_secs: u32,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            ciba,
            approver,
            expiry_secs,
            cancel,
        }
    }

    /// How long an ask may wait for the human (the plugin's approval timeout
    /// is set a little longer).
    pub fn expiry(&self) -> Duration {
        Duration::from_secs(u64::from(self.expiry_secs))
    }

    /// The approver's `sub`.
    pub fn approver(&self) -> &str {
        &self.approver
    }

    /// Sends the request and polls it to the end.
    pub async fn run(&self, ask: &PendingAsk) -> AskOutcome {
        let started = self
            .ciba
            .start(
                &self.approver,
                &ask.binding,
                "openid profile email",
                Some(self.expiry_secs),
            )
            .await;
        let start = match started {
            Ok(s) => s,
            Err(e) => return AskOutcome::Failed(e.to_string()),
        };
        let deadline = start
            .deadline()
            .min(SystemTime::now() + Duration::from_secs(u64::from(self.expiry_secs)));
        match self
            .ciba
            .poll_until(&start.auth_req_id, deadline, start.interval(), &self.cancel)
            .await
        {
            CibaOutcome::Approved(a) if a.sub == self.approver => AskOutcome::Approved {
                sub: a.sub,
                email: a.email,
            },
            CibaOutcome::Approved(a) => AskOutcome::Failed(format!(
                "approved by {} but {} was asked; not accepted",
                a.sub, self.approver
            )),
            CibaOutcome::Denied => AskOutcome::Denied,
            CibaOutcome::TimedOut => AskOutcome::TimedOut,
            CibaOutcome::Cancelled => AskOutcome::Failed("the daemon is stopping".into()),
            CibaOutcome::Error(e) => AskOutcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(session: &str, call: &str) -> PendingAsk {
        let mut a = PendingAsk::new("exec", "rm -rf build/");
        a.session = session.into();
        a.tool_call_id = Some(call.into());
        a
    }

    #[test]
    fn bounded_per_session_and_in_total() {
        let asks = Asks::new(3, 2);
        asks.open(ask("a", "1")).unwrap();
        asks.open(ask("a", "2")).unwrap();
        assert!(
            asks.open(ask("a", "3"))
                .unwrap_err()
                .contains("per_session")
        );
        asks.open(ask("b", "4")).unwrap();
        assert!(
            asks.open(ask("c", "5"))
                .unwrap_err()
                .contains("max_pending_asks")
        );
        let got = asks.claim(Some("2"), "").unwrap();
        assert_eq!(got.tool_call_id.as_deref(), Some("2"));
        assert!(asks.claim(Some("2"), "").is_none(), "claimed once");
        let a = ask("c", "9");
        let title = format!("{} exec", a.code);
        asks.open(a).unwrap();
        assert!(asks.claim(None, &title).is_some(), "by code");
        assert_eq!(asks.len(), 2);
    }

    #[test]
    fn binding_message_is_valid() {
        let a = PendingAsk::new(
            "exec",
            "rm -rf build/ && echo $(id) \"quoted\" very long tail text here",
        );
        crate::oidc::validate_binding_message(&a.binding).unwrap();
        assert!(a.binding.starts_with(&a.code));
        assert!(a.binding.contains(" exec rm -rf build. "), "{}", a.binding);
        assert!(a.binding.chars().count() <= 64);
    }
}
