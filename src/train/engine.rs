//! Where a training step runs: the CPU in f32, or the GPU in fp16 with fp32 master weights and
//! dynamic loss scaling. The trainer's loop, schedule, validation cadence, logs and checkpoints
//! are the same for both; only the step and where parameters live differ.
use anyhow::{bail, ensure, Result};

use crate::backend::cpu::optim::adamw_step;
use crate::backend::cpu::{self, heatmap};
use crate::backend::HeatmapShape;
use crate::backend::{AdamWParams, AdamWState};
use crate::backend::{Backend, CpuBackend, ParamId};
use crate::checkpoint::Checkpoint;
use crate::data::loader::{Batch, Loader};
use crate::eval::inference::{predict_loader, PredictedImage};
use crate::graph::exec::Executor;
use crate::graph::plan::{DtypeSizes, Mode, PlanOptions};
use crate::graph::Graph;
use crate::train::cuda_engine::CudaEngine;
use crate::train::loss::HeatmapLoss;
use crate::train::step::{describe_finiteness, trainable_params, StepParams, StepResult};

pub enum Engine {
    Cpu(Box<CpuEngine>),
    Cuda(Box<CudaEngine>),
}

impl Engine {
    pub fn graph(&self) -> &Graph {
        match self {
            Engine::Cpu(e) => e.exec.graph(),
            Engine::Cuda(e) => e.graph(),
        }
    }

    /// One training step on `batch`. `next`, when the caller already has the batch it will pass
    /// next, lets the GPU engine upload that batch's images while the GPU is busy with this step
    /// (the CPU engine has nothing to overlap and ignores it).
    pub fn step(
        &mut self,
        batch: &Batch,
        next: Option<&Batch>,
        loss: &HeatmapLoss,
        sp: StepParams,
    ) -> Result<StepResult> {
        match self {
            Engine::Cpu(e) => cpu::in_pool(|| e.step(batch, loss, sp)),
            Engine::Cuda(e) => e.step(batch, next, loss, sp),
        }
    }

    /// Landmarks of every image of `loader` with the current weights.
    pub fn predict(&mut self, loader: &Loader, sigma: f64) -> Result<Vec<PredictedImage>> {
        match self {
            Engine::Cpu(e) => {
                for id in 0..e.exec.graph().params.len() {
                    let values = e.exec.param(ParamId(id));
                    e.eval.set_param(ParamId(id), &values);
                }
                cpu::in_pool(|| predict_loader(&mut e.eval, loader, sigma))
            }
            Engine::Cuda(e) => e.predict(loader, sigma),
        }
    }

    /// Weights, and AdamW moments under the checkpoint's optimizer prefixes.
    pub fn checkpoint(&self, meta: crate::checkpoint::Meta) -> Result<Checkpoint> {
        match self {
            Engine::Cpu(e) => {
                let mut ck = Checkpoint::from_executor(&e.exec, meta);
                let graph = e.exec.graph();
                for (i, (id, _)) in e.trainable.iter().enumerate() {
                    let p = &graph.params[id.0];
                    ck.insert_moments(&p.name, &p.shape, e.m[i].clone(), e.v[i].clone());
                }
                Ok(ck)
            }
            Engine::Cuda(e) => e.checkpoint(meta),
        }
    }

    /// Loads a checkpoint's weights (checked against the graph).
    pub fn load_weights(&mut self, ck: &Checkpoint) -> Result<()> {
        match self {
            Engine::Cpu(e) => ck.load_into(&mut e.exec),
            Engine::Cuda(e) => e.load_weights(ck),
        }
    }

    /// Sets the AdamW moments of the i-th trainable parameter.
    pub fn set_moments(&mut self, i: usize, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        match self {
            Engine::Cpu(e) => {
                e.m[i] = m;
                e.v[i] = v;
                Ok(())
            }
            Engine::Cuda(e) => e.set_moments(i, &m, &v),
        }
    }

    pub fn trainable(&self) -> &[(ParamId, bool)] {
        match self {
            Engine::Cpu(e) => &e.trainable,
            Engine::Cuda(e) => e.trainable(),
        }
    }

    /// The loss scaler's state for the checkpoint (`Null` on the CPU, which trains in f32).
    pub fn loss_scaler_state(&self) -> serde_json::Value {
        match self {
            Engine::Cpu(_) => serde_json::Value::Null,
            Engine::Cuda(e) => e.loss_scaler_state(),
        }
    }

    pub fn restore_loss_scaler(&mut self, state: &serde_json::Value) -> Result<()> {
        match self {
            Engine::Cpu(_) => Ok(()),
            Engine::Cuda(e) => e.restore_loss_scaler(state),
        }
    }

    /// Steps skipped for fp16 overflow over the whole run (AdamW's t counts applied steps only).
    pub fn skipped_steps(&self) -> u64 {
        match self {
            Engine::Cpu(_) => 0,
            Engine::Cuda(e) => e.skipped_steps(),
        }
    }

    /// Extra scalars for the logs: loss scale, device memory.
    pub fn log_scalars(&self) -> Vec<(&'static str, f64)> {
        match self {
            Engine::Cpu(_) => Vec::new(),
            Engine::Cuda(e) => e.log_scalars(),
        }
    }

    /// A short status for the progress bar (`VRAM 3.1/8.0 GiB, scale 65536`), empty on the CPU.
    pub fn status(&self) -> String {
        match self {
            Engine::Cpu(_) => String::new(),
            Engine::Cuda(e) => e.status(),
        }
    }
}

/// The f32 CPU step: the reference the GPU step is measured against.
pub struct CpuEngine {
    pub exec: Executor<CpuBackend>,
    pub eval: Executor<CpuBackend>,
    trainable: Vec<(ParamId, bool)>,
    /// AdamW moments, indexed like `trainable`.
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    grad: Vec<f32>,
    /// The step's target heatmaps, drawn from the batch's landmarks.
    targets: Vec<f32>,
}

impl CpuEngine {
    pub fn new(graph: Graph, seed: u64) -> Self {
        let eval_graph = graph.clone();
        let exec = Executor::new(
            graph,
            PlanOptions::new(Mode::Train, DtypeSizes::F32),
            CpuBackend::new(),
            seed,
        );
        let eval = Executor::new(
            eval_graph,
            PlanOptions::new(Mode::Eval, DtypeSizes::F32),
            CpuBackend::new(),
            seed,
        );
        let trainable = trainable_params(exec.graph());
        let m: Vec<Vec<f32>> = trainable
            .iter()
            .map(|(id, _)| vec![0.0; exec.graph().params[id.0].len()])
            .collect();
        let v = m.clone();
        let grad = vec![0.0; exec.graph().output_shape().len()];
        let targets = grad.clone();
        Self {
            exec,
            eval,
            trainable,
            m,
            v,
            grad,
            targets,
        }
    }

    fn step(&mut self, batch: &Batch, loss_fn: &HeatmapLoss, sp: StepParams) -> Result<StepResult> {
        let out = self.exec.graph().output_shape();
        let shape = HeatmapShape::new(out.n, out.h, out.w, out.c);
        ensure!(
            batch.target_shape() == shape,
            "the batch's targets are {:?}, the network predicts {shape:?}",
            batch.target_shape()
        );
        heatmap::encode(&batch.heatmap_points, shape, batch.sigma, &mut self.targets);
        let input = self.exec.input_view();
        self.exec.backend_mut().write(input, &batch.images);
        self.exec.forward();
        let pred = self.exec.backend().read(self.exec.output_view());
        let loss = loss_fn.fwd_bwd_cpu(&pred, &self.targets, shape, 1.0, &mut self.grad);
        if !loss.is_finite() {
            bail!(
                "step {}: the loss is {loss} (non-finite); the network output is {}.",
                sp.t,
                describe_finiteness(&pred),
            );
        }
        self.exec.backward_from(&self.grad);
        self.optimizer_step(sp)?;
        Ok(StepResult { loss, skipped: false })
    }

    /// AdamW on every trainable tensor; a non-finite gradient stops training naming the tensor.
    fn optimizer_step(&mut self, sp: StepParams) -> Result<()> {
        for (i, &(id, decay)) in self.trainable.iter().enumerate() {
            let grad = self.exec.param_grad(id);
            if let Some(bad) = grad.iter().position(|g| !g.is_finite()) {
                bail!(
                    "step {}: the gradient of {} is {} at element {bad}: training diverged.",
                    sp.t,
                    self.exec.graph().params[id.0].name,
                    grad[bad],
                );
            }
            let mut weights = self.exec.param(id);
            let hp = AdamWParams {
                lr: sp.lr,
                weight_decay: sp.weight_decay,
                ..AdamWParams::default()
            };
            adamw_step(
                AdamWState::new(&mut weights, &mut self.m[i], &mut self.v[i], None),
                &grad,
                &hp,
                sp.t,
                decay,
                1.0,
            );
            self.exec.set_param(id, &weights);
        }
        Ok(())
    }
}
