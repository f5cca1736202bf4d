//! librdkafka callbacks: its logs into `tracing`, its statistics into the
//! per-partition lag gauge.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::metrics;

pub struct Context {
    /// Consumer group, for lag labels; empty for producers.
    pub group: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker-down and similar are retried by librdkafka itself; operators
        // see them through readiness and lag, so this is not ERROR.
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    fn stats(&self, stats: Statistics) {
        if self.group.is_empty() {
            return;
        }
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" bucket;
                // a negative lag means "not known yet".
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::CONSUMER_LAG
                    .with_label_values(&[&self.group, topic, &partition.to_string()])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Context {}
