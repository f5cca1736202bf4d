//! Fleetwatch incident service: evaluates rules (threshold, geofence, link
//! loss, detection class) on `fleet.telemetry.v1` and `fleet.detections.v1`,
//! keeps one unresolved incident per (vehicle, rule) in Postgres with its
//! lifecycle and audit trail, collects evidence clips from
//! `fleet.frames.v1`, publishes lifecycle events to `fleet.incidents.v1`
//! through a transactional outbox, and serves the `IncidentService` gRPC API.

pub mod clips;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod metrics;
pub mod outbox;
pub mod rules;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetwatch_common::admin::Readiness;
use fleetwatch_common::grpc::RequestMetrics;
use fleetwatch_common::{Shutdown, Stage, Supervisor, TaskControl};
use fleetwatch_kafka::{Consumer, Producer};
use fleetwatch_proto::v1::incident_service_server::IncidentServiceServer;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use config::Config;

/// A started service: where it listens, and the task that ends after shutdown.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    /// The supervisor's tasks by name (fault-injection tests abort one).
    pub tasks: TaskControl,
    /// Ends once the drain finished: consumers committed, the outbox
    /// publisher stopped, producers flushed, the servers stopped and the pool
    /// closed; an error if a task ended on its own or the drain outran
    /// `shutdown.grace_ms`.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Connects, binds and spawns everything; returns once the service is up.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    metrics::init();
    let pool = fleetwatch_db::connect_checked(&config.database)
        .await
        .context("cannot use the database")?;
    let (store, store_shown) = fleetwatch_objectstore::open(&config.object_store)
        .context("cannot open the object store")?;
    let dlq = Producer::new(&config.kafka, "fleetwatch-incident-dlq")
        .context("cannot create the DLQ producer")?;
    // Events are few and latency-bound: send at once instead of lingering.
    let mut events_kafka = config.kafka.clone();
    events_kafka.producer.linger_ms = events_kafka.producer.linger_ms.min(1);
    let events = Producer::new(&events_kafka, "fleetwatch-incident-events")
        .context("cannot create the events producer")?;
    let consumer = |role: &str, topic: &str| -> anyhow::Result<Consumer> {
        Consumer::for_role(&config.kafka, role, topic, dlq.clone())
            .with_context(|| format!("cannot consume {topic}"))
    };
    // One consumer per topic: a backlog of frames never delays rule evaluation.
    let telemetry_consumer = consumer("telemetry", &config.topics.telemetry)?;
    let detections_consumer = consumer("detections", &config.topics.detections)?;
    let frames_consumer = if config.evidence.clips {
        Some(consumer("frames", &config.topics.frames)?)
    } else {
        None
    };

    let rules = engine::RulesCache::default();
    rules
        .reload(&pool)
        .await
        .context("cannot load the incident rules")?;
    let published = Arc::new(Notify::new());
    let clip = config.evidence.clips.then_some(store::ClipWindow {
        before_us: (config.evidence.clip_before_secs * 1e6) as i64,
        after_us: (config.evidence.clip_after_secs * 1e6) as i64,
    });
    let engine = engine::Engine {
        pool: pool.clone(),
        rules: rules.clone(),
        published: published.clone(),
        clip,
    };

    let readiness = Readiness::default();
    let mut sup = Supervisor::new("incident", &config.shutdown, shutdown, readiness.clone());
    let admin_addr = sup.serve_admin(&config.admin).await?;
    let listener = fleetwatch_common::grpc::bind(&config.grpc).await?;
    let grpc_addr = listener.local_addr()?;

    // Link-loss checks open incidents on their own: stopped with the intake.
    let e = engine.clone();
    let every = Duration::from_millis(config.engine.link_loss_check_ms);
    sup.spawn(Stage::Intake, "link-loss checks", |stop| {
        engine::link_loss_loop(e, every, stop)
    });
    let handler = engine::TelemetryHandler(engine.clone());
    sup.spawn(Stage::Consumers, "telemetry consumer", |stop| {
        telemetry_consumer.run(handler, stop)
    });
    let handler = engine::DetectionsHandler(engine.clone());
    sup.spawn(Stage::Consumers, "detections consumer", |stop| {
        detections_consumer.run(handler, stop)
    });
    if let Some(frames_consumer) = frames_consumer {
        let keep_us = ((config.evidence.clip_before_secs + config.evidence.clip_after_secs + 10.0)
            * 1e6) as i64;
        let clips = Arc::new(clips::Clips::new(
            pool.clone(),
            store,
            keep_us,
            (config.evidence.buffer_max_mib * 1024 * 1024) as usize,
        ));
        let handler = clips::FramesHandler(clips.clone());
        sup.spawn(Stage::Consumers, "frames consumer", |stop| {
            frames_consumer.run(handler, stop)
        });
        sup.spawn(Stage::Consumers, "clip ticks", |stop| {
            clips::tick(clips, stop)
        });
    }
    // The publisher outlives the consumers' last commits, so the events of
    // their last batches leave with this replica.
    let publisher = outbox::Publisher {
        pool: pool.clone(),
        producer: events.clone(),
        topic: config.topics.incidents.clone(),
        notify: published.clone(),
        poll: Duration::from_millis(config.outbox.poll_interval_ms),
        batch: config.outbox.batch_size,
        keep_published_hours: config.outbox.keep_published_hours,
    };
    sup.spawn(Stage::Producers, "outbox publisher", |stop| {
        publisher.run(stop)
    });
    fleetwatch_kafka::flush_on_drain(&mut sup, &[&dlq, &events]);
    let (p, r) = (pool.clone(), rules.clone());
    let every = Duration::from_millis(config.engine.rules_refresh_ms);
    sup.spawn(Stage::Servers, "rules refresh", |stop| {
        engine::refresh_rules(p, r, every, stop)
    });
    fleetwatch_db::supervise(&mut sup, &pool, &readiness);
    let api = IncidentServiceServer::new(grpc::GrpcApi {
        pool: pool.clone(),
        rules,
        published,
        retention_days: config.evidence.retention_days,
    });
    // Every call is verified before its message is decoded; refused ones
    // are counted too (the counter is outside).
    let verifier = fleetwatch_auth::Verifier::new(pool.clone(), &config.auth);
    let v = verifier.clone();
    sup.spawn(Stage::Servers, "auth invalidation", move |stop| {
        v.listen(stop)
    });
    let api = fleetwatch_auth::grpc::GrpcAuthLayer::new(verifier).wrap(api);
    let requests = RequestMetrics::new(&metrics::GRPC_REQUESTS);
    sup.serve_grpc(Stage::Servers, listener, requests.wrap(api));

    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, objects = %store_shown,
        telemetry = %config.topics.telemetry, detections = %config.topics.detections,
        frames = %config.topics.frames, incidents = %config.topics.incidents,
        "incident service started");
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
