//! Prometheus metrics of ingest. Labels are bounded: route templates, status
//! classes, sources, error codes and MQTT outcomes are fixed small sets.

use std::sync::LazyLock;

use fleetwatch_common::metrics;
use prometheus::IntCounterVec;

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_requests_total",
        "Requests by protocol, route (HTTP path template or gRPC method) and status class (2xx, 4xx, 5xx)",
        &["protocol", "route", "status"],
    )
});

pub static POINTS_ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_points_accepted_total",
        "Telemetry points acknowledged by Kafka, by source (http, grpc, mqtt)",
        &["source"],
    )
});

pub static RECORDS_ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_records_accepted_total",
        "Frames and detection batches acknowledged by Kafka, by kind and source",
        &["kind", "source"],
    )
});

pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_rejections_total",
        "Refused input by source and reason (the error code, e.g. invalid_telemetry, unauthenticated, unavailable)",
        &["source", "reason"],
    )
});

pub static MQTT_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_mqtt_messages_total",
        "MQTT messages by kind (telemetry, detections, unmatched) and outcome (accepted, dlq_unknown_vehicle, dlq_invalid, dropped_stale_session, dlq_failed)",
        &["kind", "outcome"],
    )
});

pub static MQTT_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_ingest_mqtt_connection_events_total",
        "MQTT connection events: connected, refused (login or client id), error",
        &["event"],
    )
});

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
