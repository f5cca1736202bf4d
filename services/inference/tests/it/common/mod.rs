//! Shared test helpers: the committed tiny model, the onnxruntime library,
//! synthetic JPEG frames whose detections the tiny model makes predictable,
//! and an in-process inference service on the real broker.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use fleetwatch_common::Shutdown;
use fleetwatch_inference::config::{Config, ModelSource, RuntimeKind};
use fleetwatch_inference::pipeline::{Detected, Pipeline};
use fleetwatch_inference::source::ModelLoader;
use fleetwatch_inference::{Running, config::ModelConfig};
use fleetwatch_kafka::{OutRecord, Producer, TopicNames};
use fleetwatch_proto::message_types;
use fleetwatch_proto::v1::Frame;
use fleetwatch_testkit::{fresh_topics, kafka_config, shared_bootstrap, unique_suffix};
use prost::Message;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny.onnx")
}

/// The onnxruntime library the ort tests need. Missing is a failure, not a
/// skip: scripts/test installs it and exports ORT_DYLIB_PATH.
pub fn require_ort() -> PathBuf {
    let p = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    match p {
        Some(p) if p.is_file() => p,
        other => panic!(
            "ORT_DYLIB_PATH is {other:?}, not an onnxruntime library: run the tests with scripts/test \
             (it creates .fleetwatch/venv with `pip install onnxruntime` and exports ORT_DYLIB_PATH), \
             or export ORT_DYLIB_PATH=<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>"
        ),
    }
}

pub fn model_config(runtime: RuntimeKind) -> ModelConfig {
    if runtime == RuntimeKind::Ort {
        require_ort();
    }
    ModelConfig {
        runtime,
        source: ModelSource::Path,
        path: tiny_model(),
        name: "tiny".into(),
        version: "t1".into(),
        poll_interval_secs: 0,
        intra_threads: 1,
        ..Default::default()
    }
}

pub async fn pipeline(
    runtime: RuntimeKind,
    tweak: impl FnOnce(&mut fleetwatch_inference::config::PipelineConfig),
) -> std::sync::Arc<Pipeline> {
    let loader = ModelLoader::new(model_config(runtime), None);
    let marker = loader.marker().await.unwrap();
    let model = loader.load(&marker).await.unwrap();
    let mut pc = fleetwatch_inference::config::PipelineConfig::default();
    tweak(&mut pc);
    Pipeline::start(model, &pc)
}

/// A white `w x h` JPEG with solid rectangles `(x0, y0, x1, y1, rgb)`.
pub fn jpeg(w: u32, h: u32, rects: &[(u32, u32, u32, u32, [u8; 3])]) -> Vec<u8> {
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (x0, y0, x1, y1, c) in rects {
        for y in *y0..*y1 {
            for x in *x0..*x1 {
                img.put_pixel(x, y, image::Rgb(*c));
            }
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(&img)
        .unwrap();
    out
}

pub const RED: [u8; 3] = [255, 0, 0];
pub const BLUE: [u8; 3] = [0, 0, 255];

/// A 128x64 frame (letterboxed into the 64x64 tiny model at scale 0.5 with
/// 16 px of padding top and bottom) with one red rectangle filling the model
/// cell (row 3, col 2) and a blue one filling cell (row 4, col 6).
pub fn two_objects() -> Vec<u8> {
    jpeg(128, 64, &[(32, 16, 48, 32, RED), (96, 32, 112, 48, BLUE)])
}

/// Expected boxes for [`two_objects`]: each anchor's box is 16x16 input
/// pixels centred on its cell, mapped back through the letterbox.
pub const RED_BOX: [f32; 4] = [24.0 / 128.0, 8.0 / 64.0, 56.0 / 128.0, 40.0 / 64.0];
pub const BLUE_BOX: [f32; 4] = [88.0 / 128.0, 24.0 / 64.0, 120.0 / 128.0, 56.0 / 64.0];

pub fn boxes(d: &Detected) -> Vec<(String, [f32; 4])> {
    d.found
        .iter()
        .map(|f| {
            (
                d.class_name(f).to_string(),
                [f.x_min, f.y_min, f.x_max, f.y_max],
            )
        })
        .collect()
}

pub fn assert_box(got: [f32; 4], want: [f32; 4]) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "box {got:?}, expected {want:?}");
    }
}

// ---------------------------------------------------------------- service

pub struct Harness {
    pub bootstrap: String,
    pub topics: TopicNames,
    pub shutdown: Shutdown,
    pub running: Running,
    pub producer: Producer,
    pub config: Config,
}

pub fn service_config(bootstrap: &str, topics: &TopicNames, runtime: RuntimeKind) -> Config {
    let mut c = Config {
        kafka: kafka_config(bootstrap, &format!("fwi-{}", unique_suffix())),
        topics: topics.clone(),
        model: model_config(runtime),
        ..Default::default()
    };
    c.kafka.consumer.batch_max_wait_ms = 20;
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c
}

impl Harness {
    pub async fn start(runtime: RuntimeKind, tweak: impl FnOnce(&mut Config)) -> Self {
        let bootstrap = shared_bootstrap().await;
        let topics = fresh_topics(&bootstrap, 1).await;
        let mut config = service_config(&bootstrap, &topics, runtime);
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let running = fleetwatch_inference::start(config.clone(), shutdown.clone())
            .await
            .unwrap();
        let producer = Producer::new(&kafka_config(&bootstrap, ""), "inference-test").unwrap();
        Self {
            bootstrap,
            topics,
            shutdown,
            running,
            producer,
            config,
        }
    }

    pub async fn send_raw(&self, key: &str, payload: &[u8]) {
        self.producer
            .send(OutRecord {
                topic: &self.topics.frames,
                key,
                payload,
                message_type: message_types::FRAME,
                traceparent: None,
                extra_headers: &[],
            })
            .await
            .unwrap();
    }

    pub async fn send_frame(&self, f: &Frame) {
        self.send_raw(&f.vehicle_id, &f.encode_to_vec()).await;
    }

    pub async fn stop(self) {
        fleetwatch_testkit::stop_service(&self.shutdown, self.running.handle).await;
    }
}

pub fn frame(vehicle: &str, time_us: i64, frame_id: &str, data: Vec<u8>) -> Frame {
    Frame {
        vehicle_id: vehicle.into(),
        time_unix_us: time_us,
        frame_id: frame_id.into(),
        content_type: "image/jpeg".into(),
        data,
        width: 0,
        height: 0,
        received_unix_us: fleetwatch_common::now_unix_us(),
    }
}
