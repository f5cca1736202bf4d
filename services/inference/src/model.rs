//! Models: what an ONNX file says about itself (input size, output layout,
//! class names) and the two runtimes that run it behind one trait.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::config::RuntimeKind;

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

/// What the service needs to know about a model, read from the ONNX file.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub input_name: String,
    /// Input height and width in pixels (`[N,3,H,W]`).
    pub height: usize,
    pub width: usize,
    /// Output rows: 4 box values then one score per class.
    pub rows: usize,
    /// Output columns (anchors); `None` when the model leaves it symbolic.
    pub anchors: Option<usize>,
    /// Class names, index = class id; as many as the output has classes.
    pub names: Vec<String>,
}

impl ModelInfo {
    pub fn classes(&self) -> usize {
        self.rows - 4
    }
}

mod onnx_pb {
    //! The few parts of `onnx.proto` needed to read a model's interface and
    //! metadata; prost skips everything else (weights included) unparsed.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<Entry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Named>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfo>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfo>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Named {
        #[prost(string, tag = "8")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<Type>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Type {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorType>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorType {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<Shape>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Shape {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dim>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

fn dims(v: &onnx_pb::ValueInfo) -> Vec<Option<usize>> {
    v.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.filter(|v| *v > 0).map(|v| v as usize))
                .collect()
        })
        .unwrap_or_default()
}

const ONNX_FLOAT: i32 = 1;

/// Reads the interface of a YOLOv8-layout detection model: one float input
/// `[N,3,H,W]` with fixed H and W, one output `[N,4+classes,anchors]`.
/// `names` overrides the class names; otherwise the ONNX metadata `names`
/// (ultralytics' `{0: 'person', ...}`), else COCO's 80 classes.
pub fn inspect(bytes: &[u8], names: Option<Vec<String>>) -> Result<ModelInfo, ModelError> {
    use prost::Message as _;
    let model = onnx_pb::Model::decode(bytes).map_err(|e| ModelError::NotOnnx(e.to_string()))?;
    let graph = model
        .graph
        .ok_or_else(|| ModelError::NotOnnx("the file has no graph".into()))?;
    // Old exporters also list initializers as graph inputs.
    let inputs: Vec<&onnx_pb::ValueInfo> = graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|w| w.name == i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Layout(format!(
            "expected one input, found {}",
            inputs.len()
        )));
    };
    let elem = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .map(|t| t.elem_type);
    if elem != Some(ONNX_FLOAT) {
        return Err(ModelError::Layout(format!(
            "input {:?} must be float32",
            input.name
        )));
    }
    let (height, width) = match dims(input).as_slice() {
        [_, Some(3), Some(h), Some(w)] => (*h, *w),
        d => {
            return Err(ModelError::Layout(format!(
                "input {:?} must be [N,3,H,W] with fixed H and W, found {d:?}",
                input.name
            )));
        }
    };
    let [output] = graph.output.as_slice() else {
        return Err(ModelError::Layout(format!(
            "expected one output, found {}",
            graph.output.len()
        )));
    };
    let (rows, anchors) = match dims(output).as_slice() {
        [_, Some(rows), anchors] if *rows > 4 => (*rows, *anchors),
        d => {
            return Err(ModelError::Layout(format!(
                "output {:?} must be [N,4+classes,anchors], found {d:?}",
                output.name
            )));
        }
    };
    let names = match names {
        Some(n) => n,
        None => match model.metadata_props.iter().find(|e| e.key == "names") {
            Some(e) => parse_ultralytics_names(&e.value)?,
            None => coco_names(),
        },
    };
    if names.len() != rows - 4 {
        return Err(ModelError::Names(format!(
            "{} class names for a model with {} classes",
            names.len(),
            rows - 4
        )));
    }
    Ok(ModelInfo {
        input_name: input.name.clone(),
        height,
        width,
        rows,
        anchors,
        names,
    })
}

/// Parses ultralytics' metadata `names`: a Python dict literal
/// `{0: 'person', 1: "traffic light", ...}` (quotes single or double).
pub fn parse_ultralytics_names(s: &str) -> Result<Vec<String>, ModelError> {
    let bad = |why: &str| ModelError::Names(format!("metadata `names` {why}: {s:.80}"));
    let body = s
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| bad("is not a {id: 'name'} dict"))?;
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let colon = rest
            .find(':')
            .ok_or_else(|| bad("has an entry without ':'"))?;
        let id: usize = rest[..colon]
            .trim()
            .parse()
            .map_err(|_| bad("has a non-numeric id"))?;
        let after = rest[colon + 1..].trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| bad("has an unquoted name"))?;
        let end = after[1..]
            .find(quote)
            .ok_or_else(|| bad("has an unterminated name"))?;
        out.push((id, after[1..1 + end].to_string()));
        rest = after[end + 2..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    out.sort_by_key(|(id, _)| *id);
    if out.iter().enumerate().any(|(i, (id, _))| i != *id) {
        return Err(bad("ids are not 0..n"));
    }
    Ok(out.into_iter().map(|(_, n)| n).collect())
}

/// Reads a names file: one class name per line, blank lines ignored.
pub fn read_names_file(path: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Names(format!("cannot read {}: {e}", path.display())))?;
    Ok(parse_names_lines(&text))
}

pub fn parse_names_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn coco_names() -> Vec<String> {
    const COCO: [&str; 80] = [
        "person",
        "bicycle",
        "car",
        "motorcycle",
        "airplane",
        "bus",
        "train",
        "truck",
        "boat",
        "traffic light",
        "fire hydrant",
        "stop sign",
        "parking meter",
        "bench",
        "bird",
        "cat",
        "dog",
        "horse",
        "sheep",
        "cow",
        "elephant",
        "bear",
        "zebra",
        "giraffe",
        "backpack",
        "umbrella",
        "handbag",
        "tie",
        "suitcase",
        "frisbee",
        "skis",
        "snowboard",
        "sports ball",
        "kite",
        "baseball bat",
        "baseball glove",
        "skateboard",
        "surfboard",
        "tennis racket",
        "bottle",
        "wine glass",
        "cup",
        "fork",
        "knife",
        "spoon",
        "bowl",
        "banana",
        "apple",
        "sandwich",
        "orange",
        "broccoli",
        "carrot",
        "hot dog",
        "pizza",
        "donut",
        "cake",
        "chair",
        "couch",
        "potted plant",
        "bed",
        "dining table",
        "toilet",
        "tv",
        "laptop",
        "mouse",
        "remote",
        "keyboard",
        "cell phone",
        "microwave",
        "oven",
        "toaster",
        "sink",
        "refrigerator",
        "book",
        "clock",
        "vase",
        "scissors",
        "teddy bear",
        "hair drier",
        "toothbrush",
    ];
    COCO.iter().map(|s| s.to_string()).collect()
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

// ------------------------------------------------------------------ ort

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

// ---------------------------------------------------------------- tract

type TractPlan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;

/// tract optimises for concrete shapes: one plan per batch size, made on
/// first use (the batch-1 plan at load, so a broken model fails early).
pub struct TractRuntime {
    model: std::sync::Arc<tract_onnx::prelude::InferenceModel>,
    /// Shared by every instance of the model: a plan runs from `&self`.
    plans: std::sync::Arc<Mutex<std::collections::HashMap<usize, TractPlan>>>,
    info: ModelInfo,
}

impl TractRuntime {
    pub fn load(bytes: &[u8], info: &ModelInfo) -> Result<Self, ModelError> {
        use tract_onnx::prelude::*;
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| ModelError::Tract(format!("{e:#}")))?;
        let rt = Self {
            model: std::sync::Arc::new(model),
            plans: Default::default(),
            info: info.clone(),
        };
        rt.plan(1)?;
        Ok(rt)
    }

    /// Another instance sharing this one's plans.
    fn share(&self) -> Self {
        Self {
            model: self.model.clone(),
            plans: self.plans.clone(),
            info: self.info.clone(),
        }
    }

    fn plan(&self, n: usize) -> Result<TractPlan, ModelError> {
        use tract_onnx::prelude::*;
        // Held while optimising, so a batch size is optimised once.
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&n) {
            return Ok(p.clone());
        }
        let fact = InferenceFact::dt_shape(
            f32::datum_type(),
            tvec!(n, 3, self.info.height, self.info.width),
        );
        let plan = (*self.model)
            .clone()
            .with_input_fact(0, fact)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| ModelError::Tract(format!("{e:#}")))?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }
}

impl Runtime for TractRuntime {
    fn run(&mut self, input: &[f32], n: usize) -> Result<Output, ModelError> {
        use tract_onnx::prelude::*;
        let plan = self.plan(n)?;
        let shape = [n, 3, self.info.height, self.info.width];
        let tensor =
            tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(&shape), input.to_vec())
                .map_err(|e| ModelError::Run(e.to_string()))?;
        let result = plan
            .run(tvec!(Tensor::from(tensor).into()))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let out = result
            .first()
            .ok_or_else(|| ModelError::Run("the model returned no output".into()))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
        let data: Vec<f32> = view.iter().copied().collect();
        output(&shape, &data, n, self.info.rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_ultralytics_names() {
        let n = parse_ultralytics_names("{0: 'person', 1: \"traffic light\", 2: 'it''s'}");
        // `'it''s'` is not Python; the parser stops at the first closing quote.
        assert!(n.is_err() || n.unwrap().len() == 3);
        let n = parse_ultralytics_names("{1: 'b', 0: 'a'}").unwrap();
        assert_eq!(n, vec!["a", "b"]);
        assert!(parse_ultralytics_names("[a, b]").is_err());
        assert!(parse_ultralytics_names("{0: 'a', 2: 'c'}").is_err());
        assert!(parse_ultralytics_names("{0: a}").is_err());
    }

    #[test]
    fn names_file_lines() {
        assert_eq!(parse_names_lines("a\n\n b \nc"), vec!["a", "b", "c"]);
    }

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

    #[test]
    fn coco_has_80() {
        assert_eq!(coco_names().len(), 80);
    }
}
