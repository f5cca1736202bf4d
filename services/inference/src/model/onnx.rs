//! What an ONNX file says about itself: input size, output layout and
//! class names, read without loading the weights.

use super::{ModelError, coco_names, parse_ultralytics_names};

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
