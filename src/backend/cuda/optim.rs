//! Launch wrappers of `kernels/optim.cu`; CPU twins in `backend/cpu/optim.rs`.
//!
//! Where a CPU twin returns a value, the wrapper leaves it on the device instead, so that work can
//! be queued behind it without waiting: the finite check sets an `int` flag ([`read_flag`] gives
//! the twin's "all finite"). The training step (`train::cuda_engine`) queues the unscale and finite
//! check, waits once for the flag, then queues AdamW.
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;
use half::f16;

use super::{read_scalar, zero_async};
use crate::backend::{AdamWChunk, AdamWParams, AdamWState, AdamWTensor};
use crate::gpu::{DevSlice, DevSliceMut, DeviceBuffer, Gpu};

/// Threads per block of every optimizer kernel (`OPTIM_BLOCK`).
const OPTIM_BLOCK: usize = 256;
/// The most blocks of a launch.
const MAX_BLOCKS: usize = 1024;

/// `ceil(n / 256)` blocks capped at [`MAX_BLOCKS`]: the kernels' suggested grid, a function of `n`
/// only, so a launch cannot differ between GPUs.
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(OPTIM_BLOCK).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (OPTIM_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_flag(what: &str, nonfinite: &DevSliceMut<i32>) -> Result<()> {
    ensure!(
        nonfinite.len() == 1,
        "{what}: the non-finite flag has {} elements, want 1",
        nonfinite.len()
    );
    Ok(())
}

/// `grads[i] *= inv_scale` in place. Zeroes `nonfinite` first, then sets it when any result is
/// inf or NaN: after the call it answers for this tensor alone, as the CPU twin's return value
/// does. Use one flag per call (or one call over a contiguous gradient region) when a step checks
/// several tensors, since the next call clears it.
pub fn unscale_and_check(
    gpu: &Gpu,
    grads: DevSliceMut<f32>,
    inv_scale: f32,
    mut nonfinite: DevSliceMut<i32>,
) -> Result<()> {
    check_flag("unscale_and_check", &nonfinite)?;
    zero_async(gpu, &mut nonfinite)?;
    let (gp, n, fp) = (grads.ptr(), grads.len() as i64, nonfinite.ptr());
    let cfg = grid(grads.len());
    let f = gpu.function("optim_unscale_check_f32")?;
    // SAFETY: grads covers n floats, the flag one int (checked); arguments (float* grads,
    // long long n, float inv_scale, int* nonfinite).
    unsafe { launch!(gpu, f, cfg; gp, n, inv_scale, fp) }?;
    Ok(())
}

/// True when the unscale that last wrote `nonfinite` found every value finite (the CPU twins'
/// return value). Waits for the GPU's stream.
pub fn read_flag(gpu: &Gpu, nonfinite: DevSlice<i32>) -> Result<bool> {
    Ok(read_scalar(gpu, "read_flag", nonfinite)? == 0)
}

/// One AdamW step on one parameter tensor (docs/maths.md#adamw), as the CPU twin `adamw_step`:
/// updates `state.master`, `state.m` and `state.v` in place and, when given, writes the updated
/// weights rounded to fp16 into `state.half_copy`. `decay == false` means weight decay 0 (BN parameters and biases);
/// `grad_mul` multiplies each gradient as it is read (training passes 1). It runs [`adamw_step_chunks`]
/// with a table of this one tensor, made and uploaded per call: for tests and one-off updates;
/// training makes the table of all its tensors once.
pub fn adamw_step(
    gpu: &Gpu,
    state: AdamWState<DevSliceMut<f32>, DevSliceMut<f16>>,
    grad: DevSlice<f32>,
    hp: &AdamWParams,
    t: u64,
    decay: bool,
    grad_mul: f32,
) -> Result<()> {
    let n = state.master.len();
    ensure!(
        grad.len() == n && state.m.len() == n && state.v.len() == n,
        "adamw_step: master, grad, m and v have {n}, {}, {} and {} elements",
        grad.len(),
        state.m.len(),
        state.v.len()
    );
    if let Some(h) = &state.half_copy {
        ensure!(
            h.len() == n,
            "adamw_step: fp16 copy has {} elements, master {n}",
            h.len()
        );
    }
    let tensor = AdamWTensor {
        value_at: 0,
        grad_at: 0,
        len: n,
        decay,
    };
    let table = AdamWChunkTable::new(gpu, &AdamWChunk::table(&[tensor]))?;
    adamw_step_chunks(gpu, state, grad, &table, hp, t, grad_mul)
}

/// A whole-model AdamW chunk table ([`AdamWChunk::table`]) on the device, made once per training
/// run: the layout of the parameters does not change between steps.
pub struct AdamWChunkTable {
    /// The chunks as the kernel reads them, three 64-bit words each (`AdamWChunk` is 24 bytes).
    words: DeviceBuffer<u64>,
    count: usize,
    /// One past the last element the chunks touch in the value regions and the gradient region.
    extents: (usize, usize),
}

impl AdamWChunkTable {
    pub fn new(gpu: &Gpu, chunks: &[AdamWChunk]) -> Result<Self> {
        ensure!(
            chunks.len() <= i32::MAX as usize,
            "adamw chunk table: {} chunks do not fit the kernel's int count",
            chunks.len()
        );
        let words: &[u64] = bytemuck::cast_slice(chunks);
        Ok(Self {
            // One word even when empty: a device buffer cannot be empty.
            words: DeviceBuffer::from_host(gpu, if words.is_empty() { &[0] } else { words })?,
            count: chunks.len(),
            extents: AdamWChunk::extents(chunks),
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// AdamW on every tensor of a model in one launch: the update of [`adamw_step`] on each chunk of
/// `chunks`, with `state` (master, m, v and the fp16 copy) the whole value regions (element for
/// element) and `grad` the whole gradient region. Equal to one [`adamw_step`] per tensor, to the bit (the
/// same kernel); elements no chunk names are left as they are.
pub fn adamw_step_chunks(
    gpu: &Gpu,
    state: AdamWState<DevSliceMut<f32>, DevSliceMut<f16>>,
    grad: DevSlice<f32>,
    chunks: &AdamWChunkTable,
    hp: &AdamWParams,
    t: u64,
    grad_mul: f32,
) -> Result<()> {
    let AdamWState {
        master,
        m,
        v,
        half_copy,
    } = state;
    let (values, grads) = chunks.extents;
    let half_len = half_copy.as_ref().map_or(values, |h| h.len());
    ensure!(
        master.len() >= values && m.len() >= values && v.len() >= values && half_len >= values && grad.len() >= grads,
        "adamw_step_chunks: the chunks reach element {values} of the values and {grads} of the gradients, but \
         master, m, v, the fp16 copy and grad have {}, {}, {}, {half_len} and {}",
        master.len(),
        m.len(),
        v.len(),
        grad.len()
    );
    ensure!(t >= 1, "adamw_step_chunks: steps count from 1, got t = 0");
    if chunks.is_empty() {
        return Ok(());
    }
    let (bias_corr1, bias_corr2) = hp.bias_corrections(t);
    let (wp, gp, mp, vp) = (master.ptr(), grad.ptr(), m.ptr(), v.ptr());
    let hp16 = half_copy.as_ref().map_or(0, |h| h.ptr());
    let cp = chunks.words.slice().ptr();
    let count = chunks.count as i32;
    let f = gpu.function("optim_adamw_chunks_f32")?;
    let cfg = LaunchConfig {
        grid_dim: (chunks.count as u32, 1, 1),
        block_dim: (OPTIM_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every chunk lies inside master, m, v, half_copy (when non-null) and grad (the table's
    // extents, checked above; the table is immutable after `new`); arguments (float* master,
    // const float* grad, float* m, float* v, __half* half_copy, const AdamWChunk* chunks, int count,
    // float lr, float beta1, float beta2, float eps, float weight_decay, float bias_corr1,
    // float bias_corr2, float grad_mul); any 1-D grid is correct, one block per chunk here.
    unsafe {
        launch!(gpu, f, cfg;
            wp, gp, mp, vp, hp16, cp, count, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, bias_corr1, bias_corr2,
            grad_mul)
    }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_depends_on_the_length_only_and_caps_its_blocks() {
        let blocks = |n| grid(n).grid_dim.0 as usize;
        assert_eq!((blocks(0), blocks(1), blocks(256), blocks(257)), (1, 1, 1, 2));
        assert_eq!(blocks(9_600_000), MAX_BLOCKS);
        assert_eq!(grid(1000).block_dim, (OPTIM_BLOCK as u32, 1, 1));
    }
}
