//! The onnxruntime runtime (`ort`, the library loaded at run time).

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use super::{ModelError, ModelInfo, Output, Runtime, output};

/// The process's one onnxruntime environment (ort allows one), created from
/// the first dylib path asked for.
static ORT_ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
static ORT_INIT: Mutex<()> = Mutex::new(());

/// Where onnxruntime is looked for: the option, else `ORT_DYLIB_PATH`.
pub fn ort_dylib_path(opt: Option<&Path>) -> Result<std::path::PathBuf, ModelError> {
    let path = match opt {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => p.into(),
            _ => {
                return Err(ModelError::Ort(
                    "no onnxruntime library: set model.ort_dylib_path or ORT_DYLIB_PATH to libonnxruntime.so \
                     (pip install onnxruntime ships it under onnxruntime/capi/; scripts/test and scripts/up set it up)"
                        .into(),
                ));
            }
        },
    };
    if !path.is_file() {
        return Err(ModelError::Ort(format!(
            "onnxruntime library {} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

fn ort_env(opt: Option<&Path>) -> Result<ort::environment::Environment, ModelError> {
    let _guard = ORT_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ORT_ENV.get() {
        return env.clone().map_err(ModelError::Ort);
    }
    let path = ort_dylib_path(opt)?;
    let env = ort::init_from(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.with_name("fleetwatch-inference")
                .build()
                .map_err(|e| e.to_string())
        });
    let _ = ORT_ENV.set(env.clone());
    env.map_err(ModelError::Ort)
}

pub struct OrtRuntime {
    session: ort::session::Session,
    info: ModelInfo,
}

impl OrtRuntime {
    /// One session with `intra_threads` intra-op threads (0 = onnxruntime's
    /// default, one per core), whose idle threads spin or not.
    pub fn load(
        bytes: &[u8],
        info: &ModelInfo,
        dylib: Option<&Path>,
        intra_threads: usize,
        spin: bool,
    ) -> Result<Self, ModelError> {
        use ort::session::builder::GraphOptimizationLevel;
        let env = ort_env(dylib)?;
        let e = |e: ort::Error<_>| ModelError::Ort(e.to_string());
        let mut builder = ort::session::Session::builder(&env)
            .map_err(|e| ModelError::Ort(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(e)?;
        if intra_threads > 0 {
            builder = builder.with_intra_threads(intra_threads).map_err(e)?;
        }
        if !spin {
            builder = builder.with_intra_op_spinning(false).map_err(e)?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| ModelError::Ort(e.to_string()))?;
        Ok(Self {
            session,
            info: info.clone(),
        })
    }
}

impl Runtime for OrtRuntime {
    fn run(&mut self, input: &[f32], n: usize) -> Result<Output, ModelError> {
        let shape = [n, 3, self.info.height, self.info.width];
        let tensor = ort::value::TensorRef::from_array_view((shape, input))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.info.input_name.as_str() => tensor])
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let dims: &[i64] = shape;
        output(dims, data, n, self.info.rows)
    }
}
