//! Launch wrappers of `kernels/loss.cu`; CPU twins in `backend/cpu/loss.rs`.
//!
//! Each loss is two launches: the fused loss-and-gradient kernel, whose blocks write one f64
//! partial sum each into a caller-provided `workspace` of [`loss_workspace_len`] elements, then one
//! block that adds the partials in a fixed order and divides by the element count. The grid is a
//! function of the shape only (never of the GPU's size), so the summation order is too: the loss
//! value is bitwise reproducible run to run, and GPUs with different SM counts running the same
//! machine code agree to the bit. The value stays on the device in `loss` (one f64): the step queues
//! the rest of its work without waiting, and [`read_loss`] fetches it when the host needs it.
//!
//! The CPU twins return the loss and take the gradient's slice; here the gradient, the workspace
//! and the loss buffer are one [`LossOutputs`] argument at the end, so that the executor can place
//! them all in its arena and a step allocates nothing.
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;
use half::f16;

use super::{as_i32, read_scalar};
use crate::backend::{AWingParams, HeatmapBatch, HeatmapShape, LossWeighting, WeightMap};
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Threads per block of every loss kernel (`LOSS_BLOCK` in the kernel, whose fixed-order block
/// reduction assumes exactly this many).
const LOSS_BLOCK: usize = 256;
/// The most blocks (and so partials): enough to fill an H100 for a 4x192x192x29 batch, few enough
/// that the one-block final sum is negligible.
const MAX_BLOCKS: usize = 1024;

/// Blocks of the loss kernels for `shape`: `ceil(len / 256)` capped at [`MAX_BLOCKS`].
fn blocks(shape: HeatmapShape) -> usize {
    shape.len().div_ceil(LOSS_BLOCK).clamp(1, MAX_BLOCKS)
}

/// f64 elements of the workspace [`awing_fwd_bwd`] and [`mse_fwd_bwd`] need for heatmaps of
/// `shape`: one partial sum per block.
pub fn loss_workspace_len(shape: HeatmapShape) -> usize {
    blocks(shape)
}

/// Where a loss writes: `grad = f16(d loss / d pred * grad_scale)` (the predictions' shape), the
/// per-block partial sums (`workspace`, at least [`loss_workspace_len`] doubles) and the mean loss
/// (`loss`, one double).
pub struct LossOutputs<'a> {
    pub grad: DevSliceMut<'a, f16>,
    pub workspace: DevSliceMut<'a, f64>,
    pub loss: DevSliceMut<'a, f64>,
}

/// A batch of fp16 predictions and f32 targets on the device.
pub type DevHeatmapBatch<'a> = HeatmapBatch<DevSlice<'a, f16>, DevSlice<'a, f32>>;

/// Checks the device views every loss takes against the batch's shape.
fn check(what: &str, c: &DevHeatmapBatch, weighting: &LossWeighting<DevSlice<f32>>, out: &LossOutputs) -> Result<()> {
    let LossOutputs { grad, workspace, loss } = out;
    let (s, len) = (c.shape, c.shape.len());
    // The CPU twin returns 0 for an empty batch; the kernel would divide 0 by 0.
    ensure!(!s.is_empty(), "{what}: empty heatmap batch {s:?}");
    ensure!(
        c.pred.len() == len,
        "{what}: pred has {} elements, shape {s:?}",
        c.pred.len()
    );
    ensure!(
        c.target.len() == len,
        "{what}: target has {} elements, shape {s:?}",
        c.target.len()
    );
    ensure!(
        grad.len() == len,
        "{what}: grad has {} elements, shape {s:?}",
        grad.len()
    );
    ensure!(
        weighting.channel_weights.len() == s.k,
        "{what}: {} channel weights for {} landmark channels",
        weighting.channel_weights.len(),
        s.k
    );
    ensure!(
        workspace.len() >= loss_workspace_len(s),
        "{what}: workspace of {} doubles, {s:?} needs {}",
        workspace.len(),
        loss_workspace_len(s)
    );
    ensure!(
        loss.len() == 1,
        "{what}: the loss buffer has {} elements, want 1",
        loss.len()
    );
    Ok(())
}

/// The shape as the kernels' four `int`s.
fn dims(s: HeatmapShape) -> Result<(i32, i32, i32, i32)> {
    Ok((
        as_i32("n", s.n)?,
        as_i32("h", s.h)?,
        as_i32("w", s.w)?,
        as_i32("k", s.k)?,
    ))
}

/// The kernels' `(use_weight_map, map_w, map_threshold)`.
fn map_args(m: Option<WeightMap>) -> (i32, f32, f32) {
    match m {
        Some(m) => (1, m.w, m.threshold),
        None => (0, 0.0, 0.0),
    }
}

fn fwd_bwd_grid(shape: HeatmapShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(shape) as u32, 1, 1),
        block_dim: (LOSS_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `loss[0] = sum(partials[..count]) / len`, one block.
fn sum_partials(gpu: &Gpu, shape: HeatmapShape, workspace: u64, loss: u64) -> Result<()> {
    let count = blocks(shape) as i32;
    let total = shape.len() as i64;
    let f = gpu.function("loss_sum_partials_f64")?;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (LOSS_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the workspace holds `count` doubles written by the loss kernel just queued on this
    // stream, loss one double (both checked); arguments (const double*, int, long long, double*).
    unsafe { launch!(gpu, f, cfg; workspace, count, total, loss) }?;
    Ok(())
}

/// Adaptive Wing loss (docs/maths.md#adaptive-wing-loss) of `batch`, weighted per landmark
/// channel and optionally by the weight map (`weighting`). Writes
/// `out.grad = f16(d loss / d pred * grad_scale)` and leaves the mean loss in `out.loss[0]` (read
/// it with [`read_loss`]).
pub fn awing_fwd_bwd(
    gpu: &Gpu,
    batch: DevHeatmapBatch,
    weighting: LossWeighting<DevSlice<f32>>,
    params: AWingParams,
    grad_scale: f32,
    out: LossOutputs,
) -> Result<()> {
    check("awing_fwd_bwd", &batch, &weighting, &out)?;
    let shape = batch.shape;
    let (n, h, w, k) = dims(shape)?;
    let (use_map, map_w, map_threshold) = map_args(weighting.weight_map);
    let (pp, tp, cwp, gp, wsp) = (
        batch.pred.ptr(),
        batch.target.ptr(),
        weighting.channel_weights.ptr(),
        out.grad.ptr(),
        out.workspace.ptr(),
    );
    let AWingParams {
        alpha,
        omega,
        eps,
        theta,
    } = params;
    let f = gpu.function("loss_awing_fwd_bwd_f16")?;
    // SAFETY: pred, target and grad cover n*h*w*k elements, channel_weights k floats, the
    // workspace one double per block (all checked); arguments (const __half* pred,
    // const float* target, const float* channel_weights, int n, int h, int w, int k, float alpha,
    // float omega, float eps, float theta, int use_weight_map, float map_w, float map_threshold,
    // float grad_scale, __half* grad, double* partials); LOSS_BLOCK threads per block.
    unsafe {
        launch!(gpu, f, fwd_bwd_grid(shape);
            pp, tp, cwp, n, h, w, k, alpha, omega, eps, theta, use_map, map_w, map_threshold, grad_scale, gp, wsp)
    }?;
    sum_partials(gpu, shape, wsp, out.loss.ptr())
}

/// Heatmap mean squared error with the same weighting, gradient convention and outputs as
/// [`awing_fwd_bwd`].
pub fn mse_fwd_bwd(
    gpu: &Gpu,
    batch: DevHeatmapBatch,
    weighting: LossWeighting<DevSlice<f32>>,
    grad_scale: f32,
    out: LossOutputs,
) -> Result<()> {
    check("mse_fwd_bwd", &batch, &weighting, &out)?;
    let shape = batch.shape;
    let (n, h, w, k) = dims(shape)?;
    let (use_map, map_w, map_threshold) = map_args(weighting.weight_map);
    let (pp, tp, cwp, gp, wsp) = (
        batch.pred.ptr(),
        batch.target.ptr(),
        weighting.channel_weights.ptr(),
        out.grad.ptr(),
        out.workspace.ptr(),
    );
    let f = gpu.function("loss_mse_fwd_bwd_f16")?;
    // SAFETY: as in awing_fwd_bwd; arguments (const __half* pred, const float* target,
    // const float* channel_weights, int n, int h, int w, int k, int use_weight_map, float map_w,
    // float map_threshold, float grad_scale, __half* grad, double* partials).
    unsafe {
        launch!(gpu, f, fwd_bwd_grid(shape);
            pp, tp, cwp, n, h, w, k, use_map, map_w, map_threshold, grad_scale, gp, wsp)
    }?;
    sum_partials(gpu, shape, wsp, out.loss.ptr())
}

/// The loss value a loss wrapper left in `loss` (one f64). Waits for the GPU's stream.
pub fn read_loss(gpu: &Gpu, loss: DevSlice<f64>) -> Result<f64> {
    read_scalar(gpu, "read_loss", loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_grid_depends_on_the_shape_only_and_caps_its_blocks() {
        let shape = |n, h, w, k| HeatmapShape { n, h, w, k };
        assert_eq!(loss_workspace_len(shape(1, 1, 1, 1)), 1);
        assert_eq!(loss_workspace_len(shape(1, 7, 9, 5)), 2); // 315 elements
        assert_eq!(loss_workspace_len(shape(1, 16, 16, 1)), 1); // exactly one block
        assert_eq!(loss_workspace_len(shape(4, 192, 192, 29)), MAX_BLOCKS);
        let g = fwd_bwd_grid(shape(1, 7, 9, 5));
        assert_eq!(g.grid_dim, (2, 1, 1));
        assert_eq!(g.block_dim, (LOSS_BLOCK as u32, 1, 1));
    }

    #[test]
    fn weight_map_arguments() {
        assert_eq!(map_args(None), (0, 0.0, 0.0));
        assert_eq!(map_args(Some(WeightMap::default())), (1, 10.0, 0.2));
    }
}
