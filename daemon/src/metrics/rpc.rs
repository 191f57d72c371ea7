//! The one place RPCs are counted: a tower layer on the gRPC server that
//! records each call's method, status code and latency once its status is
//! known (a trailers-only answer, the trailers, or the body's end or drop).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};

use super::{Metrics, code_name};

/// Outermost layer of the server, so refusals by the inner limits count too.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<http::Request<Body>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = Call {
            metrics: self.metrics.clone(),
            method: self.metrics.method_label(req.uri().path()),
            started: Instant::now(),
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(code_name(tonic::Code::Internal as i32));
                    return Err(e);
                }
            };
            // A trailers-only answer (most errors) carries its status here.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Observed {
                    body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// A call whose status is not known yet.
struct Call {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    started: Instant,
}

impl Call {
    fn finish(self, code: &'static str) {
        let took: Duration = self.started.elapsed();
        self.metrics.rpc(self.method, code, took);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.parse::<i32>().ok()?;
    Some(code_name(code))
}

/// A response body that records its call when the status goes by.
struct Observed {
    body: Body,
    call: Option<Call>,
}

impl Observed {
    fn finish(&mut self, code: &'static str) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(code_name(status.code() as i32)),
            Poll::Ready(None) => this.finish(code_name(tonic::Code::Unknown as i32)),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    /// Dropped before its status: the client went away (or the server stopped).
    fn drop(&mut self) {
        self.finish(code_name(tonic::Code::Cancelled as i32));
    }
}
