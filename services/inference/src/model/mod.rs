//! Models: what an ONNX file says about itself (input size, output layout,
//! class names) and the two runtimes that run it behind one trait.

mod names;
mod onnx;
mod onnxruntime;
mod tract;

use crate::config::RuntimeKind;

pub use names::{coco_names, parse_names_lines, parse_ultralytics_names, read_names_file};
pub use onnx::{ModelInfo, inspect};
pub use onnxruntime::{OrtRuntime, ort_dylib_path};
pub use tract::TractRuntime;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("unsupported model layout: {0}")]
    Layout(String),
    #[error("class names: {0}")]
    Names(String),
    #[error("onnxruntime: {0}")]
    Ort(String),
    #[error("tract: {0}")]
    Tract(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// One model output: `[n, rows, anchors]`, row-major.
#[derive(Debug)]
pub struct Output {
    pub data: Vec<f32>,
    pub n: usize,
    pub rows: usize,
    pub anchors: usize,
}

/// A loaded model in one runtime. Owned by the inference thread.
pub trait Runtime: Send {
    /// Runs `n` images of `[3,H,W]` packed in `input` (`[n,3,H,W]`).
    fn run(&mut self, input: &[f32], n: usize) -> Result<Output, ModelError>;
}

/// Runtime options beyond the model itself.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// `libonnxruntime.so`; `None` = env `ORT_DYLIB_PATH`.
    pub ort_dylib: Option<std::path::PathBuf>,
    /// Model instances run side by side, one inference thread each; 0 =
    /// automatic (see [`RuntimeOptions::resolve`]).
    pub sessions: usize,
    /// onnxruntime intra-op threads per instance; 0 = automatic.
    pub intra_threads: usize,
}

/// At most this many instances when `sessions` is automatic: beyond a few,
/// each frame's latency grows with little throughput gained.
const MAX_AUTO_SESSIONS: usize = 4;

impl RuntimeOptions {
    /// `(sessions, intra_threads)` with the automatic values filled in for a
    /// machine with `cores` cores: one instance per core up to
    /// [`MAX_AUTO_SESSIONS`], and the cores shared out between them.
    ///
    /// Several single-threaded instances beat one instance with as many
    /// intra-op threads: each operator's parallel section ends in a barrier,
    /// and on a busy node one descheduled thread stalls the whole run, while
    /// independent instances never wait for each other (README, benchmark).
    pub fn resolve(&self, cores: usize) -> (usize, usize) {
        let cores = cores.max(1);
        let sessions = match self.sessions {
            0 => cores.min(MAX_AUTO_SESSIONS),
            n => n,
        };
        let intra = match self.intra_threads {
            0 => (cores / sessions).max(1),
            n => n,
        };
        (sessions, intra)
    }
}

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Loads `sessions` instances of the model (see [`RuntimeOptions::resolve`]).
pub fn load_runtimes(
    kind: RuntimeKind,
    bytes: &[u8],
    info: &ModelInfo,
    opts: &RuntimeOptions,
) -> Result<Vec<Box<dyn Runtime>>, ModelError> {
    let (sessions, intra_threads) = opts.resolve(available_cores());
    match kind {
        RuntimeKind::Ort => (0..sessions)
            .map(|_| {
                // Idle pool threads spin waiting for work; with several
                // instances they would spin on cores the others are using.
                let spin = sessions == 1;
                OrtRuntime::load(bytes, info, opts.ort_dylib.as_deref(), intra_threads, spin)
                    .map(|r| Box::new(r) as Box<dyn Runtime>)
            })
            .collect(),
        RuntimeKind::Tract => {
            // tract's plans are immutable and shareable: optimise once.
            let first = TractRuntime::load(bytes, info)?;
            let mut out: Vec<Box<dyn Runtime>> = (1..sessions)
                .map(|_| Box::new(first.share()) as Box<dyn Runtime>)
                .collect();
            out.insert(0, Box::new(first));
            Ok(out)
        }
    }
}

fn output(shape: &[i64], data: &[f32], n: usize, rows: usize) -> Result<Output, ModelError> {
    match shape {
        [b, r, a] if *b as usize == n && *r as usize == rows && *a > 0 => Ok(Output {
            data: data.to_vec(),
            n,
            rows,
            anchors: *a as usize,
        }),
        s => Err(ModelError::Run(format!(
            "output shape {s:?}, expected [{n}, {rows}, anchors]"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_the_cores() {
        let auto = RuntimeOptions::default();
        assert_eq!(auto.resolve(1), (1, 1));
        assert_eq!(auto.resolve(2), (2, 1));
        assert_eq!(auto.resolve(16), (4, 4));
        let one = RuntimeOptions {
            sessions: 1,
            ..Default::default()
        };
        assert_eq!(one.resolve(2), (1, 2));
        let fixed = RuntimeOptions {
            sessions: 3,
            intra_threads: 2,
            ..Default::default()
        };
        assert_eq!(fixed.resolve(2), (3, 2));
    }
}
