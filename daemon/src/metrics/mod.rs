//! The daemon's metrics and their Prometheus text rendering: RPCs by method
//! and status code (counts and latency histograms), decisions, step-up
//! outcomes and exporter lag. Every label value comes from a closed set
//! (method names from the served descriptors, status code names,
//! `&'static str` outcomes) or from configuration (sink names), never from a
//! request, so callers cannot grow the series or put their input in them.
//!
//! Hand-written rather than a metrics crate: three counter families, one
//! histogram and one gauge are a page of code, and the text format is stable
//! (`version=0.0.4`).

pub mod rpc;
pub mod serve;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message as _;

/// Upper bounds (seconds) of the RPC latency buckets; `+Inf` follows.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// gRPC status code names, by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code as its label value (an unknown number is `UNKNOWN`).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| CODES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The label of a request path that names no served method.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The reflection services' one method each (their descriptors are not
/// exported by tonic-reflection).
const REFLECTION_METHODS: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What a decision was about (the `kind` label of `defenseclaw_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DecisionKind {
    /// A `CheckTarget` answer.
    Check,
    /// An enforcement change committed (operator, admission or step-up).
    Enforcement,
    /// A tool call the OpenClaw gate answered.
    ToolCall,
}

impl DecisionKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Enforcement => "enforcement",
            Self::ToolCall => "tool_call",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum_secs: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum_secs += secs;
        self.count += 1;
    }
}

/// The registry: one per daemon, shared by the RPC layer, governance and the
/// endpoint. Recording takes a short lock and never blocks on I/O.
#[derive(Debug)]
pub struct Metrics {
    /// Request path (`/pkg.Service/Method`) to label (`pkg.Service/Method`).
    methods: HashMap<String, Arc<str>>,
    unknown: Arc<str>,
    rpcs: Mutex<BTreeMap<(Arc<str>, &'static str), Histogram>>,
    decisions: Mutex<BTreeMap<(DecisionKind, &'static str), u64>>,
    stepups: Mutex<BTreeMap<&'static str, u64>>,
    exporter_lag: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// A registry knowing the methods in these encoded descriptor sets (and
    /// the reflection services'); other paths are counted as `unknown`.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut names: Vec<String> = REFLECTION_METHODS.iter().map(|m| (*m).to_owned()).collect();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("a descriptor set did not decode; its methods count as unknown");
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let method = method.name.unwrap_or_default();
                        names.push(if package.is_empty() {
                            format!("{service_name}/{method}")
                        } else {
                            format!("{package}.{service_name}/{method}")
                        });
                    }
                }
            }
        }
        let methods = names
            .into_iter()
            .map(|name| (format!("/{name}"), Arc::from(name)))
            .collect();
        let stepups = ["approved", "denied", "timed_out"]
            .into_iter()
            .map(|o| (o, 0))
            .collect();
        Self {
            methods,
            unknown: Arc::from(UNKNOWN_METHOD),
            rpcs: Mutex::default(),
            decisions: Mutex::default(),
            stepups: Mutex::new(stepups),
            exporter_lag: Mutex::default(),
        }
    }

    /// The label for a request path: the served method it names, or `unknown`.
    pub fn method_label(&self, path: &str) -> Arc<str> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }

    /// One finished RPC.
    pub fn rpc(&self, method: Arc<str>, code: &'static str, took: Duration) {
        lock(&self.rpcs)
            .entry((method, code))
            .or_default()
            .observe(took);
    }

    /// One decision of `kind` with `outcome`.
    pub fn decision(&self, kind: DecisionKind, outcome: &'static str) {
        *lock(&self.decisions).entry((kind, outcome)).or_default() += 1;
    }

    /// One step-up request that ended (`approved`, `denied`, `timed_out`,
    /// `error`, `cancelled`).
    pub fn stepup(&self, outcome: &'static str) {
        *lock(&self.stepups).entry(outcome).or_default() += 1;
    }

    /// The hook for exporters: how many audit entries `sink` has yet to
    /// deliver. `sink` is a configured sink name, never request input.
    pub fn set_exporter_lag(&self, sink: &str, lag: u64) {
        lock(&self.exporter_lag).insert(sink.to_owned(), lag);
    }

    /// Everything, in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str("# HELP defenseclaw_build_info The running daemon's version.\n");
        out.push_str("# TYPE defenseclaw_build_info gauge\n");
        let _ = writeln!(
            out,
            "defenseclaw_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );

        let rpcs = lock(&self.rpcs).clone();
        out.push_str("# HELP defenseclaw_rpc_requests_total gRPC calls finished, by method and status code.\n");
        out.push_str("# TYPE defenseclaw_rpc_requests_total counter\n");
        for ((method, code), h) in &rpcs {
            let _ = writeln!(
                out,
                "defenseclaw_rpc_requests_total{{method=\"{}\",code=\"{code}\"}} {}",
                escape(method),
                h.count
            );
        }
        out.push_str("# HELP defenseclaw_rpc_duration_seconds gRPC call latency until its status was sent (a stream: its lifetime), by method and status code.\n");
        out.push_str("# TYPE defenseclaw_rpc_duration_seconds histogram\n");
        for ((method, code), h) in &rpcs {
            let labels = format!("method=\"{}\",code=\"{code}\"", escape(method));
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                let _ = writeln!(
                    out,
                    "defenseclaw_rpc_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "defenseclaw_rpc_duration_seconds_sum{{{labels}}} {}",
                h.sum_secs
            );
            let _ = writeln!(
                out,
                "defenseclaw_rpc_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }

        out.push_str("# HELP defenseclaw_decisions_total Decisions: check answers, committed enforcement changes, tool-call verdicts.\n");
        out.push_str("# TYPE defenseclaw_decisions_total counter\n");
        for ((kind, outcome), n) in lock(&self.decisions).iter() {
            let _ = writeln!(
                out,
                "defenseclaw_decisions_total{{kind=\"{}\",outcome=\"{}\"}} {n}",
                kind.as_str(),
                escape(outcome)
            );
        }

        out.push_str(
            "# HELP defenseclaw_stepup_outcomes_total Step-up requests that ended, by outcome.\n",
        );
        out.push_str("# TYPE defenseclaw_stepup_outcomes_total counter\n");
        for (outcome, n) in lock(&self.stepups).iter() {
            let _ = writeln!(
                out,
                "defenseclaw_stepup_outcomes_total{{outcome=\"{}\"}} {n}",
                escape(outcome)
            );
        }

        out.push_str(
            "# HELP defenseclaw_exporter_lag_entries Audit entries a sink has yet to deliver.\n",
        );
        out.push_str("# TYPE defenseclaw_exporter_lag_entries gauge\n");
        for (sink, lag) in lock(&self.exporter_lag).iter() {
            let _ = writeln!(
                out,
                "defenseclaw_exporter_lag_entries{{sink=\"{}\"}} {lag}",
                escape(sink)
            );
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors_and_anything_else_is_unknown() {
        let m = Metrics::new(&[defenseclaw_proto::FILE_DESCRIPTOR_SET]);
        assert_eq!(
            &*m.method_label("/defenseclaw.v1.Control/CheckTarget"),
            "defenseclaw.v1.Control/CheckTarget"
        );
        assert_eq!(
            &*m.method_label("/defenseclaw.v1.Control/NoSuch"),
            UNKNOWN_METHOD
        );
        assert_eq!(&*m.method_label("/x\"}\n1"), UNKNOWN_METHOD);
    }

    #[test]
    fn histograms_are_cumulative_and_counts_add_up() {
        let m = Metrics::new(&[]);
        let method = m.method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
        m.rpc(method.clone(), code_name(0), Duration::from_micros(100));
        m.rpc(method.clone(), code_name(0), Duration::from_secs(60));
        m.rpc(method, code_name(99), Duration::from_millis(3));
        let text = m.render();
        let labels =
            "method=\"grpc.reflection.v1.ServerReflection/ServerReflectionInfo\",code=\"OK\"";
        assert!(
            text.contains(&format!("defenseclaw_rpc_requests_total{{{labels}}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "defenseclaw_rpc_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "defenseclaw_rpc_duration_seconds_bucket{{{labels},le=\"10\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "defenseclaw_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"
            )),
            "{text}"
        );
        assert!(text.contains("code=\"UNKNOWN\"} 1"), "{text}");
        assert!(
            text.contains("defenseclaw_stepup_outcomes_total{outcome=\"timed_out\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
