//! Compute backends. Every op exists three times under the same name: the CUDA kernel in
//! `kernels/<family>.cu`, its launch wrapper in `backend/cuda/<family>.rs`, and the f32 CPU twin in
//! `backend/cpu/<family>.rs`, which is the reference the kernel is tested against.
//!
//! # Why tensors are (arena offset, shape) handles
//! The graph executor never owns memory. The memory planner gives every activation, every
//! saved-for-backward tensor and every activation gradient a byte offset in ONE arena, and the
//! executor hands the backend [`View`]s: `(offset, shape)`. Each backend resolves a view against
//! its own arena: the CPU backend as a slice of a `Vec<f32>`, the CUDA backend as a raw device
//! pointer `arena_base + offset` into fp16 memory. So the executor and the planner are written
//! once, the plan is the same for both backends (it is computed for the backend's element sizes,
//! see [`crate::graph::plan::DtypeSizes`]), and a whole step can later be captured as a CUDA
//! graph because no call allocates. Parameters (weights, BN affine parameters and running
//! statistics) are not activations: they live for the whole run, so backends keep them in their
//! own storage addressed by [`ParamId`], with one gradient buffer per trainable parameter.
//!
//! # Gradient conventions
//! * Activation gradients: every backward method takes a [`Grad`] target whose `accumulate`
//!   flag says whether to add to what is there (a tensor read by several nodes receives one
//!   contribution per reader) or to overwrite it (the first contribution), so no buffer is ever
//!   zero-filled.
//! * Parameter gradients are overwritten: every parameter is used by exactly one node (the graph
//!   builder guarantees it), so one backward pass writes each parameter gradient once.
pub mod cpu;
pub mod cuda;
mod params;

pub use cpu::CpuBackend;
pub use cuda::backend::CudaBackend;
pub use params::{
    upsample_shape, AWingParams, AdamWChunk, AdamWParams, AdamWState, AdamWTensor, AddReluJoin, BnGrads, BnParams,
    BnRunning, BnWeights, ConvParams, GradOut, HeatmapBatch, HeatmapShape, LossWeighting, PoolParams, Shape4,
    UpsampleMode, WeightMap, ADAMW_CHUNK_LEN,
};

/// A tensor in the backend's activation arena: a byte offset (from the memory plan) and a shape.
/// Activations use the backend's activation element size; BN saved statistics are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub offset: usize,
    pub shape: Shape4,
}

/// Where a backward op writes an activation gradient, and whether it adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grad {
    pub view: View,
    pub accumulate: bool,
}

/// A parameter (or BN running statistic) in the backend's parameter storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// The four parameters of one batch-norm layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnRefs {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub params: BnParams,
}

/// A convolution's parameters as the fused convolution + batch-norm ops take them: the weight,
/// the bias when it has one, and the geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvRefs {
    pub w: ParamId,
    pub bias: Option<ParamId>,
    pub p: ConvParams,
}

/// What a backend must know to store one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub len: usize,
    /// Trainable parameters get a gradient buffer; running statistics do not.
    pub trainable: bool,
}

/// One timed op: its kind, the graph node it served ("stage3.m0.b1.conv1 4x48x48x128"; "-" for
/// work outside the graph, such as the input upload) and its milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub kind: &'static str,
    pub node: String,
    pub ms: f64,
}

/// What the op profile measured since the last `take_op_times` of either backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTimes {
    /// Per op kind: (kind, launches, total milliseconds), slowest first.
    pub by_kind: Vec<(&'static str, usize, f64)>,
    /// Every op, slowest first.
    pub ops: Vec<OpTime>,
}

impl OpTimes {
    /// Groups timed ops by kind; both lists slowest first.
    pub fn from_ops(mut ops: Vec<OpTime>) -> OpTimes {
        let mut kinds: std::collections::BTreeMap<&'static str, (usize, f64)> = Default::default();
        for op in &ops {
            let e = kinds.entry(op.kind).or_default();
            e.0 += 1;
            e.1 += op.ms;
        }
        let mut by_kind: Vec<_> = kinds.into_iter().map(|(k, (n, ms))| (k, n, ms)).collect();
        by_kind.sort_by(|a, b| b.2.total_cmp(&a.2));
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        OpTimes { by_kind, ops }
    }
}

/// One method per op and direction. Shapes and geometry travel with the call, so an
/// implementation needs no graph knowledge. All views of one call are disjoint (the planner
/// guarantees it for tensors live at the same step).
pub trait Backend {
    /// Size the activation arena (bytes) and allocate storage for the parameters.
    fn prepare(&mut self, arena_bytes: usize, params: &[ParamSpec]);
    /// Whether `prepare` adopted parameters another backend owns and writes (a validation backend
    /// running on the training weights): the executor then leaves their values alone.
    fn params_adopted(&self) -> bool {
        false
    }
    /// The first error since the last call, if any op failed. The methods return nothing because
    /// the CPU backend cannot fail; an asynchronous GPU backend keeps its first failure (and skips
    /// the ops after it) until the caller asks here, after each forward or backward.
    fn take_error(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Element size in bytes of activations in the arena (4 on the CPU, 2 for fp16 on the GPU).
    fn activation_bytes(&self) -> usize;
    /// Element size in bytes of BN saved statistics (4: f32 on both backends, 8 for f64 checks).
    fn stats_bytes(&self) -> usize;

    /// Names the graph node the ops that follow serve, with its output shape: the executor calls
    /// it before each node, so a profile can say which layer an op was. No cost by default.
    fn label(&mut self, _node: &str, _shape: Shape4) {}

    fn write(&mut self, t: View, data: &[f32]);
    fn read(&self, t: View) -> Vec<f32>;
    fn write_param(&mut self, p: ParamId, data: &[f32]);
    fn read_param(&self, p: ParamId) -> Vec<f32>;
    fn read_grad(&self, p: ParamId) -> Vec<f32>;

    fn conv2d_fwd(&mut self, x: View, w: ParamId, bias: Option<ParamId>, p: &ConvParams, y: View);
    /// Inference fusion of `conv2d_fwd` and the eval-mode `batchnorm_fwd_eval` (+ ReLU) that
    /// reads it: the BN becomes a per-channel scale and shift applied to each output tile
    /// (the conv epilogue), so the conv output never goes to memory. With a `residual`, also the
    /// block join after the BN: `y = relu(bn(conv(x)) + residual)` (`relu` is then true), as
    /// `add_relu_fwd` would compute it. Same result as the separate ops.
    fn conv2d_bn_fwd_eval(
        &mut self,
        x: View,
        conv: &ConvRefs,
        bn: &BnRefs,
        relu: bool,
        residual: Option<View>,
        y: View,
    );

    /// Whether [`Self::concat_conv_bn_fwd_eval`] runs: the executor then rewrites inference
    /// graphs with [`Graph::fuse_concat_conv`](crate::graph::Graph::fuse_concat_conv)
    /// ([`PlanOptions::graph_for_backend`](crate::graph::plan::PlanOptions::graph_for_backend)). The CPU
    /// backend does, where the head's 1x1 convolution is a tenth of the forward; the GPU keeps the
    /// concatenation.
    const SPLITS_CONCAT_CONV: bool = false;

    /// [`Op::ConcatConvBnEval`](crate::graph::Op::ConcatConvBnEval): `y = bn(conv1x1(concat(x[0],
    /// up(x[1]), ...)))` (+ ReLU), bilinear upsampling to `x[0]`'s size, eval-mode batch norm.
    /// Only called where [`Self::SPLITS_CONCAT_CONV`] is true.
    fn concat_conv_bn_fwd_eval(&mut self, xs: &[View], conv: &ConvRefs, bn: &BnRefs, relu: bool, y: View) {
        let _ = (xs, conv, bn, relu, y);
        unreachable!("concat_conv_bn_fwd_eval: this backend does not split the concatenated convolution")
    }

    /// Training fusion of `conv2d_fwd` and the training-mode batch norm that reads its output:
    /// writes `y` as `conv2d_fwd` does, and that BN's batch statistics into `saved` (`[mean;
    /// invstd]`, 2C f32) with its running statistics updated, as `batchnorm_fwd_train` would from
    /// `y`. The GPU computes them in the convolution's epilogue, so the BN never rereads `y` for
    /// them; the BN node then runs [`batchnorm_apply_saved`](Self::batchnorm_apply_saved).
    fn conv2d_fwd_bn_stats(&mut self, x: View, conv: &ConvRefs, y: View, bn: &BnRefs, saved: View);
    fn conv2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad);
    /// Weight gradient and, when the convolution has one, bias gradient.
    fn conv2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId, db: Option<ParamId>);
    fn conv_transpose2d_fwd(&mut self, x: View, w: ParamId, p: &ConvParams, y: View);
    fn conv_transpose2d_dgrad(&mut self, dy: View, w: ParamId, p: &ConvParams, dx: Grad);
    fn conv_transpose2d_wgrad(&mut self, x: View, dy: View, p: &ConvParams, dw: ParamId);

    /// Training forward: normalise with batch statistics, save `[mean; invstd]` (2C f32) in
    /// `saved`, update the running statistics; optionally ReLU.
    fn batchnorm_fwd_train(&mut self, x: View, bn: &BnRefs, relu: bool, y: View, saved: View);
    fn batchnorm_fwd_eval(&mut self, x: View, bn: &BnRefs, relu: bool, y: View);
    /// Normalise with the statistics in `saved` (no running update): the forward of a BN whose
    /// statistics came from its convolution ([`conv2d_fwd_bn_stats`](Self::conv2d_fwd_bn_stats)),
    /// and the rebuild of a training forward output that backward needs but the plan dropped.
    fn batchnorm_apply_saved(&mut self, x: View, bn: &BnRefs, relu: bool, saved: View, y: View);
    /// Input gradient plus gamma and beta gradients.
    fn batchnorm_bwd(&mut self, dy: View, x: View, bn: &BnRefs, relu: bool, saved: View, dx: Grad);
    /// Training fusion of a batch norm (no ReLU) and the residual join that is its only reader:
    /// `y = max(bn(x) + residual, 0)` with the batch statistics (saved, running update), as
    /// `batchnorm_fwd_train` then `add_relu_fwd` compute it.
    fn batchnorm_add_relu_fwd_train(&mut self, x: View, bn: &BnRefs, residual: View, y: View, saved: View);
    /// The same from the statistics in `saved` (computed by the convolution before it).
    fn batchnorm_add_relu_apply_saved(&mut self, x: View, bn: &BnRefs, residual: View, saved: View, y: View);
    /// Backward of the fused BN+add+ReLU: the ReLU mask from its output `join.y`; the BN input's
    /// gradient into `dx`, the residual's into `join.d_residual` (when it wants one), gamma and
    /// beta's.
    fn batchnorm_add_relu_bwd(
        &mut self,
        dy: View,
        x: View,
        bn: &BnRefs,
        saved: View,
        join: AddReluJoin<View, Grad>,
        dx: Grad,
    );

    fn relu_fwd(&mut self, x: View, y: View);
    fn relu_bwd(&mut self, y: View, dy: View, dx: Grad);
    fn add_fwd(&mut self, a: View, b: View, y: View);
    fn add_bwd(&mut self, dy: View, da: Option<Grad>, db: Option<Grad>);
    fn add_relu_fwd(&mut self, a: View, b: View, y: View);
    fn add_relu_bwd(&mut self, y: View, dy: View, da: Option<Grad>, db: Option<Grad>);

    fn upsample_fwd(&mut self, x: View, mode: UpsampleMode, y: View);
    fn upsample_bwd(&mut self, dy: View, mode: UpsampleMode, dx: Grad);
    fn concat_fwd(&mut self, xs: &[View], y: View);
    /// `widths[i]` is input i's channel count (inputs without a gradient still occupy theirs).
    fn concat_bwd(&mut self, dy: View, widths: &[usize], dxs: &[Option<Grad>]);
    fn maxpool_fwd(&mut self, x: View, p: &PoolParams, y: View);
    fn maxpool_bwd(&mut self, x: View, dy: View, p: &PoolParams, dx: Grad);
}
