//! `fleet.frames.v1` in, `fleet.detections.v1` out.
//!
//! Each consumer batch: frames that can never be inferred are rejected (to
//! the DLQ with the reason), stale frames are skipped and counted, the rest
//! go through the pipeline together (so they form micro-batches and decoding
//! overlaps inference), and their `DetectionBatch`es are produced. The
//! handler returns only once the broker acknowledged every one of them, so
//! offsets advance only after the detections are durable (at-least-once).
//! A redelivered frame yields the same detections with the same natural key
//! (vehicle, time, frame, model, version, index), which persistence absorbs.

use std::sync::Arc;

use fleetwatch_kafka::{BatchHandler, OutRecord, Producer, Record, Rejection, TransientError};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::{BoundingBox, Detection, DetectionBatch, Frame};
use prost::Message as _;

use crate::metrics;
use crate::pipeline::{DetectError, Detected, Pipeline, WhenFull};
use crate::preprocess;

pub const SOURCE: &str = "inference";

pub struct FramesHandler {
    pub pipeline: Arc<Pipeline>,
    pub producer: Producer,
    pub detections_topic: String,
    /// 0 = never skip.
    pub max_frame_age_us: i64,
    pub publish_empty: bool,
}

/// Builds the detections message of a frame.
pub fn detection_batch(
    vehicle_id: &str,
    time_unix_us: i64,
    frame_id: &str,
    content_type: &str,
    received_unix_us: i64,
    d: &Detected,
) -> DetectionBatch {
    let ct = if content_type.is_empty() {
        "image/jpeg"
    } else {
        content_type
    };
    DetectionBatch {
        vehicle_id: vehicle_id.to_string(),
        time_unix_us,
        frame_id: frame_id.to_string(),
        frame_key: if vehicle_id.is_empty() {
            String::new()
        } else {
            fleetwatch_objectstore::frame_key(vehicle_id, time_unix_us, ct).unwrap_or_default()
        },
        detections: d
            .found
            .iter()
            .map(|f| Detection {
                class_name: d.class_name(f).to_string(),
                confidence: f.confidence,
                bbox: Some(BoundingBox {
                    x_min: f.x_min,
                    y_min: f.y_min,
                    x_max: f.x_max,
                    y_max: f.y_max,
                }),
                track_id: String::new(),
            })
            .collect(),
        model_name: d.model.name.clone(),
        model_version: d.model.version.clone(),
        source: SOURCE.into(),
        received_unix_us,
    }
}

struct Invalid {
    reason: String,
    label: &'static str,
}

fn parse(record: &Record) -> Result<Frame, Invalid> {
    let f: Frame = record.decode().map_err(|reason| Invalid {
        reason,
        label: "undecodable",
    })?;
    let invalid = |reason: String| Invalid {
        reason,
        label: "invalid",
    };
    fleetwatch_kafka::envelope::check_vehicle(record, &f.vehicle_id).map_err(invalid)?;
    if f.time_unix_us <= 0 {
        return Err(invalid(format!(
            "time_unix_us {} is not a time",
            f.time_unix_us
        )));
    }
    preprocess::check_content_type(&f.content_type).map_err(|e| Invalid {
        reason: e.to_string(),
        label: "image",
    })?;
    Ok(f)
}

impl FramesHandler {
    fn stale(&self, f: &Frame, now: i64) -> bool {
        if self.max_frame_age_us <= 0 {
            return false;
        }
        let at = if f.received_unix_us > 0 {
            f.received_unix_us
        } else {
            f.time_unix_us
        };
        now - at > self.max_frame_age_us
    }
}

impl BatchHandler for FramesHandler {
    async fn handle(&self, batch: &[Record]) -> Result<Vec<Rejection>, TransientError> {
        let now = fleetwatch_common::now_unix_us();
        let mut rejected: Vec<(Rejection, &'static str)> = Vec::new();
        let mut frames: Vec<(usize, Frame)> = Vec::with_capacity(batch.len());
        let mut skipped = 0u64;
        for (index, record) in batch.iter().enumerate() {
            match parse(record) {
                Ok(f) if self.stale(&f, now) => skipped += 1,
                Ok(f) => frames.push((index, f)),
                Err(inv) => rejected.push((
                    Rejection {
                        index,
                        reason: inv.reason,
                    },
                    inv.label,
                )),
            }
        }
        // All at once: the pipeline bounds decoding and batches inference.
        let results = futures::future::join_all(frames.iter_mut().map(|(_, f)| {
            let data = std::mem::take(&mut f.data);
            self.pipeline.detect(data, WhenFull::Wait)
        }))
        .await;

        let mut out: Vec<(usize, Vec<u8>)> = Vec::with_capacity(frames.len());
        for ((index, f), result) in frames.iter().zip(results) {
            match result {
                Ok(d) => {
                    if d.found.is_empty() && !self.publish_empty {
                        continue;
                    }
                    let b = detection_batch(
                        &f.vehicle_id,
                        f.time_unix_us,
                        &f.frame_id,
                        &f.content_type,
                        f.received_unix_us,
                        &d,
                    );
                    out.push((*index, b.encode_to_vec()));
                }
                Err(DetectError::Frame(e)) => rejected.push((
                    Rejection {
                        index: *index,
                        reason: e.to_string(),
                    },
                    "image",
                )),
                // A model failure or shutdown: retry the batch (no offset moves).
                Err(e) => return Err(TransientError::new(anyhow::anyhow!(e))),
            }
        }
        let sends = out.iter().map(|(index, payload)| {
            let record = &batch[*index];
            async move {
                let r = self
                    .producer
                    .send(OutRecord {
                        topic: &self.detections_topic,
                        key: record.key_str().unwrap_or_default(),
                        payload,
                        message_type: message_types::DETECTION_BATCH,
                        traceparent: record.traceparent(),
                        extra_headers: &[],
                    })
                    .await;
                (*index, r)
            }
        });
        for (index, r) in futures::future::join_all(sends).await {
            match r {
                Ok(_) => {}
                Err(e) if e.is_retryable() => {
                    return Err(TransientError::new(anyhow::anyhow!(
                        "detections not acknowledged: {e}"
                    )));
                }
                Err(e) => rejected.push((
                    Rejection {
                        index,
                        reason: format!("detections cannot be produced: {e}"),
                    },
                    "too_large",
                )),
            }
        }
        // Counted once the batch succeeded, so a retried batch counts once.
        if skipped > 0 {
            metrics::SKIPPED
                .with_label_values(&["stale"])
                .inc_by(skipped);
        }
        for (_, label) in &rejected {
            metrics::REJECTED.with_label_values(&[label]).inc();
        }
        // Dead letters in the order the records came.
        rejected.sort_by_key(|(r, _)| r.index);
        Ok(rejected.into_iter().map(|(r, _)| r).collect())
    }
}
