//! The GPU training step: fp16 activations and weight copies, fp32 master weights, moments,
//! gradients and loss, with dynamic loss scaling (docs/maths.md#dynamic-loss-scaling).
//!
//! One step queues, without waiting:
//! 1. the input images (unless the previous step already queued them, see `StagedInput`) and
//!    the batch's landmarks, from which `heatmap_encode_f32` draws the target heatmaps;
//! 2. forward (op by op, or one replayed CUDA graph with `--cuda-graphs`);
//! 3. the fused loss-and-gradient kernel (its gradient multiplied by the loss scale before the
//!    fp16 cast);
//! 4. backward (op by op or one graph), then one unscale + finite check over the whole contiguous
//!    gradient region;
//! 5. the next batch's images, when the caller has it, behind backward.
//!
//! Then it waits once, for the flag and the loss value: if any gradient is inf/NaN the step is
//! skipped (weights, moments and t untouched) and the scale halves; otherwise one AdamW launch
//! updates every trainable tensor and writes their fp16 copies. Validation runs between steps in
//! the same device memory (`CudaBackend::sharing`).
use std::sync::Arc;

use anyhow::{bail, ensure, Context as _, Result};
use cudarc::driver::CudaGraph;

use crate::backend::cuda::{heatmap as gpu_heatmap, loss as gpu_loss, optim as gpu_optim};
use crate::backend::{AdamWChunk, AdamWParams, AdamWState, AdamWTensor};
use crate::backend::{Backend, CudaBackend, ParamId};
use crate::backend::{HeatmapBatch, HeatmapShape};
use crate::checkpoint::{Checkpoint, Meta};
use crate::data::loader::{Batch, Loader};
use crate::eval::inference::{predict_loader, PredictedImage};
use crate::gpu::capture::capture;
use crate::gpu::memory::{human_bytes, Staging};
use crate::gpu::{nvtx, vram, DeviceBuffer, Gpu};
use crate::graph::exec::Executor;
use crate::graph::plan::{DtypeSizes, Mode, PlanOptions};
use crate::graph::Graph;
use crate::train::loss::HeatmapLoss;
use crate::train::loss_scaler::{DynamicLossScaler, StepOutcome};
use crate::train::step::{describe_finiteness, trainable_params, StepParams, StepResult};

pub struct CudaEngine {
    gpu: Arc<Gpu>,
    exec: Executor<CudaBackend>,
    eval: Executor<CudaBackend>,
    trainable: Vec<(ParamId, bool)>,
    /// The step's target heatmaps, drawn on the GPU from `target_points`.
    targets: DeviceBuffer<f32>,
    /// The batch's landmarks in heatmap pixels, `2 * n * k` doubles, and their page-locked staging.
    target_points: DeviceBuffer<f64>,
    point_staging: Staging<f64>,
    channel_weights: Option<DeviceBuffer<f32>>,
    loss_workspace: DeviceBuffer<f64>,
    loss_value: DeviceBuffer<f64>,
    nonfinite: DeviceBuffer<i32>,
    /// AdamW moments, laid out like the backend's master region (element for element).
    m: DeviceBuffer<f32>,
    v: DeviceBuffer<f32>,
    /// Every trainable tensor's place in the parameter regions, cut into the chunks the one-launch
    /// AdamW step walks.
    adamw_chunks: gpu_optim::AdamWChunkTable,
    scaler: DynamicLossScaler,
    shape: HeatmapShape,
    /// The batch whose images the previous step queued into the input, if any.
    staged: Option<StagedInput>,
    /// Forward and backward as CUDA graphs, when turned on ([`CudaEngine::use_cuda_graphs`]).
    graphs: Option<StepGraphs>,
    /// Steps completed (applied or skipped) by this engine.
    steps_done: u64,
}

/// The two passes of an executor.
#[derive(Clone, Copy, Debug)]
pub enum Pass {
    Forward,
    Backward,
}

fn run_eagerly(exec: &mut Executor<CudaBackend>, pass: Pass) {
    match pass {
        Pass::Forward => exec.forward(),
        Pass::Backward => exec.backward(),
    }
}

/// Records one pass of `exec` as a CUDA graph (`gpu::capture`) without running it. Run the pass
/// once op by op first: a scratch buffer that would have to grow fails the recording. The graph
/// replays with the arena, parameter and scratch addresses of now.
pub fn record_pass(exec: &mut Executor<CudaBackend>, pass: Pass) -> Result<CudaGraph> {
    let gpu = exec.backend().gpu().clone();
    exec.backend_mut().set_recording(true);
    let recorded = capture(&gpu, || {
        run_eagerly(exec, pass);
        exec.backend_mut().take_error()
    });
    exec.backend_mut().set_recording(false);
    recorded
}

/// The recorded passes of [`CudaEngine::use_cuda_graphs`], valid for the backend's scratch
/// generation they were recorded at.
#[derive(Default)]
struct StepGraphs {
    forward: Option<CudaGraph>,
    backward: Option<CudaGraph>,
    scratch_generation: Option<u64>,
}

/// Which batch's images the previous step already queued into the training input: the address and
/// length of its image buffer and its sample indices. A step whose batch matches skips its upload;
/// any other batch is uploaded as usual, so a stale staging can cost time but never correctness.
/// (The batch lives, unmoved in memory, from being staged until its own step: the caller holds
/// it.)
#[derive(Debug, PartialEq)]
struct StagedInput {
    images: usize,
    len: usize,
    indices: Vec<usize>,
}

impl StagedInput {
    fn of(batch: &Batch) -> Self {
        Self {
            images: batch.images.as_ptr() as usize,
            len: batch.images.len(),
            indices: batch.indices.clone(),
        }
    }
}

/// Device memory a training run needs, for the check before anything is allocated.
pub struct MemoryPlan {
    pub train_arena: usize,
    /// Validation's own activation arena: 0 when it fits inside the training arena, where it runs.
    pub eval_arena: usize,
    pub params: usize,
    pub optimizer: usize,
    pub scratch: usize,
}

impl MemoryPlan {
    pub fn total(&self) -> usize {
        self.train_arena + self.eval_arena + self.params + self.optimizer + self.scratch
    }
}

fn train_options() -> PlanOptions {
    PlanOptions::new(Mode::Train, DtypeSizes::F16)
}

fn eval_options() -> PlanOptions {
    PlanOptions::new(Mode::Eval, DtypeSizes::F16)
}

/// The one-launch AdamW step's chunks for the `trainable` tensors of `exec`'s parameter layout.
fn adamw_chunk_table(exec: &Executor<CudaBackend>, trainable: &[(ParamId, bool)]) -> Vec<AdamWChunk> {
    let layout = exec.backend().layout();
    let tensors: Vec<AdamWTensor> = trainable
        .iter()
        .map(|&(id, decay)| {
            let (value_at, len, grad_at) = layout.slot(id);
            AdamWTensor {
                value_at,
                grad_at: grad_at.expect("a trainable parameter has a gradient slot"),
                len,
                decay,
            }
        })
        .collect();
    AdamWChunk::table(&tensors)
}

/// What [`CudaEngine::new`] will allocate for `graph`, computed from the plans alone.
pub fn memory_plan(graph: &Graph) -> MemoryPlan {
    use crate::graph::plan::plan;
    let train_graph = train_options().graph_for(graph.clone());
    let train = plan(&train_graph, train_options());
    let eval_graph = eval_options().graph_for(graph.clone());
    let eval = plan(&eval_graph, eval_options());
    let layout = crate::backend::cuda::backend::ParamLayout::new(&graph.param_specs());
    let shapes: Vec<_> = graph.nodes.iter().map(|n| n.shape).collect();
    let convs: Vec<_> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            crate::graph::Op::Conv { p, .. } | crate::graph::Op::ConvTranspose { p, .. } => {
                Some((graph.shape(n.inputs[0]), *p))
            }
            _ => None,
        })
        .collect();
    let out = graph.output_shape().len();
    MemoryPlan {
        train_arena: train.arena_bytes,
        // The evaluation executor runs inside the training executor's memory (`CudaBackend::sharing`):
        // nothing of its own unless its arena is the larger one.
        eval_arena: if eval.arena_bytes > train.arena_bytes {
            eval.arena_bytes
        } else {
            0
        },
        params: layout.bytes(),
        optimizer: 2 * layout.value_elements() * 4,
        scratch: crate::backend::cuda::backend::scratch_estimate(&shapes, &convs) + out * 4 + (1 << 20),
    }
}

/// Refuses to start when the plan does not fit the GPU's free memory, naming both numbers and
/// what to lower.
pub fn check_fits(gpu: &Gpu, graph: &Graph, batch: usize, image: [usize; 2]) -> Result<MemoryPlan> {
    let plan = memory_plan(graph);
    let (free, total) = gpu.context().mem_get_info().context("reading free GPU memory")?;
    // The CUDA context, module images and allocator rounding need a margin beyond the plan.
    let margin = 256 << 20;
    let need = plan.total() + margin;
    if need > free {
        let validation = match plan.eval_arena {
            0 => "none of its own".to_string(),
            bytes => human_bytes(bytes as u64),
        };
        bail!(
            "out of GPU memory: training {}x{} at batch {batch} needs about {} (activations {}, parameters and \
             gradients {}, optimizer {}, validation {validation}, scratch {}) but {} has {} free of {}. Lower \
             --batch-size or --image-size (e.g. --batch-size {} ), or free the GPU.",
            image[0],
            image[1],
            human_bytes(need as u64),
            human_bytes(plan.train_arena as u64),
            human_bytes(plan.params as u64),
            human_bytes(plan.optimizer as u64),
            human_bytes(plan.scratch as u64),
            gpu.info().name,
            human_bytes(free as u64),
            human_bytes(total as u64),
            (batch / 2).max(1)
        );
    }
    Ok(plan)
}

impl CudaEngine {
    pub fn new(gpu: Arc<Gpu>, graph: Graph, seed: u64, loss: &HeatmapLoss) -> Result<Self> {
        let eval_graph = graph.clone();
        let mut exec = Executor::new(graph, train_options(), CudaBackend::new(gpu.clone()), seed);
        exec.backend_mut()
            .take_error()
            .context("preparing the training executor")?;
        // Validation runs between steps, in the training executor's memory: its activations inside
        // the (much larger) training arena, its weights the training weights themselves.
        let eval_backend = CudaBackend::sharing(exec.backend());
        let mut eval = Executor::new(eval_graph, eval_options(), eval_backend, seed);
        eval.backend_mut()
            .take_error()
            .context("preparing the evaluation executor")?;
        let trainable = trainable_params(exec.graph());
        let out = exec.graph().output_shape();
        let shape = HeatmapShape::new(out.n, out.h, out.w, out.c);
        let values = exec.backend().layout().value_elements();
        let adamw_chunks = gpu_optim::AdamWChunkTable::new(&gpu, &adamw_chunk_table(&exec, &trainable))?;
        let channel_weights = Some(DeviceBuffer::from_host(&gpu, &loss.channel_weights)?);
        Ok(Self {
            targets: DeviceBuffer::zeros(&gpu, shape.len())?,
            target_points: DeviceBuffer::zeros(&gpu, 2 * shape.n * shape.k)?,
            point_staging: Staging::new(&gpu)?,
            channel_weights,
            loss_workspace: DeviceBuffer::zeros(&gpu, gpu_loss::loss_workspace_len(shape))?,
            loss_value: DeviceBuffer::zeros(&gpu, 1)?,
            nonfinite: DeviceBuffer::zeros(&gpu, 1)?,
            m: DeviceBuffer::zeros(&gpu, values.max(1))?,
            v: DeviceBuffer::zeros(&gpu, values.max(1))?,
            adamw_chunks,
            scaler: DynamicLossScaler::default(),
            gpu,
            exec,
            eval,
            trainable,
            shape,
            staged: None,
            graphs: None,
            steps_done: 0,
        })
    }

    pub fn graph(&self) -> &Graph {
        self.exec.graph()
    }

    pub fn trainable(&self) -> &[(ParamId, bool)] {
        &self.trainable
    }

    /// The training executor's backend: its op profile (`enable_op_profile`, `take_op_times`) and
    /// memory.
    pub fn backend_mut(&mut self) -> &mut CudaBackend {
        self.exec.backend_mut()
    }

    /// One training step on `batch`; with `next`, the images of the batch the caller will pass
    /// next are converted and queued for upload while the GPU works on this one (see
    /// `StagedInput`), so that step starts without host work on its critical path.
    pub fn step(
        &mut self,
        batch: &Batch,
        next: Option<&Batch>,
        loss_fn: &HeatmapLoss,
        sp: StepParams,
    ) -> Result<StepResult> {
        let _step = nvtx::range("train_step");
        {
            let _r = nvtx::range("upload");
            if self.staged.take() != Some(StagedInput::of(batch)) {
                self.upload_images(&batch.images, "uploading the batch's images")?;
            }
            ensure!(
                batch.target_shape() == self.shape,
                "the batch's targets are {:?}, the network predicts {:?}",
                batch.target_shape(),
                self.shape
            );
            let coords: &[f64] = bytemuck::cast_slice(&batch.heatmap_points);
            let (dst, len) = (self.target_points.slice().ptr(), self.target_points.len());
            self.point_staging
                .upload(&self.gpu, dst, len, |t| t.copy_from_slice(coords))?;
        }
        {
            let _r = nvtx::range("targets");
            gpu_heatmap::encode(
                &self.gpu,
                self.target_points.slice(),
                self.shape,
                batch.sigma,
                self.targets.slice_mut(),
            )?;
        }
        {
            let _r = nvtx::range("forward");
            self.run_pass(Pass::Forward).context("forward pass on the GPU")?;
        }
        let scale = self.scaler.scale();
        {
            let _r = nvtx::range("loss");
            let backend = self.exec.backend();
            let pred = backend.activation(self.exec.output_view());
            // SAFETY: the output gradient is a different planned tensor from the output.
            let grad = unsafe { backend.activation_mut(self.exec.output_grad_view()) };
            let weights = self.channel_weights.as_ref().expect("uploaded").slice();
            let batch = HeatmapBatch {
                pred,
                target: self.targets.slice(),
                shape: self.shape,
            };
            let out = gpu_loss::LossOutputs {
                grad,
                workspace: self.loss_workspace.slice_mut(),
                loss: self.loss_value.slice_mut(),
            };
            loss_fn.fwd_bwd_gpu(&self.gpu, batch, weights, scale, out)?;
        }
        {
            let _r = nvtx::range("backward");
            self.run_pass(Pass::Backward).context("backward pass on the GPU")?;
        }
        {
            let _r = nvtx::range("unscale");
            let grads = self.exec.backend_mut().all_grads();
            gpu_optim::unscale_and_check(&self.gpu, grads, 1.0 / scale, self.nonfinite.slice_mut())?;
        }
        if let Some(next) = next {
            self.stage(next)?;
        }
        let loss = gpu_loss::read_loss(&self.gpu, self.loss_value.slice())?;
        // read_flag answers "every value finite".
        let all_finite = gpu_optim::read_flag(&self.gpu, self.nonfinite.slice())?;
        if !loss.is_finite() {
            let pred = self.exec.backend().read(self.exec.output_view());
            bail!(
                "step {}: the loss is {loss} (non-finite); the network output is {}{}.",
                sp.t,
                describe_finiteness(&pred),
                self.first_bad_weight()
                    .map(|n| format!(", first non-finite weight: {n}"))
                    .unwrap_or_default()
            );
        }
        let outcome = match self.scaler.update(all_finite) {
            Ok(outcome) => outcome,
            Err(collapsed) => {
                let culprit = self.first_bad_gradient().unwrap_or_else(|| "none found".into());
                bail!(
                    "step {}: {collapsed}; first non-finite gradient (last layer first): {culprit}",
                    sp.t
                );
            }
        };
        let skipped = match outcome {
            StepOutcome::Skip { .. } => true,
            StepOutcome::Apply { .. } => {
                let _r = nvtx::range("optimizer");
                self.optimizer_step(sp)?;
                false
            }
        };
        self.steps_done += 1;
        Ok(StepResult { loss, skipped })
    }

    /// Records the training step's forward and backward passes as CUDA graphs during the engine's
    /// second step (the first runs op by op and sizes every scratch buffer) and replays them from
    /// then on instead of launching their kernels one by one (one launch per pass instead of over a
    /// thousand). Experimental and off by default: every kernel argument
    /// of the two passes is an arena address or a shape, fixed for the run, and a recording that
    /// fails or would need memory falls back to launching op by op for the rest of the run, with a
    /// warning. The loss, the unscale and AdamW, whose arguments change per step, stay outside.
    pub fn use_cuda_graphs(&mut self, on: bool) {
        self.graphs = on.then(StepGraphs::default);
    }

    /// Whether forward and backward are being replayed from recorded CUDA graphs.
    pub fn replaying_cuda_graphs(&self) -> bool {
        self.graphs
            .as_ref()
            .is_some_and(|g| g.forward.is_some() && g.backward.is_some())
    }

    /// Queues one pass of the training executor: replayed from its CUDA graph when graphs are on
    /// (recorded first if need be), else op by op.
    fn run_pass(&mut self, pass: Pass) -> Result<()> {
        let generation = self.exec.backend().scratch_generation();
        // Graphs replay after a whole step has run op by op (every scratch buffer has its size),
        // never while ops are timed one by one, and only with the scratch addresses they recorded.
        let replay = self.steps_done > 0 && !self.exec.backend().is_profiling();
        let Some(graphs) = self.graphs.as_mut().filter(|_| replay) else {
            run_eagerly(&mut self.exec, pass);
            return self.exec.backend_mut().take_error();
        };
        if graphs.scratch_generation != Some(generation) {
            *graphs = StepGraphs {
                scratch_generation: Some(generation),
                ..StepGraphs::default()
            };
        }
        let slot = match pass {
            Pass::Forward => &mut graphs.forward,
            Pass::Backward => &mut graphs.backward,
        };
        if slot.is_none() {
            match record_pass(&mut self.exec, pass) {
                Ok(graph) => *slot = Some(graph),
                Err(e) => {
                    eprintln!("warning: CUDA graphs turned off, the step runs op by op: {e:#}");
                    self.graphs = None;
                    run_eagerly(&mut self.exec, pass);
                    return self.exec.backend_mut().take_error();
                }
            }
        }
        slot.as_ref()
            .expect("recorded above")
            .launch()
            .context("launching a recorded CUDA graph")
    }

    /// Queues the upload of `next`'s images into the input, behind this step's backward pass (the
    /// last reader of the current input), while the GPU is still busy: the host's fp16 conversion
    /// overlaps the GPU's work. A batch of another size is left to its own step.
    fn stage(&mut self, next: &Batch) -> Result<()> {
        let input = self.exec.input_view();
        if next.images.len() != input.shape.len() {
            return Ok(());
        }
        let _r = nvtx::range("stage next batch");
        self.upload_images(&next.images, "uploading the next batch's images")?;
        self.staged = Some(StagedInput::of(next));
        Ok(())
    }

    /// Queues `images` into the network's input and reports a failure at once: a graph replay never
    /// asks the backend for its pending error, so a failed upload would otherwise go unseen and the
    /// step would train on stale input.
    fn upload_images(&mut self, images: &[f32], what: &'static str) -> Result<()> {
        let input = self.exec.input_view();
        self.exec.backend_mut().write(input, images);
        self.exec.backend_mut().take_error().context(what)
    }

    /// AdamW on every trainable tensor in one launch (the chunk table made in `new`).
    fn optimizer_step(&mut self, sp: StepParams) -> Result<()> {
        let hp = AdamWParams {
            lr: sp.lr,
            weight_decay: sp.weight_decay,
            ..AdamWParams::default()
        };
        let (master, grad, half) = self.exec.backend_mut().optimizer_regions();
        gpu_optim::adamw_step_chunks(
            &self.gpu,
            AdamWState::new(master, self.m.slice_mut(), self.v.slice_mut(), Some(half)),
            grad,
            &self.adamw_chunks,
            &hp,
            sp.t,
            1.0,
        )
    }

    /// The trainable tensor closest to the output whose gradient holds inf/NaN (unscaled, so
    /// read after the check that found one).
    fn first_bad_gradient(&self) -> Option<String> {
        self.trainable.iter().rev().find_map(|&(id, _)| {
            let grad = self.exec.param_grad(id);
            let bad = grad.iter().filter(|v| !v.is_finite()).count();
            (bad > 0).then(|| {
                format!(
                    "{} ({bad} of {} values)",
                    self.exec.graph().params[id.0].name,
                    grad.len()
                )
            })
        })
    }

    fn first_bad_weight(&self) -> Option<String> {
        self.trainable.iter().find_map(|&(id, _)| {
            let values = self.exec.param(id);
            values
                .iter()
                .any(|v| !v.is_finite())
                .then(|| self.exec.graph().params[id.0].name.clone())
        })
    }

    pub fn predict(&mut self, loader: &Loader, sigma: f64) -> Result<Vec<PredictedImage>> {
        let _r = nvtx::range("validation");
        let (shared_arena, shared_weights) = self.eval.backend().shares_memory_with(self.exec.backend());
        if shared_weights {
            self.eval.backend_mut().params_changed();
        } else {
            for id in 0..self.exec.graph().params.len() {
                let values = self.exec.param(ParamId(id));
                self.eval.set_param(ParamId(id), &values);
            }
        }
        if shared_arena {
            // Validation overwrites the training arena, and with it any staged input.
            self.staged = None;
        }
        let out = predict_loader(&mut self.eval, loader, sigma);
        self.eval.backend_mut().take_error().context("validation on the GPU")?;
        out
    }

    pub fn checkpoint(&self, meta: Meta) -> Result<Checkpoint> {
        self.exec.backend().check_error()?;
        let mut ck = Checkpoint::from_executor(&self.exec, meta);
        let m = self.m.to_host(&self.gpu)?;
        let v = self.v.to_host(&self.gpu)?;
        let graph = self.exec.graph();
        for &(id, _) in &self.trainable {
            let (at, len, _) = self.exec.backend().layout().slot(id);
            let p = &graph.params[id.0];
            ck.insert_moments(&p.name, &p.shape, m[at..at + len].to_vec(), v[at..at + len].to_vec());
        }
        if let Some((name, _)) = ck.tensors.iter().find(|(_, t)| t.data.iter().any(|x| !x.is_finite())) {
            bail!("refusing to write a checkpoint with non-finite values: {name} (the GPU state went bad)");
        }
        Ok(ck)
    }

    pub fn load_weights(&mut self, ck: &Checkpoint) -> Result<()> {
        ck.load_into(&mut self.exec)?;
        self.exec
            .backend_mut()
            .take_error()
            .context("uploading the checkpoint's weights")
    }

    pub fn set_moments(&mut self, i: usize, m: &[f32], v: &[f32]) -> Result<()> {
        let (id, _) = self.trainable[i];
        let (at, len, _) = self.exec.backend().layout().slot(id);
        ensure!(
            m.len() == len && v.len() == len,
            "moments of {}: wrong length",
            self.graph().params[id.0].name
        );
        // Only this parameter's range: a resume sets every parameter's moments in turn.
        self.m.upload_at(&self.gpu, at, m)?;
        self.v.upload_at(&self.gpu, at, v)
    }

    pub fn skipped_steps(&self) -> u64 {
        self.scaler.skipped_steps()
    }

    pub fn loss_scaler_state(&self) -> serde_json::Value {
        serde_json::to_value(&self.scaler).unwrap_or(serde_json::Value::Null)
    }

    pub fn restore_loss_scaler(&mut self, state: &serde_json::Value) -> Result<()> {
        if !state.is_null() {
            self.scaler = serde_json::from_value(state.clone()).context("the checkpoint's loss scaler state")?;
        }
        Ok(())
    }

    pub fn log_scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("train/loss_scale", self.scaler.scale() as f64),
            ("train/skipped_steps", self.scaler.skipped_steps() as f64),
        ];
        if let Ok(r) = vram::read(&self.gpu) {
            out.push(("gpu/vram_used_gib", r.used_bytes as f64 / (1u64 << 30) as f64));
        }
        out
    }

    pub fn status(&self) -> String {
        let vram = vram::read(&self.gpu)
            .map(|r| {
                format!(
                    " VRAM {:.1}/{:.1} GiB",
                    r.used_bytes as f64 / (1u64 << 30) as f64,
                    r.total_bytes as f64 / (1u64 << 30) as f64
                )
            })
            .unwrap_or_default();
        format!("scale {}{vram}", self.scaler.scale())
    }
}
