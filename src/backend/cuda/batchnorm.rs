//! Launch wrappers of `kernels/batchnorm.cu`; CPU twins in `backend/cpu/batchnorm.rs`.
//!
//! Training statistics and the backward reductions are deterministic two-kernel reductions: a
//! fixed grid of (channel tile, row chunk) blocks (16-byte loads when channels come in 8s) writes per-chunk partials to a caller-provided
//! f32 `workspace` of [`bn_workspace_len`] elements, then one thread per channel merges them in
//! order. The workspace is an argument (the CPU twins have none) so that the executor can place
//! it in its arena and a training step allocates nothing; its size depends on the shape only, so
//! the planner can compute it without a GPU.
//!
//! Besides the CPU twins' BN and BN+ReLU, the `bn_add_relu_*` functions fuse the residual join of
//! ResNet blocks and HRNet fuse layers: `y = max(bn(x) + residual, 0)`. Their CPU reference is the
//! unfused pair `bn_*` (no ReLU) then `add_relu_fwd`.
use anyhow::{ensure, Context as _, Result};
use cudarc::driver::LaunchConfig;
use half::f16;

use super::{as_i32, grid_1d_shared};
use crate::backend::{AddReluJoin, BnGrads, BnParams, BnRunning, BnWeights, GradOut, Shape4};
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Channels per reduction block (`TILE_C` in the kernel) and row lanes per block (`ROW_LANES`).
const TILE_C: u32 = 32;
const ROW_LANES: u32 = 8;
/// Rows a reduction block should own at least, and the most row chunks: enough blocks to fill an
/// H100 at HRNet sizes, few enough partials that the per-channel merge stays cheap.
const ROWS_PER_CHUNK: usize = 128;
const MAX_CHUNKS: usize = 1024;

/// Row chunks of the scalar reduction grid for `m` rows: a function of the shape only, so the
/// summation order (and so every result bit) is the same on every GPU. (Not so for the statistics
/// of `conv::conv2d_fwd_bn_stats`, summarised per row tile of the GPU's chosen conv tile.)
fn chunks(m: usize) -> usize {
    m.div_ceil(ROWS_PER_CHUNK).clamp(1, MAX_CHUNKS)
}

/// The vector reduction path (`c % 8 == 0`, 16-byte aligned tensors): 256 threads per block as
/// `tile` groups of 8 channels (at most 32) times `lanes` rows, as `vec_layout` in the kernel.
const VEC_THREADS: usize = 256;
/// Rows each lane of a vector reduction block should own at least.
const VEC_ROWS_PER_LANE: usize = 8;

fn vec_layout(c: usize) -> (usize, usize) {
    let tile = (c / 8).min(32);
    (tile, VEC_THREADS / tile)
}

fn vec_chunks(xs: Shape4) -> usize {
    let (_, lanes) = vec_layout(xs.c);
    xs.pixels().div_ceil(lanes * VEC_ROWS_PER_LANE).clamp(1, MAX_CHUNKS)
}

/// Which reduction kernels run: the vector ones when channels come in 8s and every tensor they
/// read or write is 16-byte aligned.
#[derive(Clone, Copy)]
struct Reduction {
    vec: bool,
    chunks: usize,
    grid: LaunchConfig,
}

impl Reduction {
    fn new(xs: Shape4, ptrs: &[u64]) -> Reduction {
        if xs.c.is_multiple_of(8) && all_aligned_16(ptrs) {
            let (tile, _) = vec_layout(xs.c);
            let chunks = vec_chunks(xs);
            Reduction {
                vec: true,
                chunks,
                grid: LaunchConfig {
                    grid_dim: ((xs.c / 8).div_ceil(tile) as u32, chunks as u32, 1),
                    block_dim: (VEC_THREADS as u32, 1, 1),
                    shared_mem_bytes: 0,
                },
            }
        } else {
            Reduction {
                vec: false,
                chunks: chunks(xs.pixels()),
                grid: reduction_grid(xs),
            }
        }
    }
}

/// f32 elements of the workspace [`bn_fwd_train`] and [`bn_bwd`] need for activations of shape
/// `xs` (whichever reduction path runs).
pub fn bn_workspace_len(xs: Shape4) -> usize {
    let most = if xs.c.is_multiple_of(8) {
        chunks(xs.pixels()).max(vec_chunks(xs))
    } else {
        chunks(xs.pixels())
    };
    most * xs.c * 3 + 2 * xs.c
}

fn reduction_grid(xs: Shape4) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (xs.c.div_ceil(TILE_C as usize) as u32, chunks(xs.pixels()) as u32, 1),
        block_dim: (TILE_C, ROW_LANES, 1),
        shared_mem_bytes: 0,
    }
}

/// The finalize kernels: one block of `FINALIZE_THREADS` (128, as in the kernel) per channel.
fn finalize_grid(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The device views of a layer's gamma and beta (f32, C elements each) and its constants.
pub type DevBnWeights<'a> = BnWeights<DevSlice<'a, f32>>;

fn check(what: &str, x: &DevSlice<f16>, xs: Shape4, bn: &DevBnWeights, y_len: usize) -> Result<()> {
    ensure!(!xs.is_empty(), "{what}: empty activation {xs}");
    ensure!(x.len() == xs.len(), "{what}: x has {} elements, shape {xs}", x.len());
    ensure!(y_len == xs.len(), "{what}: output has {y_len} elements, shape {xs}");
    ensure!(
        bn.gamma.len() == xs.c && bn.beta.len() == xs.c,
        "{what}: gamma/beta have {}/{} elements for {} channels",
        bn.gamma.len(),
        bn.beta.len(),
        xs.c
    );
    Ok(())
}

/// The per-channel statistics a normalisation uses: batch `[mean; invstd]`, or running mean and
/// variance (eval, with the layer's `eps`).
enum Stats<'a> {
    Saved(DevSlice<'a, f32>),
    Running(BnRunning<DevSlice<'a, f32>>),
}

/// What follows the normalisation in [`apply`]: nothing, a ReLU, or the residual join
/// `max(. + residual, 0)` of the fused BN+add+ReLU.
#[derive(Clone, Copy)]
enum Then<'a> {
    Identity,
    Relu,
    AddRelu(DevSlice<'a, f16>),
}

impl Then<'_> {
    fn relu(relu: bool) -> Self {
        if relu {
            Then::Relu
        } else {
            Then::Identity
        }
    }
}

/// `y = act(x * scale + shift (+ residual))`, one pass over the activations.
fn apply(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: &DevBnWeights,
    stats: Stats,
    then: Then,
    y: DevSliceMut<f16>,
) -> Result<()> {
    let c = xs.c;
    let (mean, second, second_is_var, eps) = match stats {
        Stats::Saved(s) => {
            ensure!(
                s.len() == 2 * c,
                "batchnorm: saved has {} elements, want 2 x {c}",
                s.len()
            );
            (s.ptr(), s.sub(c, c).ptr(), 0i32, 0.0f32)
        }
        Stats::Running(BnRunning { mean, var }) => {
            ensure!(
                mean.len() == c && var.len() == c,
                "batchnorm: running stats have {}/{} elements for {c} channels",
                mean.len(),
                var.len()
            );
            (mean.ptr(), var.ptr(), 1i32, bn.params.eps)
        }
    };
    let (residual, relu) = match then {
        Then::Identity => (None, false),
        Then::Relu => (None, true),
        Then::AddRelu(r) => (Some(r), true),
    };
    let r = match residual {
        Some(r) => {
            ensure!(
                r.len() == xs.len(),
                "batchnorm: residual has {} elements, shape {xs}",
                r.len()
            );
            r.ptr()
        }
        None => 0,
    };
    let (xp, yp, gp, bp) = (x.ptr(), y.ptr(), bn.gamma.ptr(), bn.beta.ptr());
    let (n, ci, relu) = (xs.len() as i64, as_i32("channels", c)?, relu as i32);
    let vec = (c.is_multiple_of(8) && all_aligned_16(&[xp, yp, r])) as i32;
    let cfg = grid_1d_shared(gpu, xs.len(), 2 * c)?;
    let f = gpu.function("batchnorm_fwd_apply_f16")?;
    // SAFETY: x, y (and residual when non-null) cover n elements, gamma/beta/mean/second c floats;
    // arguments (const __half*, const float*, const float*, const float*, const float*, int,
    // float, const __half*, int, __half*, long long, int, int); 2c floats of shared memory.
    unsafe { launch!(gpu, f, cfg; xp, gp, bp, mean, second, second_is_var, eps, r, relu, yp, n, ci, vec) }?;
    Ok(())
}

/// Where the batch statistics of one BN layer are computed and go: the `workspace` the
/// per-chunk partial summaries are written to (at least [`bn_workspace_len`] floats for the
/// batch-norm wrappers, `conv::conv2d_bn_stats_workspace_len` for the convolution's epilogue;
/// overwritten), then `saved = [mean; invstd]` and the running statistics it updates.
pub struct StatsTargets<'a> {
    pub saved: DevSliceMut<'a, f32>,
    pub running: BnRunning<DevSliceMut<'a, f32>>,
    pub workspace: DevSliceMut<'a, f32>,
}

impl StatsTargets<'_> {
    /// Checks `saved` and the running statistics (each caller checks the workspace's length).
    pub(super) fn check(&self, c: usize) -> Result<()> {
        ensure!(
            self.saved.len() == 2 * c,
            "batchnorm: saved has {} elements, want 2 x {c}",
            self.saved.len()
        );
        ensure!(
            self.running.mean.len() == c && self.running.var.len() == c,
            "batchnorm: running stats have {}/{} elements for {c} channels",
            self.running.mean.len(),
            self.running.var.len()
        );
        Ok(())
    }
}

/// Merges the `chunks` per-chunk `(count, mean, M2)` summaries per channel in
/// `targets.workspace` (`partials[chunk][c][3]`) of `m` rows into `saved` and the running
/// statistics: the second kernel of the statistics here, and the only one after a convolution
/// whose epilogue wrote the partials (`conv::conv2d_fwd_bn_stats`).
pub(super) fn finalize_stats(
    gpu: &Gpu,
    m: usize,
    c: usize,
    chunks: usize,
    bp: BnParams,
    targets: &mut StatsTargets,
) -> Result<()> {
    targets.check(c)?;
    let (m, ci, nch) = (m as i64, as_i32("channels", c)?, as_i32("statistics chunks", chunks)?);
    let (partials, sp, rm, rv) = (
        targets.workspace.ptr(),
        targets.saved.ptr(),
        targets.running.mean.ptr(),
        targets.running.var.ptr(),
    );
    let f = gpu.function("batchnorm_stats_finalize_f32")?;
    // SAFETY: partials cover chunks*c*3 floats (the callers' workspace checks), saved 2c floats,
    // running stats c floats each (checked); arguments (const float*, long long, int, int, float,
    // float, float*, float*, float*).
    unsafe { launch!(gpu, f, finalize_grid(c); partials, m, ci, nch, bp.eps, bp.momentum, sp, rm, rv) }?;
    Ok(())
}

/// Batch statistics into `saved = [mean; invstd]` and the running-statistics update.
fn batch_stats(gpu: &Gpu, x: DevSlice<f16>, xs: Shape4, bp: BnParams, targets: &mut StatsTargets) -> Result<()> {
    let c = xs.c;
    targets.check(c)?;
    ensure!(
        targets.workspace.len() >= bn_workspace_len(xs),
        "batchnorm: workspace of {} floats, {xs} needs {}",
        targets.workspace.len(),
        bn_workspace_len(xs)
    );
    let (xp, wp) = (x.ptr(), targets.workspace.ptr());
    let red = Reduction::new(xs, &[xp]);
    let (m, ci, nch) = (xs.pixels() as i64, as_i32("channels", c)?, red.chunks as i32);
    let f = gpu.function(if red.vec {
        "batchnorm_stats_partial_vec_f16"
    } else {
        "batchnorm_stats_partial_f16"
    })?;
    // SAFETY: x covers m*c halves, the workspace chunks*c*3 floats (checked); arguments
    // (const __half*, long long, int, int, float*); the grid and block each kernel expects.
    unsafe { launch!(gpu, f, red.grid; xp, m, ci, nch, wp) }?;
    finalize_stats(gpu, xs.pixels(), c, red.chunks, bp, targets)
}

/// Training forward. Writes `y`, the batch statistics into `targets.saved = [mean; invstd]`
/// and updates the running statistics (with `bn.params`).
pub fn bn_fwd_train(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: DevBnWeights,
    relu: bool,
    y: DevSliceMut<f16>,
    mut targets: StatsTargets,
) -> Result<()> {
    check("bn_fwd_train", &x, xs, &bn, y.len())?;
    batch_stats(gpu, x, xs, bn.params, &mut targets)?;
    let saved = targets.saved.as_ref();
    apply(gpu, x, xs, &bn, Stats::Saved(saved), Then::relu(relu), y)
}

/// Recomputes the training output from saved statistics (used by backward instead of storing it).
pub fn bn_apply_saved(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: DevBnWeights,
    saved: DevSlice<f32>,
    relu: bool,
    y: DevSliceMut<f16>,
) -> Result<()> {
    check("bn_apply_saved", &x, xs, &bn, y.len())?;
    apply(gpu, x, xs, &bn, Stats::Saved(saved), Then::relu(relu), y)
}

/// Eval forward with the running statistics (and `bn.params.eps`).
pub fn bn_fwd_eval(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: DevBnWeights,
    running: BnRunning<DevSlice<f32>>,
    relu: bool,
    y: DevSliceMut<f16>,
) -> Result<()> {
    check("bn_fwd_eval", &x, xs, &bn, y.len())?;
    apply(gpu, x, xs, &bn, Stats::Running(running), Then::relu(relu), y)
}

/// Fused training forward of `y = max(bn(x) + residual, 0)`; statistics as [`bn_fwd_train`].
pub fn bn_add_relu_fwd_train(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: DevBnWeights,
    residual: DevSlice<f16>,
    y: DevSliceMut<f16>,
    mut targets: StatsTargets,
) -> Result<()> {
    check("bn_add_relu_fwd_train", &x, xs, &bn, y.len())?;
    batch_stats(gpu, x, xs, bn.params, &mut targets)?;
    let saved = targets.saved.as_ref();
    apply(gpu, x, xs, &bn, Stats::Saved(saved), Then::AddRelu(residual), y)
}

/// Fused `y = max(bn(x) + residual, 0)` from saved statistics.
pub fn bn_add_relu_apply_saved(
    gpu: &Gpu,
    x: DevSlice<f16>,
    xs: Shape4,
    bn: DevBnWeights,
    saved: DevSlice<f32>,
    residual: DevSlice<f16>,
    y: DevSliceMut<f16>,
) -> Result<()> {
    check("bn_add_relu_apply_saved", &x, xs, &bn, y.len())?;
    apply(gpu, x, xs, &bn, Stats::Saved(saved), Then::AddRelu(residual), y)
}

/// The training forward a backward differentiates: its input `x` of shape `xs`, the layer's
/// gamma and beta, and the `saved = [mean; invstd]` it wrote.
#[derive(Clone, Copy, Debug)]
pub struct BnForward<'a> {
    pub x: DevSlice<'a, f16>,
    pub xs: Shape4,
    pub bn: DevBnWeights<'a>,
    pub saved: DevSlice<'a, f32>,
}

/// Where a backward writes the gradient of gamma and beta (f32, C elements each).
pub type DevBnGrads<'a> = BnGrads<DevSliceMut<'a, f32>>;

/// Where the gradient reaching the normalised value is masked, and what else gets it.
struct Mask {
    /// ReLU recomputed from x (the CPU twin's fused ReLU).
    relu: bool,
    /// ReLU read from the stored output of a fused BN+add+ReLU (null: none).
    y_out: u64,
    /// The residual's gradient, written during the reduction pass (null: none), and whether to add.
    d_res: u64,
    accumulate_res: bool,
}

fn backward(
    gpu: &Gpu,
    dy: DevSlice<f16>,
    fwd: BnForward,
    mask: Mask,
    dx: GradOut<DevSliceMut<f16>>,
    grads: DevBnGrads,
    workspace: DevSliceMut<f32>,
) -> Result<()> {
    let BnForward { x, xs, bn, saved } = fwd;
    let BnGrads { dgamma, dbeta } = grads;
    let c = xs.c;
    ensure!(
        dy.len() == xs.len(),
        "batchnorm backward: dy has {} elements, shape {xs}",
        dy.len()
    );
    ensure!(
        saved.len() == 2 * c,
        "batchnorm backward: saved has {} elements, want 2 x {c}",
        saved.len()
    );
    ensure!(
        dgamma.len() == c && dbeta.len() == c,
        "batchnorm backward: dgamma/dbeta have {}/{} elements for {c} channels",
        dgamma.len(),
        dbeta.len()
    );
    ensure!(
        workspace.len() >= bn_workspace_len(xs),
        "batchnorm backward: workspace of {} floats, {xs} needs {}",
        workspace.len(),
        bn_workspace_len(xs)
    );
    let (dyp, xp, gp, bp, sp) = (dy.ptr(), x.ptr(), bn.gamma.ptr(), bn.beta.ptr(), saved.ptr());
    let (relu, acc_res, acc) = (mask.relu as i32, mask.accumulate_res as i32, dx.accumulate as i32);
    let (yo, dr) = (mask.y_out, mask.d_res);
    let red = Reduction::new(xs, &[dyp, xp, yo, dr]);
    let nch = red.chunks;
    let (m, n, ci, chunks_i) = (xs.pixels() as i64, xs.len() as i64, as_i32("channels", c)?, nch as i32);
    let partials = workspace.ptr();
    let coeffs = workspace.as_ref().sub(nch * c * 3, 2 * c).ptr();

    let f = gpu.function(if red.vec {
        "batchnorm_bwd_partial_vec_f16"
    } else {
        "batchnorm_bwd_partial_f16"
    })?;
    // SAFETY: dy, x (and y_out, d_res when non-null) cover m*c halves; gamma, beta c floats,
    // saved 2c, partials chunks*c*3 (checked); arguments (const __half*, const __half*,
    // const float*, const float*, const float*, int, const __half*, __half*, int, long long, int,
    // int, float*) for both kernels; the grid and block each expects.
    unsafe { launch!(gpu, f, red.grid; dyp, xp, gp, bp, sp, relu, yo, dr, acc_res, m, ci, chunks_i, partials) }?;
    let (dgp, dbp) = (dgamma.ptr(), dbeta.ptr());
    let f = gpu.function("batchnorm_bwd_finalize_f32")?;
    // SAFETY: partials as above, coeffs 2c floats after them, dgamma/dbeta c floats; arguments
    // (const float*, long long, int, int, float*, float*, float*).
    unsafe { launch!(gpu, f, finalize_grid(c); partials, m, ci, chunks_i, dgp, dbp, coeffs) }?;
    let dxp = dx.data.ptr();
    let vec = (c.is_multiple_of(8) && all_aligned_16(&[dyp, xp, dxp])) as i32;
    let cfg = grid_1d_shared(gpu, xs.len(), 6 * c)?;
    let f = gpu.function("batchnorm_bwd_dx_f16")?;
    // SAFETY: dy, x, dx (and y_out when non-null) cover n halves, the per-channel arrays c or 2c
    // floats; arguments (const __half*, const __half*, const float*, const float*, const float*,
    // int, const __half*, const float*, __half*, int, long long, int, int); 6c floats of shared.
    unsafe { launch!(gpu, f, cfg; dyp, xp, gp, bp, sp, relu, yo, coeffs, dxp, acc, n, ci, vec) }?;
    Ok(())
}

/// Backward of the training forward `fwd`: `dx (+)=`, `dgamma =`, `dbeta =` (see the CPU twin).
/// `workspace`: at least [`bn_workspace_len`] floats, overwritten.
pub fn bn_bwd(
    gpu: &Gpu,
    dy: DevSlice<f16>,
    fwd: BnForward,
    relu: bool,
    dx: GradOut<DevSliceMut<f16>>,
    grads: DevBnGrads,
    workspace: DevSliceMut<f32>,
) -> Result<()> {
    check("bn_bwd", &fwd.x, fwd.xs, &fwd.bn, dx.data.len())?;
    let mask = Mask {
        relu,
        y_out: 0,
        d_res: 0,
        accumulate_res: false,
    };
    backward(gpu, dy, fwd, mask, dx, grads, workspace)
}

/// Backward of [`bn_add_relu_fwd_train`]: the ReLU mask comes from the join's output `join.y`;
/// the residual's gradient `join.d_residual` (when it wants one) is written in the same pass.
pub fn bn_add_relu_bwd(
    gpu: &Gpu,
    dy: DevSlice<f16>,
    fwd: BnForward,
    join: AddReluJoin<DevSlice<f16>, GradOut<DevSliceMut<f16>>>,
    dx: GradOut<DevSliceMut<f16>>,
    grads: DevBnGrads,
    workspace: DevSliceMut<f32>,
) -> Result<()> {
    let xs = fwd.xs;
    check("bn_add_relu_bwd", &fwd.x, xs, &fwd.bn, dx.data.len())?;
    ensure!(
        join.y.len() == xs.len(),
        "bn_add_relu_bwd: y has {} elements, shape {xs}",
        join.y.len()
    );
    let (d_res, accumulate_res) = match &join.d_residual {
        Some(d) => {
            ensure!(
                d.data.len() == xs.len(),
                "bn_add_relu_bwd: d_residual has {} elements, shape {xs}",
                d.data.len()
            );
            (d.data.ptr(), d.accumulate)
        }
        None => (0, false),
    };
    let mask = Mask {
        relu: false,
        y_out: join.y.ptr(),
        d_res,
        accumulate_res,
    };
    backward(gpu, dy, fwd, mask, dx, grads, workspace)
}

/// The eval-mode batch norm as `scale`/`shift` per channel for a convolution epilogue, with the
/// convolution's `bias` folded into `shift` when it has one. Twin of
/// [`cpu::batchnorm::bn_eval_affine`](crate::backend::cpu::batchnorm::bn_eval_affine) (plus the bias fold).
pub fn bn_eval_affine(
    gpu: &Gpu,
    bn: DevBnWeights,
    running: BnRunning<DevSlice<f32>>,
    bias: Option<DevSlice<f32>>,
    scale: DevSliceMut<f32>,
    shift: DevSliceMut<f32>,
) -> Result<()> {
    let c = bn.gamma.len();
    let lens = [
        bn.beta.len(),
        running.mean.len(),
        running.var.len(),
        scale.len(),
        shift.len(),
    ];
    ensure!(
        lens.iter().all(|&l| l == c) && bias.as_ref().is_none_or(|b| b.len() == c),
        "bn_eval_affine: {c} channels but parameter lengths {lens:?}"
    );
    let f = gpu.function("batchnorm_eval_affine_f32")?;
    let bias_ptr = bias.map_or(0u64, |b| b.ptr());
    let (gp, bp_, mp, vp, sp, tp) = (
        bn.gamma.ptr(),
        bn.beta.ptr(),
        running.mean.ptr(),
        running.var.ptr(),
        scale.ptr(),
        shift.ptr(),
    );
    let ci = as_i32("channels", c)?;
    // SAFETY: (gamma, beta, running_mean, running_var, bias or null, eps f32, c i32, scale, shift):
    // five f32 views of c elements and an optional sixth (checked); the kernel writes scale and
    // shift only, which the caller holds mutably.
    unsafe { launch!(gpu, f, gpu.grid_1d(c); gp, bp_, mp, vp, bias_ptr, bn.params.eps, ci, sp, tp) }
        .context("launching batchnorm_eval_affine_f32")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_grid_depends_on_the_shape_only_and_caps_its_chunks() {
        assert_eq!(chunks(1), 1);
        assert_eq!(chunks(ROWS_PER_CHUNK), 1);
        assert_eq!(chunks(ROWS_PER_CHUNK + 1), 2);
        // HRNet-W32 branch 1 at 768 x 768, batch 4: 147456 rows, so the cap applies.
        assert_eq!(chunks(4 * 192 * 192), MAX_CHUNKS);
        let xs = Shape4::new(4, 192, 192, 32);
        assert_eq!(bn_workspace_len(xs), MAX_CHUNKS * 32 * 3 + 2 * 32);
        let g = reduction_grid(Shape4::new(2, 5, 7, 36));
        assert_eq!(g.grid_dim, (2, 1, 1));
        assert_eq!(g.block_dim, (TILE_C, ROW_LANES, 1));
    }
}
