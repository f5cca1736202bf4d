//! Prometheus metrics of the inference service. Labels are bounded:
//! `runtime` (ort, tract), `result`/`reason` (small fixed sets), gRPC
//! `method` and `code`; the model info gauge carries the name and version of
//! the one model loaded (the previous version's series is removed on a switch).

use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use fleetwatch_common::metrics;
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::pipeline::Model;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub static INFERENCE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "fleetwatch_inference_latency_seconds",
        "Time the model takes to run one micro-batch",
        &["runtime"],
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static DECODE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleetwatch_inference_decode_seconds",
        "Time to decode and letterbox one JPEG frame",
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static QUEUE_WAIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleetwatch_inference_queue_wait_seconds",
        "Time a decoded frame waits in the queue before its batch runs",
        LATENCY_BUCKETS.to_vec(),
    )
});

pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "fleetwatch_inference_batch_size",
        "Frames per micro-batch run through the model",
        vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0],
    )
});

pub static QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::int_gauge(
        "fleetwatch_inference_queue_depth",
        "Decoded frames waiting for the model",
    )
});

pub static FRAMES_PER_SECOND: LazyLock<Gauge> = LazyLock::new(|| {
    metrics::gauge(
        "fleetwatch_inference_frames_per_second",
        "Frames inferred per second over the last few seconds",
    )
});

pub static FRAMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_inference_frames_total",
        "Frames run through the model, by result (inferred, failed)",
        &["result"],
    )
});

pub static SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_inference_frames_skipped_total",
        "Kafka frames not inferred on purpose, by reason (stale: older than pipeline.max_frame_age_ms)",
        &["reason"],
    )
});

pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_inference_frames_rejected_total",
        "Kafka frames sent to the DLQ, by reason (undecodable, invalid, image, too_large)",
        &["reason"],
    )
});

pub static DETECTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::int_counter(
        "fleetwatch_inference_detections_total",
        "Detections found (after NMS)",
    )
});

pub static MODEL_LOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_inference_model_loads_total",
        "Model loads and switches, by result (ok, error)",
        &["result"],
    )
});

pub static MODEL_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::int_gauge_vec(
        "fleetwatch_inference_model_info",
        "1 for the model in use",
        &["name", "version", "runtime"],
    )
});

pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::int_counter_vec(
        "fleetwatch_inference_grpc_requests_total",
        "gRPC requests by method and status code",
        &["method", "code"],
    )
});

static CURRENT_MODEL: Mutex<Option<[String; 3]>> = Mutex::new(None);

pub fn set_model(m: &Model) {
    let labels = [
        m.name.clone(),
        m.version.clone(),
        m.runtime_kind.as_str().to_string(),
    ];
    let mut cur = CURRENT_MODEL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = cur.take() {
        let _ = MODEL_INFO.remove_label_values(&[&old[0], &old[1], &old[2]]);
    }
    MODEL_INFO
        .with_label_values(&[&labels[0], &labels[1], &labels[2]])
        .set(1);
    *cur = Some(labels);
}

/// Frames per second over windows of at least two seconds.
pub struct FpsWindow {
    since: Instant,
    frames: usize,
}

impl Default for FpsWindow {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            frames: 0,
        }
    }
}

impl FpsWindow {
    pub fn add(&mut self, n: usize) {
        self.frames += n;
        let secs = self.since.elapsed().as_secs_f64();
        if secs >= 2.0 {
            FRAMES_PER_SECOND.set(self.frames as f64 / secs);
            *self = Self::default();
        }
    }
}

/// Registers every metric so /metrics lists them from the start.
pub fn init() {
    for r in ["ort", "tract"] {
        INFERENCE_SECONDS.with_label_values(&[r]);
    }
    for r in ["inferred", "failed"] {
        FRAMES.with_label_values(&[r]);
    }
    SKIPPED.with_label_values(&["stale"]);
    for r in ["undecodable", "invalid", "image", "too_large"] {
        REJECTED.with_label_values(&[r]);
    }
    for r in ["ok", "error"] {
        MODEL_LOADS.with_label_values(&[r]);
    }
    LazyLock::force(&DECODE_SECONDS);
    LazyLock::force(&QUEUE_WAIT_SECONDS);
    LazyLock::force(&BATCH_SIZE);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&FRAMES_PER_SECOND);
    LazyLock::force(&DETECTIONS);
    LazyLock::force(&GRPC_REQUESTS);
}
