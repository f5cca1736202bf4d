//! Fleetwatch persistence: consumes telemetry, detections and frames from
//! Kafka, stores them durably and idempotently in Postgres and the object
//! store, keeps telemetry partitions and retention, and serves the
//! `PersistenceQuery` gRPC API.

pub mod config;
pub mod maintenance;
pub mod metrics;
pub use fleetwatch_objectstore as objects;
pub mod grpc;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use fleetwatch_common::admin::Readiness;
use fleetwatch_common::grpc::RequestMetrics;
use fleetwatch_common::{Shutdown, Stage, Supervisor, TaskControl};
use fleetwatch_kafka::{Consumer, Producer};
use fleetwatch_proto::v1::persistence_query_server::PersistenceQueryServer;
use tokio::task::JoinHandle;

pub use config::Config;
use writer::{DetectionsWriter, FramesWriter, Handler, Partitions, TelemetryWriter};

/// A started service: where it listens, and the task that ends after shutdown.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    /// The supervisor's tasks by name (fault-injection tests abort one).
    pub tasks: TaskControl,
    /// Ends once the drain finished: consumers committed, the DLQ producer
    /// flushed, the servers stopped and the pool closed; an error if a task
    /// ended on its own or the drain outran `shutdown.grace_ms`.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Connects, binds and spawns everything; returns once the service is up.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    metrics::init();
    let pool = fleetwatch_db::connect_checked(&config.database)
        .await
        .context("cannot use the database")?;
    let (store, store_shown) =
        objects::open(&config.object_store).context("cannot open the object store")?;
    let dlq = Producer::new(&config.kafka, "fleetwatch-persistence-dlq")
        .context("cannot create the DLQ producer")?;
    let consumer = |role: &str, topic: &str| -> anyhow::Result<Consumer> {
        Consumer::for_role(&config.kafka, role, topic, dlq.clone())
            .with_context(|| format!("cannot consume {topic}"))
    };
    // One consumer per topic, so a backlog of large frames never delays telemetry.
    let telemetry_consumer = consumer("telemetry", &config.topics.telemetry)?;
    let detections_consumer = consumer("detections", &config.topics.detections)?;
    let frames_consumer = consumer("frames", &config.topics.frames)?;

    let readiness = Readiness::default();
    let mut sup = Supervisor::new("persistence", &config.shutdown, shutdown, readiness.clone());
    let admin_addr = sup.serve_admin(&config.admin).await?;
    let listener = fleetwatch_common::grpc::bind(&config.grpc).await?;
    let grpc_addr = listener.local_addr()?;

    let partitions = Arc::new(Partitions::default());
    let max_rows = config.writer.max_rows_per_statement;
    // Retention and partition upkeep start work of their own: stopped first.
    sup.spawn(Stage::Intake, "maintenance", |stop| {
        maintenance::run(
            pool.clone(),
            partitions.clone(),
            config.retention.clone(),
            stop,
        )
    });
    let handler = Handler(TelemetryWriter {
        pool: pool.clone(),
        partitions,
        max_rows,
        concurrency: config.writer.telemetry_write_concurrency,
    });
    sup.spawn(Stage::Consumers, "telemetry consumer", |stop| {
        telemetry_consumer.run(handler, stop)
    });
    let handler = Handler(DetectionsWriter {
        pool: pool.clone(),
        max_rows,
    });
    sup.spawn(Stage::Consumers, "detections consumer", |stop| {
        detections_consumer.run(handler, stop)
    });
    let handler = Handler(FramesWriter {
        pool: pool.clone(),
        store: store.clone(),
        concurrency: config.writer.object_store_concurrency,
    });
    sup.spawn(Stage::Consumers, "frames consumer", |stop| {
        frames_consumer.run(handler, stop)
    });
    fleetwatch_kafka::flush_on_drain(&mut sup, &[&dlq]);
    fleetwatch_db::supervise(&mut sup, &pool, &readiness);
    let api = PersistenceQueryServer::new(grpc::GrpcApi {
        pool: pool.clone(),
        store,
    });
    // Every query is verified before its message is decoded.
    let verifier = fleetwatch_auth::Verifier::new(pool.clone(), &config.auth);
    let v = verifier.clone();
    sup.spawn(Stage::Servers, "auth invalidation", move |stop| {
        v.listen(stop)
    });
    let api = fleetwatch_auth::grpc::GrpcAuthLayer::new(verifier).wrap(api);
    let requests = RequestMetrics::new(&metrics::GRPC_REQUESTS);
    sup.serve_grpc(Stage::Servers, listener, requests.wrap(api));

    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, objects = %store_shown,
        telemetry = %config.topics.telemetry, detections = %config.topics.detections, frames = %config.topics.frames,
        "persistence started");
    let tasks = sup.control();
    Ok(Running {
        grpc_addr,
        admin_addr,
        readiness,
        tasks,
        handle: sup.start(),
    })
}

/// `start`, then wait until shutdown completes.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.handle.await.context("the service task failed")?
}
