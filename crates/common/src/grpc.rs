//! The gRPC server every service runs: its own API beside the standard health
//! and reflection services, served until shutdown. One place, so every
//! service answers `grpc.health.v1` and `grpcurl list` the same way.

use std::convert::Infallible;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::body::BoxBody;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

use crate::Shutdown;

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
