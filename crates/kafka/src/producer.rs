//! A producer whose `send` resolves only when the broker acknowledged the
//! record (`acks=all`, idempotent), and refuses at once when its local queue
//! is full, so callers can answer 503 instead of blocking or dropping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;
use crate::context::Context;
use crate::headers;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The local queue is full: the broker is slower than the input.
    #[error("producer queue is full")]
    QueueFull,
    /// Not acknowledged within `delivery_timeout_ms` (broker down or slow).
    #[error("record not acknowledged by the broker in time")]
    Timeout,
    #[error("record of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("kafka error: {0}")]
    Kafka(#[from] KafkaError),
}

impl ProduceError {
    /// Whether the same record may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::QueueFull | Self::Timeout => true,
            Self::TooLarge { .. } => false,
            Self::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessage)
            ),
        }
    }
}

/// One record to send. The key is the vehicle id (per-vehicle order).
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    /// Protobuf message type name, for the `fleetwatch-type` header.
    pub message_type: &'a str,
    /// W3C trace context to carry; `None` takes the current span's.
    pub traceparent: Option<&'a str>,
    /// Further headers (e.g. the DLQ's provenance). A `content-type` here
    /// replaces the default `application/x-protobuf`.
    pub extra_headers: &'a [(&'a str, &'a [u8])],
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: Arc<FutureProducer<Context>>,
    max_message_bytes: usize,
}

impl Producer {
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self, KafkaError> {
        let inner = config
            .producer_client_config(client_id)
            .create_with_context(Context { group: String::new() })?;
        Ok(Self { inner: Arc::new(inner), max_message_bytes: config.producer.max_message_bytes as usize })
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(&self, record: OutRecord<'_>) -> Result<Delivered, ProduceError> {
        let topic = record.topic;
        if record.payload.len() + record.key.len() > self.max_message_bytes {
            metrics::PRODUCED.with_label_values(&[topic, "too_large"]).inc();
            return Err(ProduceError::TooLarge {
                size: record.payload.len() + record.key.len(),
                limit: self.max_message_bytes,
            });
        }
        let current = if record.traceparent.is_none() {
            fleetwatch_common::telemetry::current_traceparent()
        } else {
            None
        };
        let traceparent = record.traceparent.or(current.as_deref());
        // A content-type among the extra headers replaces the protobuf default
        // (e.g. a dead-lettered raw JSON payload).
        let custom_content_type = record.extra_headers.iter().any(|(k, _)| *k == headers::CONTENT_TYPE);
        let mut hdrs = OwnedHeaders::new_with_capacity(3 + record.extra_headers.len());
        if !custom_content_type {
            hdrs = hdrs.insert(Header { key: headers::CONTENT_TYPE, value: Some(headers::PROTOBUF) });
        }
        hdrs = hdrs.insert(Header { key: headers::MESSAGE_TYPE, value: Some(record.message_type) });
        if let Some(tp) = traceparent {
            hdrs = hdrs.insert(Header { key: headers::TRACEPARENT, value: Some(tp) });
        }
        for (k, v) in record.extra_headers {
            hdrs = hdrs.insert(Header { key: k, value: Some(*v) });
        }
        let fr = FutureRecord::to(topic).key(record.key).payload(record.payload).headers(hdrs);
        let started = Instant::now();
        // send_result never blocks: a full queue is reported, not waited out.
        let delivery = match self.inner.send_result(fr) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                metrics::PRODUCED.with_label_values(&[topic, "queue_full"]).inc();
                return Err(ProduceError::QueueFull);
            }
            Err((e, _)) => {
                metrics::PRODUCED.with_label_values(&[topic, "error"]).inc();
                return Err(e.into());
            }
        };
        match delivery.await {
            Ok(Ok(d)) => {
                metrics::PRODUCED.with_label_values(&[topic, "ok"]).inc();
                metrics::PRODUCE_SECONDS.with_label_values(&[topic]).observe(started.elapsed().as_secs_f64());
                Ok(Delivered { partition: d.partition, offset: d.offset })
            }
            Ok(Err((e, _))) => {
                let timed_out = matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut)
                );
                let (label, err) = if timed_out { ("timeout", ProduceError::Timeout) } else { ("error", e.into()) };
                metrics::PRODUCED.with_label_values(&[topic, label]).inc();
                Err(err)
            }
            // The producer was dropped with the record in flight.
            Err(_canceled) => {
                metrics::PRODUCED.with_label_values(&[topic, "error"]).inc();
                Err(ProduceError::Kafka(KafkaError::Canceled))
            }
        }
    }

    /// Waits for every queued record to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }

    /// Records queued locally, not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
