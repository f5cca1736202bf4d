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

use anyhow::Context as _;
use fleetwatch_common::admin::Readiness;
use fleetwatch_common::grpc::RequestMetrics;
use fleetwatch_common::{Shutdown, Stage, Supervisor, TaskControl};
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
    /// The supervisor's tasks by name (fault-injection tests abort one).
    pub tasks: TaskControl,
    /// Ends once the drain finished: the consumer committed, producers
    /// flushed and the servers stopped; an error if a task ended on its own
    /// or the drain outran `shutdown.grace_ms`.
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
    let mut sup = Supervisor::new("inference", &config.shutdown, shutdown, readiness.clone());
    let admin_addr = sup.serve_admin(&config.admin).await?;
    let listener = fleetwatch_common::grpc::bind(&config.grpc).await?;
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
    sup.spawn(Stage::Consumers, "frames consumer", |stop| {
        consumer.run(handler, stop)
    });
    fleetwatch_kafka::flush_on_drain(&mut sup, &[&producer, &dlq]);
    // With polling off the watch has nothing to do, and a task that ends is a failure.
    if config.model.poll_interval_secs > 0 {
        let watched = pipeline.clone();
        sup.spawn(Stage::Servers, "model watch", |stop| {
            loader.watch(watched, marker, stop)
        });
    }
    // Frames arrive whole in one Detect call.
    let api = InferenceServiceServer::new(grpc::GrpcApi {
        pipeline: pipeline.clone(),
        producer,
        detections_topic: config.topics.detections.clone(),
    })
    .max_decoding_message_size(64 * 1024 * 1024);
    let requests = RequestMetrics::new(&metrics::GRPC_REQUESTS);
    sup.serve_grpc(Stage::Servers, listener, requests.wrap(api));
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, frames = %config.topics.frames,
        detections = %config.topics.detections, "inference started");
    let tasks = sup.control();
    Ok(Running {
        grpc_addr,
        admin_addr,
        readiness,
        pipeline,
        tasks,
        handle: sup.start(),
    })
}

/// `start`, then wait until shutdown completes.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let running = start(config, shutdown).await?;
    running.handle.await.context("the service task failed")?
}
