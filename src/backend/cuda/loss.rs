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
//! The CPU twins return the loss; here the workspace and the loss buffer are extra arguments at the
//! end, so that the executor can place both in its arena and a step allocates nothing.
use anyhow::{ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::f16;

use super::{as_i32, read_scalar};
use crate::backend::{AWingParams, HeatmapShape, WeightMap};
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

/// The device views every loss takes, checked against `shape`.
struct Common<'a> {
    pred: DevSlice<'a, f16>,
    target: DevSlice<'a, f32>,
    channel_weights: DevSlice<'a, f32>,
    shape: HeatmapShape,
    weight_map: Option<WeightMap>,
    grad_scale: f32,
}

fn check(
    what: &str,
    c: &Common,
    grad: &DevSliceMut<f16>,
    workspace: &DevSliceMut<f64>,
    loss: &DevSliceMut<f64>,
) -> Result<()> {
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
        c.channel_weights.len() == s.k,
        "{what}: {} channel weights for {} landmark channels",
        c.channel_weights.len(),
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
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&workspace)
            .arg(&count)
            .arg(&total)
            .arg(&loss)
            .launch(cfg)
    }?;
    Ok(())
}

/// Adaptive Wing loss (docs/maths.md#adaptive-wing-loss), weighted per landmark channel and
/// optionally by the weight map. Writes `grad = f16(d loss / d pred * grad_scale)` and leaves the
/// mean loss in `loss[0]` (read it with [`read_loss`]); `workspace` holds [`loss_workspace_len`]
/// doubles.
#[allow(clippy::too_many_arguments)] // the CPU twin's arguments, plus the device buffers
pub fn awing_fwd_bwd(
    gpu: &Gpu,
    pred: DevSlice<f16>,
    target: DevSlice<f32>,
    channel_weights: DevSlice<f32>,
    shape: HeatmapShape,
    params: AWingParams,
    weight_map: Option<WeightMap>,
    grad_scale: f32,
    grad: DevSliceMut<f16>,
    workspace: DevSliceMut<f64>,
    loss: DevSliceMut<f64>,
) -> Result<()> {
    let c = Common {
        pred,
        target,
        channel_weights,
        shape,
        weight_map,
        grad_scale,
    };
    check("awing_fwd_bwd", &c, &grad, &workspace, &loss)?;
    let (n, h, w, k) = dims(shape)?;
    let (use_map, map_w, map_threshold) = map_args(c.weight_map);
    let (pp, tp, cwp, gp, wsp) = (
        c.pred.ptr(),
        c.target.ptr(),
        c.channel_weights.ptr(),
        grad.ptr(),
        workspace.ptr(),
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
        gpu.stream()
            .launch_builder(&f)
            .arg(&pp)
            .arg(&tp)
            .arg(&cwp)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&k)
            .arg(&alpha)
            .arg(&omega)
            .arg(&eps)
            .arg(&theta)
            .arg(&use_map)
            .arg(&map_w)
            .arg(&map_threshold)
            .arg(&c.grad_scale)
            .arg(&gp)
            .arg(&wsp)
            .launch(fwd_bwd_grid(shape))
    }?;
    sum_partials(gpu, shape, wsp, loss.ptr())
}

/// Heatmap mean squared error with the same weighting, gradient convention and outputs as
/// [`awing_fwd_bwd`].
#[allow(clippy::too_many_arguments)] // the CPU twin's arguments, plus the device buffers
pub fn mse_fwd_bwd(
    gpu: &Gpu,
    pred: DevSlice<f16>,
    target: DevSlice<f32>,
    channel_weights: DevSlice<f32>,
    shape: HeatmapShape,
    weight_map: Option<WeightMap>,
    grad_scale: f32,
    grad: DevSliceMut<f16>,
    workspace: DevSliceMut<f64>,
    loss: DevSliceMut<f64>,
) -> Result<()> {
    let c = Common {
        pred,
        target,
        channel_weights,
        shape,
        weight_map,
        grad_scale,
    };
    check("mse_fwd_bwd", &c, &grad, &workspace, &loss)?;
    let (n, h, w, k) = dims(shape)?;
    let (use_map, map_w, map_threshold) = map_args(c.weight_map);
    let (pp, tp, cwp, gp, wsp) = (
        c.pred.ptr(),
        c.target.ptr(),
        c.channel_weights.ptr(),
        grad.ptr(),
        workspace.ptr(),
    );
    let f = gpu.function("loss_mse_fwd_bwd_f16")?;
    // SAFETY: as in awing_fwd_bwd; arguments (const __half* pred, const float* target,
    // const float* channel_weights, int n, int h, int w, int k, int use_weight_map, float map_w,
    // float map_threshold, float grad_scale, __half* grad, double* partials).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&pp)
            .arg(&tp)
            .arg(&cwp)
            .arg(&n)
            .arg(&h)
            .arg(&w)
            .arg(&k)
            .arg(&use_map)
            .arg(&map_w)
            .arg(&map_threshold)
            .arg(&c.grad_scale)
            .arg(&gp)
            .arg(&wsp)
            .launch(fwd_bwd_grid(shape))
    }?;
    sum_partials(gpu, shape, wsp, loss.ptr())
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
