//! An OTLP/HTTP logs receiver for the tests: a small hyper server on a
//! loopback port that decodes `POST /v1/logs` with the official OTLP types
//! (`opentelemetry-proto`), checks the authentication header, and can answer
//! 503 or a partial success on demand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// One accepted request.
#[derive(Debug, Clone)]
pub struct Received {
    /// The decoded request.
    pub request: ExportLogsServiceRequest,
    /// Its `content-type`.
    pub content_type: String,
}

/// One log record with its resource's attributes (as strings).
#[derive(Debug, Clone)]
pub struct Record {
    /// Resource attributes.
    pub resource: BTreeMap<String, String>,
    /// The record.
    pub record: LogRecord,
}

impl Record {
    /// A record attribute as a string (ints in decimal).
    pub fn attr(&self, key: &str) -> Option<String> {
        find(&self.record.attributes, key)
    }

    /// The body, which the daemon sends as a string.
    pub fn body(&self) -> Option<String> {
        match self.record.body.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    fail_next: usize,
    partial_next: usize,
    accepted: Vec<Received>,
    refused_unauthenticated: usize,
    answered_503: usize,
    answered_partial: usize,
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// `http://127.0.0.1:<port>` (the base URL; the daemon adds `/v1/logs`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Starts a receiver that accepts only requests carrying `header: value`
    /// (when given), answering 401 otherwise.
    pub async fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let auth = auth.map(|(h, v)| (h.to_ascii_lowercase(), v.to_owned()));
        let state = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, state.clone(), auth.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { url, inner, task })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the next `n` (authenticated) requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Answers the next `n` requests with a partial success (one rejected record).
    pub fn partial_next(&self, n: usize) {
        self.lock().partial_next = n;
    }

    /// Requests answered 503.
    pub fn answered_503(&self) -> usize {
        self.lock().answered_503
    }

    /// Requests answered with a partial success.
    pub fn answered_partial(&self) -> usize {
        self.lock().answered_partial
    }

    /// Requests refused for a missing or wrong authentication header.
    pub fn refused_unauthenticated(&self) -> usize {
        self.lock().refused_unauthenticated
    }

    /// Every accepted request, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.lock().accepted.clone()
    }

    /// Every record of the accepted requests, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for r in self.accepted() {
            for rl in r.request.resource_logs {
                let resource: BTreeMap<String, String> = rl
                    .resource
                    .map(|res| {
                        res.attributes
                            .iter()
                            .filter_map(|a| Some((a.key.clone(), string_of(a.value.as_ref()?)?)))
                            .collect()
                    })
                    .unwrap_or_default();
                for sl in rl.scope_logs {
                    for record in sl.log_records {
                        out.push(Record {
                            resource: resource.clone(),
                            record,
                        });
                    }
                }
            }
        }
        out
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<Inner>>,
    auth: Option<(String, String)>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let answer = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(r)
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/logs" {
        return answer(StatusCode::NOT_FOUND, Vec::new());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    if let Some((name, value)) = &auth
        && header(name).as_deref() != Some(value.as_str())
    {
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused_unauthenticated += 1;
        return answer(StatusCode::UNAUTHORIZED, Vec::new());
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, Vec::new());
    };
    let Ok(request) = ExportLogsServiceRequest::decode(body.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    if s.fail_next > 0 {
        s.fail_next -= 1;
        s.answered_503 += 1;
        return answer(StatusCode::SERVICE_UNAVAILABLE, Vec::new());
    }
    let partial_success = (s.partial_next > 0).then(|| {
        s.partial_next -= 1;
        s.answered_partial += 1;
        ExportLogsPartialSuccess {
            rejected_log_records: 1,
            error_message: "one record was not wanted".into(),
        }
    });
    s.accepted.push(Received {
        request,
        content_type,
    });
    answer(
        StatusCode::OK,
        ExportLogsServiceResponse { partial_success }.encode_to_vec(),
    )
}

fn find(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| string_of(a.value.as_ref()?))
}

fn string_of(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}
