//! What both training engines (the CPU's and the GPU's) share: the step's inputs and result, the
//! trainable parameters, and how a tensor that went non-finite is described. Its own module so
//! that neither engine imports the other.
use crate::backend::ParamId;
use crate::graph::{Graph, ParamKind};

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepResult {
    /// Mean loss of the batch (unscaled).
    pub loss: f64,
    /// The gradients overflowed in fp16 and the optimizer step was skipped (the loss scale fell).
    pub skipped: bool,
}

/// Optimizer hyper-parameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepParams {
    pub lr: f32,
    pub weight_decay: f32,
    /// AdamW's step count t (1 for the first step).
    pub t: u64,
}

/// Trainable parameters and whether weight decay applies to each (not to biases and BN).
pub fn trainable_params(graph: &Graph) -> Vec<(ParamId, bool)> {
    graph
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind.trainable())
        .map(|(i, p)| (ParamId(i), p.kind == ParamKind::Weight))
        .collect()
}

/// "finite", or how many NaN and infinite values `values` holds.
pub fn describe_finiteness(values: &[f32]) -> String {
    let nan = values.iter().filter(|v| v.is_nan()).count();
    let inf = values.iter().filter(|v| v.is_infinite()).count();
    if nan + inf == 0 {
        "finite".into()
    } else {
        format!("{nan} NaN and {inf} inf of {} values", values.len())
    }
}
