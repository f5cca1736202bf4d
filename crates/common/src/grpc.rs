//! The gRPC server every service runs: its own API beside the standard health
//! and reflection services, served until shutdown. One place, so every
//! service answers `grpc.health.v1` and `grpcurl list` the same way.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::body::BoxBody;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

use serde::{Deserialize, Serialize};

use crate::Shutdown;

/// The `[grpc]` section of every service with a gRPC API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address of the gRPC server: the service's API, health, reflection
    /// (port 0 = any free port).
    pub listen: SocketAddr,
}

impl Default for GrpcConfig {
    /// Services override the port with their own (50051 ingest, 50052
    /// persistence, 50053 inference, 50054 incident).
    fn default() -> Self {
        Self::on_port(0)
    }
}

impl GrpcConfig {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
        }
    }
}

/// Binds the gRPC server's port, naming it in the error.
pub async fn bind(config: &GrpcConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind the gRPC server on {}", config.listen))
}

/// Serves `service` (already configured: message size limits and the like)
/// on `listener`, reports it SERVING to health checks, and stops accepting
/// when `shutdown` fires, letting in-flight calls finish.
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: Shutdown) -> anyhow::Result<()>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (mut health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<S>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleetwatch_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection")?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .context("gRPC server failed")
}

/// Counts every call of one gRPC service by method and status code, on a
/// counter whose last two labels are method and code (earlier ones fixed per
/// service, e.g. `protocol="grpc"`). One layer instead of a counting helper
/// per handler, so a handler cannot forget it and every service spells the
/// code the same way ([`crate::error::grpc_code_label`]).
#[derive(Clone)]
pub struct RequestMetrics {
    counter: prometheus::IntCounterVec,
    leading: &'static [&'static str],
}

impl RequestMetrics {
    /// For a counter labelled `method`, `code`.
    pub fn new(counter: &prometheus::IntCounterVec) -> Self {
        Self::with_leading_labels(counter, &[])
    }

    /// For a counter labelled `leading..., method, code`.
    pub fn with_leading_labels(
        counter: &prometheus::IntCounterVec,
        leading: &'static [&'static str],
    ) -> Self {
        Self {
            counter: counter.clone(),
            leading,
        }
    }

    /// Wraps one service: what `tower::Layer::layer` does, without the import.
    pub fn wrap<S>(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.clone(),
        }
    }

    fn count(&self, method: &str, code: tonic::Code) {
        // The router answers unknown paths Unimplemented: one label for them
        // all, so a scanner cannot grow the label set.
        let method = if code == tonic::Code::Unimplemented {
            "unknown"
        } else {
            method
        };
        let mut labels: Vec<&str> = self.leading.to_vec();
        labels.push(method);
        labels.push(crate::error::grpc_code_label(code));
        self.counter.with_label_values(&labels).inc();
    }
}

impl<S> tower::Layer<S> for RequestMetrics {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        self.wrap(inner)
    }
}

/// A gRPC service counted by [`RequestMetrics`].
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: RequestMetrics,
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<BoxBody>> for Counted<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Response<BoxBody>, Infallible>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // An error answered at once carries its status in the headers
            // ("trailers only"); otherwise it comes in the trailers.
            if let Some(code) = grpc_status(resp.headers()) {
                metrics.count(&method, code);
                return Ok(resp);
            }
            Ok(resp.map(|body| {
                tonic::body::boxed(CountedBody {
                    inner: body,
                    counted: Some((metrics, method)),
                })
            }))
        })
    }
}

fn grpc_status(headers: &tonic::codegen::http::HeaderMap) -> Option<tonic::Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(v))
}

/// Counts the call when its trailers pass; a call whose client went away
/// before them is not counted, as it was not before the layer.
struct CountedBody {
    inner: BoxBody,
    counted: Option<(RequestMetrics, String)>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(code) = grpc_status(trailers)
            && let Some((metrics, method)) = self.counted.take()
        {
            metrics.count(&method, code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tower::Layer as _;

    #[tokio::test]
    async fn counts_ok_from_trailers_and_errors_from_headers() {
        let counter = prometheus::IntCounterVec::new(
            prometheus::Opts::new("test_grpc_requests_total", "test"),
            &["protocol", "method", "code"],
        )
        .unwrap();
        let metrics = RequestMetrics::with_leading_labels(&counter, &["grpc"]);
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Shutdown::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(metrics.layer(health))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let check = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        client.check(check("")).await.unwrap();
        let e = client.check(check("no.such.Service")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let value = |code: &str| counter.with_label_values(&["grpc", "Check", code]).get();
        assert_eq!(value("ok"), 1);
        assert_eq!(value("not_found"), 1);
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
