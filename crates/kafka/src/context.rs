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
    pub error_log: Throttle,
}

impl Context {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            error_log: Throttle::default(),
        }
    }
}

/// Lets a repeated warning through at most once per interval, so a broker
/// outage is reported without a line every 200 ms per client.
#[derive(Default)]
pub struct Throttle(std::sync::Mutex<Option<std::time::Instant>>);

impl Throttle {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// True when the caller should log now (at WARN); false to log at DEBUG.
    pub fn allow(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if t.elapsed() < Self::INTERVAL => false,
            _ => {
                *last = Some(std::time::Instant::now());
                true
            }
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
                if self.error_log.allow() =>
            {
                tracing::warn!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Error => tracing::debug!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker-down and similar are retried by librdkafka itself; operators
        // see them through readiness and lag, so this is not ERROR.
        if self.error_log.allow() {
            tracing::warn!(error = %error, reason, "kafka client error (repeats within 10 s are logged at debug)");
        } else {
            tracing::debug!(error = %error, reason, "kafka client error");
        }
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
