//! Throughput benchmark of the inference pipeline: JPEG files in, detections
//! out, through exactly the code the service runs (decode, letterbox,
//! micro-batched inference, NMS). Prints one JSON line with frames/s.
//! `services/inference/bench/run.py` runs it for both runtimes beside a
//! Python onnxruntime pipeline and writes the table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use fleetwatch_inference::config::{ModelConfig, ModelSource, PipelineConfig, RuntimeKind};
use fleetwatch_inference::metrics;
use fleetwatch_inference::model::{RuntimeOptions, available_cores};
use fleetwatch_inference::pipeline::{Pipeline, WhenFull};
use fleetwatch_inference::source::ModelLoader;

#[derive(Parser)]
#[command(about = "Frames/s of the inference pipeline on a directory of JPEGs")]
struct Args {
    /// ONNX model (YOLOv8 layout).
    #[arg(long)]
    model: PathBuf,
    /// Directory of .jpg frames, used round-robin.
    #[arg(long)]
    frames: PathBuf,
    #[arg(long, value_parser = ["ort", "tract"], default_value = "ort")]
    runtime: String,
    /// Frames measured (after the warm-up).
    #[arg(long, default_value_t = 100)]
    count: usize,
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    #[arg(long, default_value_t = 1)]
    max_batch: usize,
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Frames in flight at once (decoding or queued).
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    #[arg(long, default_value_t = 1)]
    decode_concurrency: usize,
    /// Model instances side by side (`model.sessions`; 0 = the service's
    /// default, one per core).
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// onnxruntime intra-op threads per instance (`model.intra_threads`; 0 =
    /// the service's default, cores / sessions).
    #[arg(long, default_value_t = 0)]
    intra_threads: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let runtime = if a.runtime == "ort" {
        RuntimeKind::Ort
    } else {
        RuntimeKind::Tract
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.frames)
        .with_context(|| format!("cannot read {}", a.frames.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .jpg in {}", a.frames.display());
    let jpegs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;

    let loader = ModelLoader::new(
        ModelConfig {
            runtime,
            source: ModelSource::Path,
            path: a.model.clone(),
            name: "bench".into(),
            version: "bench".into(),
            sessions: a.sessions,
            intra_threads: a.intra_threads,
            poll_interval_secs: 0,
            ..Default::default()
        },
        None,
    );
    let marker = loader.marker().await?;
    let model = loader.load(&marker).await?;
    let (sessions, intra_threads) = RuntimeOptions {
        sessions: a.sessions,
        intra_threads: a.intra_threads,
        ..Default::default()
    }
    .resolve(available_cores());
    anyhow::ensure!(
        model.sessions() == sessions,
        "instances: {} != {sessions}",
        model.sessions()
    );
    let pipeline = Pipeline::start(
        model,
        &PipelineConfig {
            max_batch: a.max_batch,
            max_wait_ms: a.max_wait_ms,
            queue_capacity: a.in_flight.max(1),
            decode_concurrency: a.decode_concurrency,
            ..Default::default()
        },
    );

    let run = |n: usize, offset: usize| {
        let pipeline = pipeline.clone();
        let jpegs = &jpegs;
        async move {
            use futures::StreamExt as _;
            let mut detections = 0usize;
            let mut s = futures::stream::iter(0..n)
                .map(|i| {
                    let data = jpegs[(offset + i) % jpegs.len()].clone();
                    let p = pipeline.clone();
                    async move { p.detect(data, WhenFull::Wait).await }
                })
                .buffer_unordered(a.in_flight.max(1));
            while let Some(r) = s.next().await {
                detections += r?.found.len();
            }
            anyhow::Ok(detections)
        }
    };
    run(a.warmup, 0).await?;
    // Per-stage means over the measured frames only, from the service's own
    // histograms (decode + letterbox per frame; model run per batch).
    let infer = metrics::INFERENCE_SECONDS.with_label_values(&[runtime.as_str()]);
    let before = (
        metrics::DECODE_SECONDS.get_sample_sum(),
        metrics::DECODE_SECONDS.get_sample_count(),
        infer.get_sample_sum(),
        infer.get_sample_count(),
    );
    let started = Instant::now();
    let detections = run(a.count, a.warmup).await?;
    let secs = started.elapsed().as_secs_f64();
    let mean_ms = |sum: f64, count: u64| {
        if count == 0 {
            0.0
        } else {
            sum * 1000.0 / count as f64
        }
    };
    let decode_ms = mean_ms(
        metrics::DECODE_SECONDS.get_sample_sum() - before.0,
        metrics::DECODE_SECONDS.get_sample_count() - before.1,
    );
    let batch_ms = mean_ms(
        infer.get_sample_sum() - before.2,
        infer.get_sample_count() - before.3,
    );
    println!(
        "{}",
        serde_json::json!({
            "pipeline": format!("rust-{}", a.runtime),
            "frames": a.count,
            "seconds": secs,
            "fps": a.count as f64 / secs,
            "detections": detections,
            "max_batch": a.max_batch,
            "in_flight": a.in_flight,
            "sessions": sessions,
            "decode_letterbox_ms": decode_ms,
            "model_run_ms": batch_ms,
            "intra_threads": intra_threads,
        })
    );
    Ok(())
}
