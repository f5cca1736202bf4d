//! Fleetwatch persistence: consumes telemetry, detections and frames from
//! Kafka, stores them durably and idempotently in Postgres and the object
//! store, keeps telemetry partitions and retention, and serves the
//! `PersistenceQuery` gRPC API.

pub mod config;
pub mod maintenance;
pub mod metrics;
pub use fleetwatch_objectstore as objects;
pub mod query;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetwatch_common::Shutdown;
use fleetwatch_common::admin::{self, Readiness};
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
    /// Ends once consumers finished their in-flight batch, the DLQ producer
    /// is flushed and the servers stopped.
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
    let consumer = |suffix: &str, topic: &str| -> anyhow::Result<Consumer> {
        let mut k = config.kafka.clone();
        k.consumer.group_id = format!("{}-{suffix}", config.writer.group_prefix);
        Consumer::new(
            &k,
            &format!("fleetwatch-persistence-{suffix}"),
            &[topic],
            dlq.clone(),
        )
        .with_context(|| format!("cannot consume {topic}"))
    };
    // One consumer per topic, so a backlog of large frames never delays telemetry.
    let telemetry_consumer = consumer("telemetry", &config.topics.telemetry)?;
    let detections_consumer = consumer("detections", &config.topics.detections)?;
    let frames_consumer = consumer("frames", &config.topics.frames)?;

    let readiness = Readiness::default();
    let (admin_addr, admin_task) =
        admin::serve(&config.admin, readiness.clone(), shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot bind the gRPC server on {}", config.grpc.listen))?;
    let grpc_addr = listener.local_addr()?;

    let partitions = Arc::new(Partitions::default());
    let max_rows = config.writer.max_rows_per_statement;
    let consumers = vec![
        tokio::spawn(telemetry_consumer.run(
            Handler(TelemetryWriter {
                pool: pool.clone(),
                partitions: partitions.clone(),
                max_rows,
                concurrency: config.writer.telemetry_write_concurrency,
            }),
            shutdown.clone(),
        )),
        tokio::spawn(detections_consumer.run(
            Handler(DetectionsWriter {
                pool: pool.clone(),
                max_rows,
            }),
            shutdown.clone(),
        )),
        tokio::spawn(frames_consumer.run(
            Handler(FramesWriter {
                pool: pool.clone(),
                store: store.clone(),
                concurrency: config.writer.object_store_concurrency,
            }),
            shutdown.clone(),
        )),
    ];
    let maintenance_task = tokio::spawn(maintenance::run(
        pool.clone(),
        partitions,
        config.retention.clone(),
        shutdown.clone(),
    ));
    let readiness_task = tokio::spawn(fleetwatch_db::watch_readiness(
        pool.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let grpc_task = tokio::spawn(fleetwatch_common::grpc::serve(
        listener,
        PersistenceQueryServer::new(query::QueryService {
            pool: pool.clone(),
            store,
        }),
        shutdown.clone(),
    ));

    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, objects = %store_shown,
        telemetry = %config.topics.telemetry, detections = %config.topics.detections, frames = %config.topics.frames,
        "persistence started");

    let handle = tokio::spawn(async move {
        for c in consumers {
            c.await.context("a consumer task failed")?;
        }
        let flushed = tokio::task::spawn_blocking(move || dlq.flush(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "dlq producer did not flush in time");
        }
        let grpc = grpc_task.await.context("the gRPC server task failed")?;
        let _ = maintenance_task.await;
        let _ = readiness_task.await;
        let _ = admin_task.await;
        pool.close().await;
        grpc
    });
    Ok(Running {
        grpc_addr,
        admin_addr,
        readiness,
        handle,
    })
}

/// `start`, then wait until shutdown completes.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.handle.await.context("the service task failed")?
}
