//! The detection pipeline shared by the Kafka consumer and gRPC `Detect`.
//!
//! Callers decode and letterbox on the blocking pool (at most
//! `decode_concurrency` at once), then hand the input to a bounded queue.
//! One inference thread per model instance (`model.sessions`) takes
//! micro-batches off it (up to `max_batch` frames, waiting at most
//! `max_wait` after the first), runs its instance, applies NMS and answers
//! each caller. Decoding of the next frames thus overlaps inference of the
//! current batches, and the instances run side by side.
//!
//! The model can be swapped at any time: each queued frame keeps the model
//! it was letterboxed for, and a batch never mixes models, so every result
//! names the model that produced it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};

use crate::config::{PipelineConfig, RuntimeKind};
use crate::metrics;
use crate::model::{ModelError, ModelInfo, Runtime};
use crate::postprocess::{self, Found, Thresholds};
use crate::preprocess::{self, FrameError, Letterbox, Limits};

/// A model ready to run, with the identity its detections carry.
pub struct Model {
    pub name: String,
    pub version: String,
    pub runtime_kind: RuntimeKind,
    pub info: ModelInfo,
    pub loaded_unix_us: i64,
    /// One per inference thread (thread `i` uses `runtimes[i % len]`).
    runtimes: Vec<Mutex<Box<dyn Runtime>>>,
}

impl Model {
    pub fn new(
        name: String,
        version: String,
        runtime_kind: RuntimeKind,
        info: ModelInfo,
        runtimes: Vec<Box<dyn Runtime>>,
    ) -> Self {
        Self {
            name,
            version,
            runtime_kind,
            info,
            loaded_unix_us: fleetwatch_common::now_unix_us(),
            runtimes: runtimes.into_iter().map(Mutex::new).collect(),
        }
    }

    /// Model instances, i.e. inference threads a pipeline starts for it.
    pub fn sessions(&self) -> usize {
        self.runtimes.len()
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("runtime", &self.runtime_kind)
            .field("sessions", &self.runtimes.len())
            .finish()
    }
}

/// Why a frame got no result.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The frame itself is bad: it will never succeed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The queue is full (only when the caller asked not to wait).
    #[error("the inference queue is full")]
    Busy,
    /// The model failed on this batch (may pass, e.g. after a model switch).
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the inference pipeline is shut down")]
    Closed,
}

/// Detections of one frame.
#[derive(Debug, Clone)]
pub struct Detected {
    pub model: Arc<Model>,
    pub found: Vec<Found>,
    pub width: u32,
    pub height: u32,
}

impl Detected {
    pub fn class_name(&self, f: &Found) -> &str {
        self.model
            .info
            .names
            .get(f.class_id)
            .map_or("unknown", String::as_str)
    }
}

struct Job {
    model: Arc<Model>,
    input: Vec<f32>,
    letterbox: Letterbox,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Detected, DetectError>>,
}

/// Whether a caller waits for room in the queue (Kafka: back-pressure) or is
/// refused at once (gRPC: RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    Wait,
    Refuse,
}

pub struct Pipeline {
    model: RwLock<Arc<Model>>,
    queue: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    decoders: Arc<Semaphore>,
    limits: Limits,
}

impl Pipeline {
    /// Starts one inference thread per instance of `model`. Later models
    /// (`swap_model`) are loaded with the same configuration, so the same
    /// number of instances.
    pub fn start(model: Model, config: &PipelineConfig) -> Arc<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let fps = Arc::new(Mutex::new(metrics::FpsWindow::default()));
        for index in 0..model.sessions().max(1) {
            let worker = Worker {
                index,
                rx: rx.clone(),
                depth: depth.clone(),
                fps: fps.clone(),
                max_batch: config.max_batch,
                max_wait: Duration::from_millis(config.max_wait_ms),
                thresholds: Thresholds {
                    confidence: config.confidence_threshold,
                    iou: config.iou_threshold,
                    max_detections: config.max_detections,
                },
            };
            // The threads end when the pipeline (the queue's sender) is dropped.
            let spawned = std::thread::Builder::new()
                .name(format!("inference-{index}"))
                .spawn(move || worker.run());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an inference thread");
            }
        }
        let model = Arc::new(model);
        metrics::set_model(&model);
        Arc::new(Self {
            model: RwLock::new(model),
            queue: tx,
            depth,
            decoders: Arc::new(Semaphore::new(config.decode_concurrency)),
            limits: Limits {
                max_bytes: config.max_frame_bytes,
                max_pixels: config.max_frame_pixels,
            },
        })
    }

    pub fn model(&self) -> Arc<Model> {
        self.model.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `model` the one new frames use; frames already queued finish
    /// on the old one.
    pub fn swap_model(&self, model: Model) {
        let model = Arc::new(model);
        metrics::set_model(&model);
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = model;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decodes, letterboxes and infers one JPEG.
    pub async fn detect(
        &self,
        data: Vec<u8>,
        when_full: WhenFull,
    ) -> Result<Detected, DetectError> {
        let permit = self
            .decoders
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DetectError::Closed)?;
        let model = self.model();
        let limits = self.limits;
        let queue = self.queue.clone();
        let depth = self.depth.clone();
        let (reply, answer) = oneshot::channel();
        let decoded = tokio::task::spawn_blocking(move || -> Result<(u32, u32), DetectError> {
            let started = Instant::now();
            let img = preprocess::decode_jpeg(&data, limits)?;
            drop(data);
            let (h, w) = (model.info.height, model.info.width);
            let mut input = vec![0.0f32; 3 * h * w];
            let letterbox = preprocess::letterbox_into(&img, w, h, &mut input);
            metrics::DECODE_SECONDS.observe(started.elapsed().as_secs_f64());
            drop(permit);
            let job = Job {
                model,
                input,
                letterbox,
                enqueued: Instant::now(),
                reply,
            };
            depth.fetch_add(1, Ordering::Relaxed);
            metrics::QUEUE_DEPTH.inc();
            let sent = match when_full {
                WhenFull::Wait => queue.send(job).map_err(|_| DetectError::Closed),
                WhenFull::Refuse => queue.try_send(job).map_err(|e| match e {
                    TrySendError::Full(_) => DetectError::Busy,
                    TrySendError::Disconnected(_) => DetectError::Closed,
                }),
            };
            if sent.is_err() {
                depth.fetch_sub(1, Ordering::Relaxed);
                metrics::QUEUE_DEPTH.dec();
            }
            sent?;
            Ok((img.width, img.height))
        })
        .await
        .map_err(|_| DetectError::Closed)??;
        let mut detected = answer.await.map_err(|_| DetectError::Closed)??;
        (detected.width, detected.height) = decoded;
        Ok(detected)
    }

    /// Frames decoded and waiting for the model.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

struct Worker {
    /// Which of the model's instances this thread runs.
    index: usize,
    /// Shared by the inference threads: the one holding it gathers a batch.
    rx: Arc<Mutex<Receiver<Job>>>,
    depth: Arc<AtomicUsize>,
    fps: Arc<Mutex<metrics::FpsWindow>>,
    max_batch: usize,
    max_wait: Duration,
    thresholds: Thresholds,
}

impl Worker {
    fn take(&self, job: Job) -> Job {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::QUEUE_DEPTH.dec();
        job
    }

    fn run(self) {
        let mut pending: Option<Job> = None;
        loop {
            let Some(jobs) = self.gather(&mut pending) else {
                return;
            };
            let n = jobs.len();
            self.run_batch(jobs);
            self.fps.lock().unwrap_or_else(|e| e.into_inner()).add(n);
        }
    }

    /// The next micro-batch (`None` once the pipeline is dropped). The queue
    /// stays locked while the batch fills, so the other threads take the
    /// frames after it: batches are contiguous runs of the queue.
    fn gather(&self, pending: &mut Option<Job>) -> Option<Vec<Job>> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let first = match pending.take() {
            Some(j) => j,
            None => self.take(rx.recv().ok()?),
        };
        let deadline = Instant::now() + self.max_wait;
        let mut jobs = vec![first];
        while jobs.len() < self.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    let j = self.take(j);
                    if Arc::ptr_eq(&j.model, &jobs[0].model) {
                        jobs.push(j);
                    } else {
                        *pending = Some(j);
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Some(jobs)
    }

    fn run_batch(&self, mut jobs: Vec<Job>) {
        let model = jobs[0].model.clone();
        let n = jobs.len();
        let now = Instant::now();
        for j in &jobs {
            metrics::QUEUE_WAIT_SECONDS.observe(now.duration_since(j.enqueued).as_secs_f64());
        }
        let started = Instant::now();
        let result = {
            let runtime = &model.runtimes[self.index % model.runtimes.len()];
            let mut runtime = runtime.lock().unwrap_or_else(|e| e.into_inner());
            if n == 1 {
                runtime.run(&jobs[0].input, 1)
            } else {
                let mut input = Vec::with_capacity(n * jobs[0].input.len());
                for j in &mut jobs {
                    input.extend_from_slice(&j.input);
                    j.input = Vec::new();
                }
                runtime.run(&input, n)
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let kind = model.runtime_kind.as_str();
        metrics::INFERENCE_SECONDS
            .with_label_values(&[kind])
            .observe(elapsed);
        metrics::BATCH_SIZE.observe(n as f64);
        match result {
            Ok(out) => {
                let per = out.rows * out.anchors;
                for (i, j) in jobs.into_iter().enumerate() {
                    let found = postprocess::detect(
                        &out.data[i * per..(i + 1) * per],
                        out.rows,
                        out.anchors,
                        &j.letterbox,
                        self.thresholds,
                    );
                    metrics::DETECTIONS.inc_by(found.len() as u64);
                    let _ = j.reply.send(Ok(Detected {
                        model: model.clone(),
                        found,
                        width: j.letterbox.orig_w,
                        height: j.letterbox.orig_h,
                    }));
                }
                metrics::FRAMES
                    .with_label_values(&["inferred"])
                    .inc_by(n as u64);
            }
            Err(e) => {
                metrics::FRAMES
                    .with_label_values(&["failed"])
                    .inc_by(n as u64);
                tracing::warn!(error = %e, frames = n, model = %model.name, version = %model.version, "inference failed");
                for j in jobs {
                    let _ = j
                        .reply
                        .send(Err(DetectError::Model(ModelError::Run(e.to_string()))));
                }
            }
        }
    }
}
