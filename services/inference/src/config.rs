//! The inference service's configuration (`FLEETWATCH_INFERENCE__...`).

use std::path::PathBuf;

use fleetwatch_common::config::Validate;
use fleetwatch_common::grpc::GrpcConfig;
use fleetwatch_common::{AdminConfig, LogConfig, ShutdownConfig};
use fleetwatch_kafka::{KafkaConfig, TopicNames};
use fleetwatch_objectstore::ObjectStoreConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log format, level and OTLP export.
    pub log: LogConfig,
    /// Admin server (`/metrics`, `/healthz`, `/readyz`), default port 9603.
    pub admin: AdminConfig,
    /// Drain time limit (`shutdown.grace_ms`).
    pub shutdown: ShutdownConfig,
    /// Broker connection and consumer tuning. `kafka.consumer.group_id`
    /// defaults to `fleetwatch-inference`; `kafka.consumer.batch_max_records`
    /// and `batch_max_wait_ms` bound how many frames one handler call takes.
    pub kafka: KafkaConfig,
    /// Topic names (frames are consumed, detections produced).
    pub topics: TopicNames,
    /// The `InferenceService` gRPC server.
    pub grpc: GrpcConfig,
    /// Where models come from when `model.source = "object_store"`.
    pub object_store: ObjectStoreConfig,
    /// Which model, which runtime.
    pub model: ModelConfig,
    /// Decode limits, thresholds, batching and frame skipping.
    pub pipeline: PipelineConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mut kafka = KafkaConfig::default();
        kafka.consumer.group_id = "fleetwatch-inference".into();
        // A handler call decodes and infers every frame it gets: keep it to a
        // few micro-batches so offsets advance steadily.
        kafka.consumer.batch_max_records = 32;
        Self {
            log: LogConfig::default(),
            admin: AdminConfig::on_port(9603),
            shutdown: ShutdownConfig::default(),
            kafka,
            topics: TopicNames::default(),
            grpc: GrpcConfig::on_port(50053),
            object_store: ObjectStoreConfig::default(),
            model: ModelConfig::default(),
            pipeline: PipelineConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// onnxruntime, loaded at run time from `model.ort_dylib_path` / `ORT_DYLIB_PATH`.
    Ort,
    /// tract, pure Rust, compiled in: slower, but needs no shared library.
    Tract,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ort => "ort",
            Self::Tract => "tract",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A local ONNX file (`model.path`); reloaded when the file changes.
    Path,
    /// `models/<name>/<version>/model.onnx` in the object store; with an
    /// empty `model.version`, the version named by `models/<name>/current`.
    ObjectStore,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `ort` (onnxruntime) or `tract` (pure Rust).
    pub runtime: RuntimeKind,
    /// `path` or `object_store`.
    pub source: ModelSource,
    /// The ONNX file when `source = "path"`.
    pub path: PathBuf,
    /// Model name: `model_name` of every detection, and the object-store
    /// directory `models/<name>/`.
    pub name: String,
    /// Model version: `model_version` of every detection. With `source =
    /// "object_store"` and this empty, the service follows the pointer object
    /// `models/<name>/current` (its content is the version) and switches
    /// versions without a restart. With `source = "path"` and this empty,
    /// the version is `sha256:<first 12 hex digits of the file>`.
    pub version: String,
    /// How often the pointer object (or the model file) is checked for a new version; 0 = never.
    pub poll_interval_secs: u64,
    /// Class names, one per line, index = class id. Empty: the model's ONNX
    /// metadata `names` (as ultralytics exports it), else the 80 COCO classes.
    pub names_file: PathBuf,
    /// onnxruntime shared library (`libonnxruntime.so.*`); empty = env `ORT_DYLIB_PATH`.
    pub ort_dylib_path: PathBuf,
    /// Instances of the model run side by side, each on its own inference
    /// thread taking micro-batches off the shared queue; 0 = one per core
    /// (at most 4). Several single-threaded instances give more frames/s than
    /// one instance using every core (see the README's benchmark).
    pub sessions: usize,
    /// onnxruntime intra-op threads per instance; 0 = the cores divided by
    /// `sessions` (at least 1).
    pub intra_threads: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            runtime: RuntimeKind::Ort,
            source: ModelSource::Path,
            path: PathBuf::from("services/inference/models/tiny.onnx"),
            name: "tiny".into(),
            version: String::new(),
            poll_interval_secs: 10,
            names_file: PathBuf::new(),
            ort_dylib_path: PathBuf::new(),
            sessions: 0,
            intra_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Boxes whose best class score is below this are dropped.
    pub confidence_threshold: f32,
    /// Per-class NMS: a box overlapping a better one of its class by more
    /// than this IoU is dropped.
    pub iou_threshold: f32,
    /// At most this many detections per frame (the best ones).
    pub max_detections: usize,
    /// Frames run through the model together, at most.
    pub max_batch: usize,
    /// How long the first frame of a micro-batch waits for more.
    pub max_wait_ms: u64,
    /// Decoded frames waiting for the model, at most; decoders wait (Kafka)
    /// or the request is refused with RESOURCE_EXHAUSTED (gRPC) beyond it.
    pub queue_capacity: usize,
    /// Frames decoded and letterboxed at once (CPU threads).
    pub decode_concurrency: usize,
    /// A Kafka frame older than this when its turn comes is skipped (counted
    /// in `fleetwatch_inference_frames_skipped_total{reason="stale"}`), so a
    /// backlog never delays fresh frames; 0 = never skip. Age is measured from
    /// the time ingest received it (`received_unix_us`), else the capture time.
    pub max_frame_age_ms: u64,
    /// Frames larger than this many bytes are rejected to the DLQ.
    pub max_frame_bytes: usize,
    /// Frames with more pixels than this (width x height in the JPEG header)
    /// are rejected before decoding.
    pub max_frame_pixels: u64,
    /// Publish a `DetectionBatch` with no detections for frames where nothing
    /// was found: downstream consumers then know the frame was analysed, by
    /// which model. Persistence stores no rows for it.
    pub publish_empty: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            confidence_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 300,
            // Batching buys nothing on CPU once the instances run side by
            // side (README, benchmark: batch 4 was slower than 1) and adds
            // latency; raise it for runtimes that gain from batches.
            max_batch: 1,
            max_wait_ms: 5,
            queue_capacity: 64,
            decode_concurrency: 2,
            max_frame_age_ms: 10_000,
            max_frame_bytes: 8 * 1024 * 1024,
            max_frame_pixels: 8192 * 8192,
            publish_empty: true,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Vec<String> {
        let mut errs = self.kafka.validate();
        errs.extend(self.shutdown.validate());
        if self.kafka.consumer.group_id.trim().is_empty() {
            errs.push("kafka.consumer.group_id: must not be empty".into());
        }
        errs.extend(self.topics.validate());
        let m = &self.model;
        if m.name.trim().is_empty() || m.name.contains('/') {
            errs.push("model.name: must be non-empty and contain no '/'".into());
        }
        if m.version.contains('/') {
            errs.push("model.version: must contain no '/'".into());
        }
        match m.source {
            ModelSource::Path if m.path.as_os_str().is_empty() => {
                errs.push("model.path: must be set when model.source = \"path\"".into())
            }
            ModelSource::ObjectStore => errs.extend(self.object_store.validate()),
            _ => {}
        }
        let p = &self.pipeline;
        if !(0.0..=1.0).contains(&p.confidence_threshold) {
            errs.push("pipeline.confidence_threshold: must be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&p.iou_threshold) {
            errs.push("pipeline.iou_threshold: must be between 0 and 1".into());
        }
        for (name, v) in [
            ("pipeline.max_detections", p.max_detections),
            ("pipeline.max_batch", p.max_batch),
            ("pipeline.queue_capacity", p.queue_capacity),
            ("pipeline.decode_concurrency", p.decode_concurrency),
            ("pipeline.max_frame_bytes", p.max_frame_bytes),
        ] {
            if v == 0 {
                errs.push(format!("{name}: must be at least 1"));
            }
        }
        if p.max_frame_pixels == 0 {
            errs.push("pipeline.max_frame_pixels: must be at least 1".into());
        }
        errs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.admin.listen.port(), 9603);
        assert_eq!(c.grpc.listen.port(), 50053);
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::default();
        c.model.name = "a/b".into();
        c.model.source = ModelSource::ObjectStore;
        c.object_store.url = "ftp://x".into();
        c.pipeline.confidence_threshold = 2.0;
        c.pipeline.max_batch = 0;
        c.kafka.consumer.group_id = String::new();
        let errs = c.validate().join("\n");
        for field in [
            "model.name",
            "object_store.url",
            "pipeline.confidence_threshold",
            "pipeline.max_batch",
            "kafka.consumer.group_id",
        ] {
            assert!(errs.contains(field), "{field} missing in {errs}");
        }
    }
}

#[cfg(test)]
mod documented {
    #[test]
    fn every_key_is_documented() {
        fleetwatch_testkit::assert_config_documented(
            &super::Config::default(),
            env!("CARGO_MANIFEST_DIR"),
        );
    }
}
