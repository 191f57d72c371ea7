//! The `otlp` sink: OTLP/HTTP protobuf logs (`POST <url>/v1/logs`,
//! `Content-Type: application/x-protobuf`) to an OpenTelemetry Collector,
//! built from the official OTLP definitions (`opentelemetry-proto`). One
//! request per batch: a resource (`service.name`, `host.id`,
//! `service.version`) with one LogRecord per record, whose body is the record's
//! JSON object (the `audit export` line plus `host_id`) and whose attributes
//! are its fields. Only a 2xx answer counts as delivered; a partial success
//! is a success that the sender must not retry (OTLP spec), so it is logged.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

use crate::secrets::SecretString;

/// The OTLP/HTTP logs path appended to a base URL.
pub const LOGS_PATH: &str = "/v1/logs";
/// Largest record body sent; a bigger record goes as a stub with its chain fields.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Most of a response body read (an OTLP response is a few bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The instrumentation scope naming the records' source.
pub const SCOPE: &str = "defenseclawd.audit";

/// POSTs batches to one collector.
pub struct OtlpSink {
    client: reqwest::Client,
    url: url::Url,
    /// `(header name, value)` carrying the token; the value is secret.
    auth: Option<(reqwest::header::HeaderName, SecretString)>,
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSink")
            .field("host", &self.url.host_str())
            .field("auth_header", &self.auth.as_ref().map(|(h, _)| h.as_str()))
            .finish_non_exhaustive()
    }
}

impl OtlpSink {
    /// A sink posting to `url` (the full `/v1/logs` URL). With a `token`, each
    /// request carries `Authorization: Bearer <token>`, or `<header>: <token>`
    /// when `header` names another header.
    pub fn new(
        url: url::Url,
        token: Option<SecretString>,
        header: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let auth = match (token, header) {
            (None, None) => None,
            (None, Some(h)) => {
                return Err(format!(
                    "auth_header is {h:?} but the sink has no token: set DEFENSECLAW_EXPORT_<NAME>_TOKEN or the credential export-<name>-token"
                ));
            }
            (Some(_), _) if url.scheme() == "http" && !is_loopback(&url) => {
                return Err(
                    "the sink has a token but its URL is plain http:// to another host: use https:// (a token is sent in clear only to a loopback collector)"
                        .into(),
                );
            }
            (Some(token), header) => {
                let (name, value) = match header {
                    None => (
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {}", token.expose()),
                    ),
                    Some(h) => (
                        reqwest::header::HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("auth_header {h:?} is not a header name"))?,
                        token.expose().to_owned(),
                    ),
                };
                // Checked here so a bad token fails at start, not per request.
                reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    "the sink's token holds characters a header cannot carry".to_owned()
                })?;
                Some((name, SecretString::new(value)))
            }
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the OTLP client: {e}"))?;
        Ok(Self { client, url, auth })
    }

    /// Sends `records` as one request.
    pub async fn send(&self, records: &[Value]) -> Result<(), String> {
        let body = encode(records, SystemTime::now()).encode_to_vec();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        if let Some((name, value)) = &self.auth {
            let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                .map_err(|_| "the sink's token holds characters a header cannot carry")?;
            value.set_sensitive(true);
            request = request.header(name.clone(), value);
        }
        let mut answer = request
            .send()
            .await
            // Without the URL: it may carry a token in its query.
            .map_err(|e| format!("posting to the collector: {}", e.without_url()))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(match status.as_u16() {
                429 | 502..=504 => format!("the collector answered {status} (retryable)"),
                413 => format!("the collector answered {status}: lower batch_size"),
                _ => format!("the collector answered {status}"),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("reading the collector's answer: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                // Accepted all the same: the status said so.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if let Some(partial) = ExportLogsServiceResponse::decode(body.as_slice())
            .ok()
            .and_then(|r| r.partial_success)
            .filter(|p| p.rejected_log_records != 0 || !p.error_message.is_empty())
        {
            let message: String = partial.error_message.chars().take(200).collect();
            tracing::warn!(
                rejected = partial.rejected_log_records,
                message,
                "the collector accepted the batch only in part (not retried, as OTLP requires)"
            );
        }
        Ok(())
    }
}

/// The request carrying `records` (all from one host).
pub fn encode(records: &[Value], now: SystemTime) -> ExportLogsServiceRequest {
    let observed = unix_nanos(now);
    let host_id = records
        .first()
        .and_then(|r| r.get("host_id"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = Resource {
        attributes: vec![
            kv("service.name", string("defenseclawd")),
            kv("host.id", string(host_id)),
            kv("service.version", string(env!("CARGO_PKG_VERSION"))),
        ],
        ..Resource::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: records.iter().map(|r| log_record(r, observed)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// One record as a LogRecord: body = its JSON object, attributes = its fields.
fn log_record(record: &Value, observed: u64) -> LogRecord {
    let mut body = record.to_string();
    if body.len() > MAX_RECORD_BYTES {
        body = serde_json::json!({
            "seq": record.get("seq"),
            "hash": record.get("hash"),
            "prev_hash": record.get("prev_hash"),
            "host_id": record.get("host_id"),
            "truncated": true,
        })
        .to_string();
    }
    let head = record.get("type").and_then(Value::as_str) == Some("head");
    let mut attributes = Vec::new();
    if let Some(object) = record.as_object() {
        for (key, value) in object {
            match (key.as_str(), value) {
                (_, Value::Null) | ("details", _) => {}
                ("target", Value::Object(t)) => {
                    for (k, v) in t {
                        if let Some(v) = scalar(v) {
                            attributes.push(kv(&format!("target.{k}"), v));
                        }
                    }
                }
                ("actor", Value::Object(a)) => {
                    if let Some(id) = a.get("id").and_then(scalar) {
                        attributes.push(kv("actor.id", id));
                    }
                    attributes.push(kv("actor", string(&value.to_string())));
                }
                (k, v) => {
                    if let Some(v) = scalar(v) {
                        attributes.push(kv(k, v));
                    }
                }
            }
        }
    }
    let severity = record.get("severity").and_then(Value::as_str).unwrap_or("");
    let time = record
        .get("ts")
        .and_then(Value::as_str)
        .and_then(|ts| {
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0));
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed,
        severity_number: severity_number(severity) as i32,
        severity_text: severity.to_owned(),
        body: Some(string(&body)),
        attributes,
        event_name: if head {
            "defenseclaw.audit.head".into()
        } else {
            "defenseclaw.audit.entry".into()
        },
        ..LogRecord::default()
    }
}

/// An entry's severity on the OTLP scale: INFO → INFO, LOW → WARN,
/// MEDIUM → ERROR, HIGH → ERROR3, CRITICAL → FATAL; none → INFO.
pub fn severity_number(severity: &str) -> SeverityNumber {
    match severity {
        "LOW" => SeverityNumber::Warn,
        "MEDIUM" => SeverityNumber::Error,
        "HIGH" => SeverityNumber::Error3,
        "CRITICAL" => SeverityNumber::Fatal,
        _ => SeverityNumber::Info,
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..KeyValue::default()
    }
}

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

/// Strings, booleans and integers as typed values; other JSON is left out.
fn scalar(v: &Value) -> Option<AnyValue> {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64()?),
        },
        _ => return None,
    };
    Some(AnyValue { value: Some(value) })
}

/// A loopback address or `localhost`.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_batch_round_trips_through_the_official_types() {
        let entry = serde_json::json!({
            "seq": 7, "ts": "2026-01-02T03:04:05.000006Z", "action": "block",
            "target": {"kind": "skill", "name": "s"}, "severity": "HIGH",
            "outcome": "success", "reason": "r", "details": {"a": 1},
            "actor": {"id": "alice"}, "prev_hash": "p", "hash": "h", "host_id": "host1",
        });
        let head = serde_json::json!({"type": "head", "seq": 7, "hash": "h", "host_id": "host1"});
        let bytes = encode(&[entry.clone(), head], SystemTime::UNIX_EPOCH).encode_to_vec();
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let rl = &back.resource_logs[0];
        let res = rl.resource.as_ref().unwrap();
        assert!(res.attributes.iter().any(|a| a.key == "host.id"
            && a.value.as_ref().unwrap().value
                == Some(any_value::Value::StringValue("host1".into()))));
        let records = &rl.scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(attr(r, "seq"), Some(&any_value::Value::IntValue(7)));
        assert_eq!(
            attr(r, "target.kind"),
            Some(&any_value::Value::StringValue("skill".into()))
        );
        assert_eq!(
            attr(r, "actor.id"),
            Some(&any_value::Value::StringValue("alice".into()))
        );
        assert_eq!(r.severity_number, SeverityNumber::Error3 as i32);
        assert_eq!(r.time_unix_nano, 1_767_323_045_000_006_000);
        let Some(any_value::Value::StringValue(body)) =
            r.body.as_ref().and_then(|b| b.value.clone())
        else {
            panic!("string body")
        };
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), entry);
        assert_eq!(records[1].event_name, "defenseclaw.audit.head");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_at_start() {
        let url = url::Url::parse("http://127.0.0.1:1/v1/logs").unwrap();
        let bad = OtlpSink::new(
            url.clone(),
            Some(SecretString::new("a\nb".into())),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(!bad.contains("a\nb"), "{bad}");
        let err = OtlpSink::new(url, None, Some("x-api-key"), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no token"), "{err}");
        let remote = url::Url::parse("http://collector.example:4318/v1/logs").unwrap();
        let err = OtlpSink::new(
            remote,
            Some(SecretString::new("t0ken".into())),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.contains("https://") && !err.contains("t0ken"), "{err}");
    }
}
