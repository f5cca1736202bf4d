//! Prometheus metrics of the persistence service. Labels are bounded:
//! `table` (telemetry, vehicle_latest, detections, frames), `reason` (a
//! small fixed set), gRPC `method` and `code`.

use std::sync::LazyLock;

use fleetwatch_common::metrics;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

pub static ROWS_WRITTEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_rows_written_total",
        "Rows newly inserted (telemetry, detections, frames) or updated (vehicle_latest)",
        &["table"],
    )
});

pub static ROWS_DUPLICATE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_rows_duplicate_total",
        "Rows already present (redelivered records or client retries), skipped",
        &["table"],
    )
});

pub static CONFLICT_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_persistence_telemetry_conflict_retries_total",
        "Telemetry transactions written again skipping existing rows, after the plain insert met a duplicate (redelivery or client retry)",
    )
});

pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_records_rejected_total",
        "Records sent to the DLQ, by kind and reason (undecodable, invalid, database)",
        &["kind", "reason"],
    )
});

pub static WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_transient_write_failures_total",
        "Batch writes that failed transiently (database or object store unreachable) and are retried",
        &["kind"],
    )
});

pub static WRITE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_persistence_write_seconds",
        "Time to write one consumer batch durably",
        &["kind"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ],
    )
});

pub static INGEST_TO_STORED_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleetwatch_persistence_ingest_to_stored_seconds",
        "Time from ingest accepting a telemetry batch to its commit here",
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    )
});

pub static OBJECT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_persistence_object_bytes_total",
        "Frame bytes written to the object store",
    )
});

pub static PARTITIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_partition_operations_total",
        "Telemetry day partitions ensured (on demand or ahead) and dropped by retention",
        &["op"],
    )
});

pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_persistence_grpc_requests_total",
        "Query requests by method and gRPC status code",
        &["method", "code"],
    )
});

/// Registers every metric so /metrics lists them from the start.
pub fn init() {
    for kind in ["telemetry", "detections", "frames"] {
        WRITE_FAILURES.with_label_values(&[kind]);
        WRITE_SECONDS.with_label_values(&[kind]);
    }
    for table in ["telemetry", "vehicle_latest", "detections", "frames"] {
        ROWS_WRITTEN.with_label_values(&[table]);
        ROWS_DUPLICATE.with_label_values(&[table]);
    }
    LazyLock::force(&INGEST_TO_STORED_SECONDS);
    LazyLock::force(&OBJECT_BYTES);
    LazyLock::force(&CONFLICT_RETRIES);
    LazyLock::force(&PARTITIONS);
    LazyLock::force(&REJECTED);
    LazyLock::force(&GRPC_REQUESTS);
}
