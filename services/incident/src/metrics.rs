//! Prometheus metrics of the incident service. Labels are bounded: `kind`
//! (telemetry, detections, frames), `action` (the lifecycle actions),
//! `reason`, gRPC `method` and `code`.

use std::sync::LazyLock;

use fleetwatch_common::metrics;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_incident_events_total",
        "Lifecycle events committed to the outbox, by action",
        &["action"],
    )
});

pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_incident_records_rejected_total",
        "Records sent to the DLQ, by kind and reason (undecodable, invalid)",
        &["kind", "reason"],
    )
});

pub static TRANSIENT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_incident_transient_failures_total",
        "Batches that failed transiently (database or object store unreachable) and are retried",
        &["kind"],
    )
});

pub static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_incident_batch_seconds",
        "Time to evaluate and commit one consumer batch",
        &["kind"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ],
    )
});

pub static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_incident_outbox_published_total",
        "Outbox events acknowledged by the broker and marked published",
    )
});

pub static PUBLISH_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_incident_outbox_publish_failures_total",
        "Outbox rounds that failed (broker or database) and are retried",
    )
});

pub static OUTBOX_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::int_gauge(
        "fleetwatch_incident_outbox_pending",
        "Unpublished outbox events seen in the last round",
    )
});

pub static COMMIT_TO_PUBLISH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleetwatch_incident_commit_to_publish_seconds",
        "Time from an event's commit to the broker's ack",
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ],
    )
});

pub static CLIP_FRAMES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_incident_clip_frames_total",
        "Frames copied into incident evidence clips",
    )
});

pub static FRAME_BUFFER_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::int_gauge(
        "fleetwatch_incident_frame_buffer_bytes",
        "Bytes of recent frames buffered for clips",
    )
});

pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_incident_grpc_requests_total",
        "API requests by method and gRPC status code",
        &["method", "code"],
    )
});

/// Registers every metric so /metrics lists them from the start.
pub fn init() {
    for kind in ["telemetry", "detections", "frames"] {
        TRANSIENT_FAILURES.with_label_values(&[kind]);
        BATCH_SECONDS.with_label_values(&[kind]);
    }
    for a in [
        "opened",
        "retriggered",
        "cleared",
        "acknowledged",
        "assigned",
        "commented",
        "resolved",
    ] {
        EVENTS.with_label_values(&[a]);
    }
    LazyLock::force(&REJECTED);
    LazyLock::force(&PUBLISHED);
    LazyLock::force(&PUBLISH_FAILURES);
    LazyLock::force(&OUTBOX_PENDING);
    LazyLock::force(&COMMIT_TO_PUBLISH_SECONDS);
    LazyLock::force(&CLIP_FRAMES);
    LazyLock::force(&FRAME_BUFFER_BYTES);
    LazyLock::force(&GRPC_REQUESTS);
}
