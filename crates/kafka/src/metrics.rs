//! Prometheus metrics of the Kafka layer. Labels are bounded: group, topic,
//! partition (a topic's partition count), and a small result enum.

use std::sync::LazyLock;

use fleetwatch_common::metrics;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::int_gauge_vec(
        "fleetwatch_kafka_consumer_lag",
        "Records between the committed offset and the high watermark, per partition",
        &["group", "topic", "partition"],
    )
});

pub static CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_kafka_records_consumed_total",
        "Records whose effect is durable and whose offset was stored",
        &["group", "topic"],
    )
});

pub static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_kafka_dead_lettered_total",
        "Records that can never succeed, sent to <topic>.dlq",
        &["group", "topic"],
    )
});

pub static TRANSIENT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_kafka_transient_failures_total",
        "Batches that failed transiently and are retried without advancing offsets",
        &["group"],
    )
});

pub static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_kafka_batch_seconds",
        "Time to handle one consumed batch, retries included",
        &["group"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ],
    )
});

pub static PRODUCED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_kafka_produced_total",
        "Produce attempts by outcome: ok, queue_full, timeout, too_large, error",
        &["topic", "result"],
    )
});

pub static PRODUCE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_kafka_produce_ack_seconds",
        "Time from send to broker acknowledgement",
        &["topic"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ],
    )
});

pub static PRODUCER_RESETS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_kafka_producer_resets_total",
        "Producer clients replaced after a fatal error or a run of failed deliveries",
        &["client_id"],
    )
});

pub static RECORD_AGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_kafka_record_age_seconds",
        "Time from a record's timestamp (producer create time) to its handler starting: \
         the broker hop plus queueing in the consumer; consumer lag in time",
        &["group"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
        ],
    )
});
