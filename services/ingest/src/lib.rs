//! Fleetwatch ingest: the vehicle-facing edge. Takes telemetry, detections
//! and frames over HTTP, gRPC and MQTT, authenticates and validates them, and
//! acknowledges the vehicle only after Kafka acknowledged the records.

pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod json_point;
pub mod metrics;
pub mod mqtt;
pub mod parse;
pub mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetwatch_common::grpc::RequestMetrics;
use fleetwatch_common::{Readiness, Shutdown, Stage, Supervisor, TaskControl};
use fleetwatch_kafka::Producer;
use fleetwatch_proto::v1::ingest_service_server::IngestServiceServer;
use fleetwatch_proto::v1::persistence_query_client::PersistenceQueryClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use config::Config;

/// Kafka client id of the producer.
pub const CLIENT_ID: &str = "fleetwatch-ingest";

/// Everything a request handler needs, shared by HTTP, gRPC and MQTT.
pub struct App {
    pub auth: auth::Authenticator,
    pub sink: sink::Sink,
    pub limits: config::LimitsConfig,
    pub persistence: PersistenceClient,
}

/// A started ingest: where it listens, and the task that ends after shutdown.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    /// Subscriptions granted by the MQTT broker so far (None: bridge disabled).
    pub mqtt_subscribed: Option<tokio::sync::watch::Receiver<u64>>,
    /// The supervisor's tasks by name (fault-injection tests abort one).
    pub tasks: TaskControl,
    /// Ends once the drain finished: HTTP, gRPC and MQTT stopped, the
    /// producer flushed, the admin server stopped and the pool closed; an
    /// error if a task ended on its own or the drain outran `shutdown.grace_ms`.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Connects to the database and Kafka, binds every listener and starts
/// serving; returns once all ports are bound.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    let pool = fleetwatch_db::connect_checked(&config.database)
        .await
        .context("vehicle registry database")?;
    let producer =
        Producer::new(&config.kafka, CLIENT_ID).context("creating the kafka producer")?;
    // Read before binding anything: a missing or malformed file is a config error.
    let token = match &config.persistence.service_token_file {
        Some(path) => Some(fleetwatch_auth::grpc::BearerInterceptor::new(
            &fleetwatch_auth::ServiceToken::from_file(path)
                .context("persistence.service_token_file")?,
        )),
        None => {
            tracing::warn!(
                "persistence.service_token_file is not set: GET /api/latest answers 503 until it is (persistence refuses queries without a token)"
            );
            None
        }
    };
    let timeout = Duration::from_millis(config.persistence.timeout_ms);
    let channel = Endpoint::from_shared(config.persistence.grpc_url.clone())
        .context("persistence.grpc_url")?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    let app = Arc::new(App {
        auth: auth::Authenticator::new(pool.clone(), &config.auth, config.limits.retry_after_secs),
        sink: sink::Sink::new(
            producer.clone(),
            config.topics.clone(),
            config.kafka.producer.max_message_bytes,
            config.limits.retry_after_secs,
        ),
        limits: config.limits.clone(),
        persistence: PersistenceQueryClient::with_interceptor(channel, ServiceCredentials(token)),
    });

    let readiness = Readiness::default();
    let mut sup = Supervisor::new("ingest", &config.shutdown, shutdown, readiness.clone());
    let admin_addr = sup.serve_admin(&config.admin).await?;

    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot bind the HTTP API on {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let router = http::router(app.clone());
    sup.spawn(Stage::Intake, "http server", |stop| async move {
        axum::serve(http_listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("http server")
    });

    let grpc_listener = fleetwatch_common::grpc::bind(&config.grpc).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let max_message = config
        .limits
        .max_frame_bytes
        .max(config.limits.max_json_body_bytes)
        + config::RECORD_HEADROOM_BYTES as usize;
    let ingest = IngestServiceServer::new(grpc::GrpcApi::new(app.clone()))
        .max_decoding_message_size(max_message);
    let requests = RequestMetrics::with_leading_labels(&metrics::REQUESTS, &["grpc"]);
    sup.serve_grpc(Stage::Intake, grpc_listener, requests.wrap(ingest));

    let mqtt_subscribed = if config.mqtt.enabled {
        // Ready while the broker has the bridge logged in and subscribed.
        let (h, s) = mqtt::start(
            app.clone(),
            config.mqtt.clone(),
            config.kafka.producer.max_message_bytes,
            readiness.part("mqtt"),
            sup.stop_token(Stage::Intake),
        )
        .context("mqtt bridge")?;
        sup.spawn(Stage::Intake, "mqtt bridge", |_| h);
        Some(s)
    } else {
        None
    };
    // Records are acknowledged to vehicles only after Kafka did, so what is
    // still queued here was never acknowledged: flushing is a courtesy.
    fleetwatch_kafka::flush_on_drain(&mut sup, &[&producer]);
    // Every request authenticates against the database: without it, not ready.
    fleetwatch_db::supervise(&mut sup, &pool, &readiness);

    tracing::info!(%http_addr, %grpc_addr, %admin_addr, mqtt = config.mqtt.enabled, "ingest started");
    let tasks = sup.control();
    Ok(Running {
        http_addr,
        grpc_addr,
        admin_addr,
        readiness,
        mqtt_subscribed,
        tasks,
        handle: sup.start(),
    })
}

/// Starts ingest and waits until `shutdown` stopped it.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.handle.await.context("ingest task")?
}

/// The persistence client ingest queries `/api/latest` with.
pub type PersistenceClient = PersistenceQueryClient<
    tonic::service::interceptor::InterceptedService<Channel, ServiceCredentials>,
>;

/// Ingest's service token on every query to persistence, when configured.
#[derive(Clone)]
pub struct ServiceCredentials(Option<fleetwatch_auth::grpc::BearerInterceptor>);

impl tonic::service::Interceptor for ServiceCredentials {
    fn call(&mut self, r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(b) => b.call(r),
            None => Ok(r),
        }
    }
}
