//! A producer whose `send` resolves only when the broker acknowledged the
//! record (`acks=all`, idempotent), and refuses at once when its local queue
//! is full, so callers can answer 503 instead of blocking or dropping.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

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

/// Cheap to clone; clones share one client.
///
/// The client heals itself: after a fatal error (an idempotent producer's
/// unrecoverable sequence gap, a fenced producer id) every later send on
/// that client would fail, so it is replaced by a fresh one (a new producer
/// id). Records in flight on the old client still resolve. Plain delivery
/// timeouts during an outage need nothing: librdkafka bumps the epoch and
/// Kafka accepts it.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    max_message_bytes: usize,
}

struct Shared {
    client: RwLock<Arc<FutureProducer<Context>>>,
    config: ClientConfig,
    client_id: String,
}

impl Producer {
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self, KafkaError> {
        let client_config = config.producer_client_config(client_id);
        let client = create(&client_config)?;
        let shared = Shared {
            client: RwLock::new(Arc::new(client)),
            config: client_config,
            client_id: client_id.to_string(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            max_message_bytes: config.producer.max_message_bytes as usize,
        })
    }

    fn client(&self) -> Arc<FutureProducer<Context>> {
        self.shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Called after a failed delivery on `used`: replaces the client if it
    /// hit a fatal error.
    fn heal_if_fatal(&self, used: &Arc<FutureProducer<Context>>) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self
            .shared
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Another sender may have replaced it already.
        if !Arc::ptr_eq(&current, used) {
            return;
        }
        match create(&self.shared.config) {
            Ok(fresh) => {
                *current = Arc::new(fresh);
                metrics::PRODUCER_RESETS
                    .with_label_values(&[&self.shared.client_id])
                    .inc();
                tracing::warn!(client_id = %self.shared.client_id, %code, reason,
                    "kafka producer hit a fatal error; replaced it with a new one");
            }
            Err(e) => tracing::warn!(error = %e, "cannot create a replacement kafka producer"),
        }
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(&self, record: OutRecord<'_>) -> Result<Delivered, ProduceError> {
        self.enqueue(record)?.acked().await
    }

    /// Puts one record in the local queue now, without waiting: records
    /// enqueued one after the other keep that order per partition, however
    /// their acknowledgements are awaited. Fails at once on a full queue or
    /// an oversized record.
    pub fn enqueue(&self, record: OutRecord<'_>) -> Result<Pending, ProduceError> {
        let topic = record.topic;
        if record.payload.len() + record.key.len() > self.max_message_bytes {
            metrics::PRODUCED
                .with_label_values(&[topic, "too_large"])
                .inc();
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
        let custom_content_type = record
            .extra_headers
            .iter()
            .any(|(k, _)| *k == headers::CONTENT_TYPE);
        let mut hdrs = OwnedHeaders::new_with_capacity(3 + record.extra_headers.len());
        if !custom_content_type {
            hdrs = hdrs.insert(Header {
                key: headers::CONTENT_TYPE,
                value: Some(headers::PROTOBUF),
            });
        }
        hdrs = hdrs.insert(Header {
            key: headers::MESSAGE_TYPE,
            value: Some(record.message_type),
        });
        if let Some(tp) = traceparent {
            hdrs = hdrs.insert(Header {
                key: headers::TRACEPARENT,
                value: Some(tp),
            });
        }
        for (k, v) in record.extra_headers {
            hdrs = hdrs.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let fr = FutureRecord::to(topic)
            .key(record.key)
            .payload(record.payload)
            .headers(hdrs);
        let started = Instant::now();
        // send_result never blocks: a full queue is reported, not waited out.
        let client = self.client();
        match client.send_result(fr) {
            Ok(delivery) => Ok(Pending {
                producer: self.clone(),
                client,
                delivery,
                topic: topic.to_string(),
                started,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                metrics::PRODUCED
                    .with_label_values(&[topic, "queue_full"])
                    .inc();
                Err(ProduceError::QueueFull)
            }
            Err((e, _)) => {
                metrics::PRODUCED.with_label_values(&[topic, "error"]).inc();
                Err(e.into())
            }
        }
    }

    /// Waits for every queued record to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.client().flush(timeout)
    }

    /// Records queued locally, not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.client().in_flight_count()
    }
}

/// A record in the local queue, not yet acknowledged (see [`Producer::enqueue`]).
pub struct Pending {
    producer: Producer,
    client: Arc<FutureProducer<Context>>,
    delivery: DeliveryFuture,
    topic: String,
    started: Instant,
}

impl Pending {
    /// Waits for the broker's acknowledgement.
    pub async fn acked(self) -> Result<Delivered, ProduceError> {
        let topic = self.topic.as_str();
        match self.delivery.await {
            Ok(Ok(d)) => {
                metrics::PRODUCED.with_label_values(&[topic, "ok"]).inc();
                metrics::PRODUCE_SECONDS
                    .with_label_values(&[topic])
                    .observe(self.started.elapsed().as_secs_f64());
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Ok(Err((e, _))) => {
                let timed_out = matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut)
                );
                let (label, err) = if timed_out {
                    ("timeout", ProduceError::Timeout)
                } else {
                    ("error", e.into())
                };
                metrics::PRODUCED.with_label_values(&[topic, label]).inc();
                self.producer.heal_if_fatal(&self.client);
                Err(err)
            }
            // The producer was dropped with the record in flight.
            Err(_canceled) => {
                metrics::PRODUCED.with_label_values(&[topic, "error"]).inc();
                Err(ProduceError::Kafka(KafkaError::Canceled))
            }
        }
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer<Context>, KafkaError> {
    config.create_with_context(Context::new(""))
}

/// Flushes `producers` in the producers stage of the drain, one blocking step
/// within what is left of the grace period. What does not make it was never
/// acknowledged (ingest) or is redelivered (consumers), so a failure is logged.
pub fn flush_on_drain(sup: &mut fleetwatch_common::Supervisor, producers: &[&Producer]) {
    let producers: Vec<Producer> = producers.iter().map(|p| (*p).clone()).collect();
    sup.on_drain_blocking(
        fleetwatch_common::Stage::Producers,
        "flush the producers",
        move |left| {
            let mut failed = Vec::new();
            for p in &producers {
                if let Err(e) = p.flush(left) {
                    failed.push(e.to_string());
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "producers did not flush in time: {}",
                    failed.join("; ")
                ))
            }
        },
    );
}
