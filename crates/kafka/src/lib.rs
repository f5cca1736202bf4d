//! Kafka discipline shared by every Fleetwatch service: a producer whose send
//! resolves on the broker's ack and reports back-pressure, an at-least-once
//! batch consumer that stores offsets only after the handler's effect is
//! durable and dead-letters what can never succeed, per-partition lag
//! metrics, and W3C `traceparent` propagation through headers.
//!
//! Only the Kafka protocol is assumed, never a particular broker.

pub mod admin;
pub mod config;
pub mod consumer;
mod context;
pub mod envelope;
pub mod headers;
mod metrics;
pub mod producer;

pub use config::{ConsumerConfig, KafkaConfig, ProducerConfig, TopicNames};
pub use consumer::{BatchHandler, Consumer, ConsumerError, Record, Rejection, TransientError};
pub use producer::{OutRecord, Pending, ProduceError, Producer, flush_on_drain};
