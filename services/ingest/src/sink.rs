//! Validated data → Kafka records, resolved only on the broker's ack.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleetwatch_kafka::{OutRecord, ProduceError, Producer, TopicNames};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{DetectionBatch, Frame, TelemetryBatch, TelemetryPoint};
use prost::Message;

use crate::config::RECORD_HEADROOM_BYTES;
use crate::error::IngestError;
use crate::metrics;

#[derive(Clone)]
pub struct Sink {
    pub producer: Producer,
    pub topics: TopicNames,
    /// Encoded bytes of one telemetry record at most; larger requests are split.
    record_budget: usize,
    retry_after_secs: u64,
}

type BoxedSend = Pin<Box<dyn Future<Output = Result<(), ProduceError>> + Send>>;

/// Polls `fut` once right away. `Producer::send` enqueues into librdkafka
/// before its first await, so this fixes the order of records in the
/// partition to call order even when the acks are awaited concurrently.
pub fn start_now<T: Send + 'static>(
    mut fut: Pin<Box<dyn Future<Output = T> + Send>>,
) -> Pin<Box<dyn Future<Output = T> + Send>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Box::pin(std::future::ready(v)),
        // The next poll (by the real executor) registers the real waker.
        Poll::Pending => fut,
    }
}

impl Sink {
    pub fn new(
        producer: Producer,
        topics: TopicNames,
        max_message_bytes: u32,
        retry_after_secs: u64,
    ) -> Self {
        let record_budget = max_message_bytes
            .saturating_sub(RECORD_HEADROOM_BYTES)
            .max(64 * 1024) as usize;
        Self {
            producer,
            topics,
            record_budget,
            retry_after_secs,
        }
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs
    }

    /// Starts producing one record (enqueued before this returns).
    pub fn send_raw(
        &self,
        topic: String,
        key: String,
        payload: Vec<u8>,
        message_type: &'static str,
        extra_headers: Vec<(&'static str, Vec<u8>)>,
    ) -> BoxedSend {
        let producer = self.producer.clone();
        let traceparent = fleetwatch_common::telemetry::current_traceparent();
        start_now(Box::pin(async move {
            let headers: Vec<(&str, &[u8])> = extra_headers
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            producer
                .send(OutRecord {
                    topic: &topic,
                    key: &key,
                    payload: &payload,
                    message_type,
                    traceparent: traceparent.as_deref(),
                    extra_headers: &headers,
                })
                .await
                .map(|_| ())
        }))
    }

    /// Splits points into batches whose encoded size stays within the record budget.
    pub fn telemetry_batches(
        &self,
        vehicle: &str,
        points: Vec<TelemetryPoint>,
        source: &str,
        received_us: i64,
    ) -> Vec<TelemetryBatch> {
        let mut out = Vec::new();
        let mut current = Vec::new();
        let mut size = 0usize;
        for p in points {
            // Field tag + length prefix of a repeated message: at most 1 + 10 bytes.
            let len = p.encoded_len() + 11;
            if !current.is_empty() && size + len > self.record_budget {
                out.push(std::mem::take(&mut current));
                size = 0;
            }
            size += len;
            current.push(p);
        }
        if !current.is_empty() {
            out.push(current);
        }
        out.into_iter()
            .map(|points| TelemetryBatch {
                vehicle_id: vehicle.to_string(),
                points,
                source: source.to_string(),
                received_unix_us: received_us,
            })
            .collect()
    }

    /// Starts producing telemetry batches; the future resolves once all are acked.
    pub fn start_telemetry(
        &self,
        batches: Vec<TelemetryBatch>,
    ) -> impl Future<Output = Result<usize, ProduceError>> + Send + use<> {
        let mut sends = Vec::with_capacity(batches.len());
        let mut n = 0;
        for b in batches {
            n += b.points.len();
            sends.push(self.send_raw(
                self.topics.telemetry.clone(),
                b.vehicle_id.clone(),
                b.encode_to_vec(),
                message_types::TELEMETRY_BATCH,
                Vec::new(),
            ));
        }
        async move {
            futures::future::try_join_all(sends).await?;
            Ok(n)
        }
    }

    /// Produces points of one vehicle and waits for every ack.
    pub async fn send_telemetry(
        &self,
        vehicle: &str,
        points: Vec<TelemetryPoint>,
        source: &'static str,
        received_us: i64,
    ) -> Result<usize, IngestError> {
        let batches = self.telemetry_batches(vehicle, points, source, received_us);
        let n = self
            .start_telemetry(batches)
            .await
            .map_err(|e| IngestError::from_produce(e, self.retry_after_secs))?;
        metrics::POINTS_ACCEPTED
            .with_label_values(&[source])
            .inc_by(n as u64);
        Ok(n)
    }

    pub fn start_detections(&self, batch: &DetectionBatch) -> BoxedSend {
        self.send_raw(
            self.topics.detections.clone(),
            batch.vehicle_id.clone(),
            batch.encode_to_vec(),
            message_types::DETECTION_BATCH,
            Vec::new(),
        )
    }

    pub async fn send_detections(
        &self,
        batch: &DetectionBatch,
        source: &'static str,
    ) -> Result<(), IngestError> {
        self.start_detections(batch)
            .await
            .map_err(|e| IngestError::from_produce(e, self.retry_after_secs))?;
        metrics::RECORDS_ACCEPTED
            .with_label_values(&["detections", source])
            .inc();
        Ok(())
    }

    pub async fn send_frame(&self, frame: &Frame, source: &'static str) -> Result<(), IngestError> {
        self.send_raw(
            self.topics.frames.clone(),
            frame.vehicle_id.clone(),
            frame.encode_to_vec(),
            message_types::FRAME,
            Vec::new(),
        )
        .await
        .map_err(|e| IngestError::from_produce(e, self.retry_after_secs))?;
        metrics::RECORDS_ACCEPTED
            .with_label_values(&["frames", source])
            .inc();
        Ok(())
    }
}
