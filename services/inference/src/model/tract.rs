//! The tract runtime: pure Rust, one optimised plan per batch size.

use std::sync::Mutex;

use super::{ModelError, ModelInfo, Output, Runtime, output};

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
    pub(super) fn share(&self) -> Self {
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
