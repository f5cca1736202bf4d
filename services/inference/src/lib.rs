//! Fleetwatch inference: consumes `fleet.frames.v1`, runs a YOLOv8-layout
//! ONNX detection model (onnxruntime or tract) on each JPEG frame with
//! micro-batching and stale-frame skipping, and publishes a `DetectionBatch`
//! per frame to `fleet.detections.v1`; serves the same pipeline over gRPC
//! (`InferenceService.Detect`). Models come from a file or the object store
//! and switch versions without a restart.

pub mod config;
pub mod consumer;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetwatch_common::Shutdown;
use fleetwatch_common::admin::{self, Readiness};
use fleetwatch_kafka::{Consumer, Producer};
use fleetwatch_proto::v1::inference_service_server::InferenceServiceServer;
use tokio::task::JoinHandle;

pub use config::Config;
use config::ModelSource;
use pipeline::Pipeline;

/// A started service: where it listens, and the task that ends after shutdown.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    pub pipeline: Arc<Pipeline>,
    /// Ends once the consumer finished its in-flight batch, producers are
    /// flushed and the servers stopped.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Loads the model, connects, binds and spawns everything; returns once the
/// service is up.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    metrics::init();
    let store = match config.model.source {
        ModelSource::ObjectStore => Some(
            fleetwatch_objectstore::open(&config.object_store)
                .context("cannot open the object store")?
                .0,
        ),
        ModelSource::Path => None,
    };
    let loader = source::ModelLoader::new(config.model.clone(), store);
    let marker = loader.marker().await.context("cannot find the model")?;
    let model = loader
        .load(&marker)
        .await
        .context("cannot load the model")?;
    tracing::info!(name = %model.name, version = %model.version, runtime = model.runtime_kind.as_str(),
        input = %format!("{}x{}", model.info.width, model.info.height), classes = model.info.classes(),
        "model loaded");
    let pipeline = Pipeline::start(model, &config.pipeline);

    let producer = Producer::new(&config.kafka, "fleetwatch-inference")
        .context("cannot create the detections producer")?;
    let dlq = Producer::new(&config.kafka, "fleetwatch-inference-dlq")
        .context("cannot create the DLQ producer")?;
    let consumer = Consumer::new(
        &config.kafka,
        "fleetwatch-inference",
        &[&config.topics.frames],
        dlq.clone(),
    )
    .with_context(|| format!("cannot consume {}", config.topics.frames))?;

    let readiness = Readiness::default();
    let (admin_addr, admin_task) =
        admin::serve(&config.admin, readiness.clone(), shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot bind the gRPC server on {}", config.grpc.listen))?;
    let grpc_addr = listener.local_addr()?;

    let handler = consumer::FramesHandler {
        pipeline: pipeline.clone(),
        producer: producer.clone(),
        detections_topic: config.topics.detections.clone(),
        max_frame_age_us: i64::try_from(config.pipeline.max_frame_age_ms)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
        publish_empty: config.pipeline.publish_empty,
    };
    let consumer_task = tokio::spawn(consumer.run(handler, shutdown.clone()));
    let watch_task = tokio::spawn(loader.watch(pipeline.clone(), marker, shutdown.clone()));
    let grpc_task = tokio::spawn(fleetwatch_common::grpc::serve(
        listener,
        // Frames arrive whole in one Detect call.
        InferenceServiceServer::new(grpc::Service {
            pipeline: pipeline.clone(),
            producer: producer.clone(),
            detections_topic: config.topics.detections.clone(),
        })
        .max_decoding_message_size(64 * 1024 * 1024),
        shutdown.clone(),
    ));
    readiness.set(true);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, frames = %config.topics.frames,
        detections = %config.topics.detections, "inference started");

    let ready = readiness.clone();
    let handle = tokio::spawn(async move {
        consumer_task.await.context("the consumer task failed")?;
        ready.set(false);
        let flushed = tokio::task::spawn_blocking(move || {
            let a = producer.flush(Duration::from_secs(10));
            let b = dlq.flush(Duration::from_secs(10));
            a.and(b)
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "producers did not flush in time");
        }
        let grpc = grpc_task.await.context("the gRPC server task failed")?;
        let _ = watch_task.await;
        let _ = admin_task.await;
        grpc
    });
    Ok(Running {
        grpc_addr,
        admin_addr,
        readiness,
        pipeline,
        handle,
    })
}

/// `start`, then wait until shutdown completes.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.handle.await.context("the service task failed")?
}
