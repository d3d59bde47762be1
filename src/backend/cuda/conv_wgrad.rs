//! Launch wrappers of `kernels/conv_wgrad.cu`: the weight (and bias) gradient of the convolution
//! and of the transposed convolution, on tensor cores. CPU twins: `conv2d_wgrad`,
//! `conv2d_bias_grad` and `conv_transpose2d_wgrad` in `backend/cpu/conv.rs`.
//!
//! The weight gradient is the GEMM `dW[c_out x kh*kw*c_in] = dy^T * patches` over all output
//! pixels (K = batch*P*Q, 147456 at HRNet-W32's top branch at 768x768 batch 4), while dW itself is
//! small (32 x 288 there: three 32x128 tiles). So the pixels are split ("split-K"): each of
//! `splits` CTA slices writes its fp32 partial dW into the caller's `workspace`, and a second
//! kernel adds the splits into `dw` in split order. A [`WgradPlan`] (tile shape, splits) is a
//! function of the convolution's shape only, never of the GPU, so the summation order, and with it
//! every bit of the result, is the same on every run and every GPU (the vector and scalar loaders
//! fill the same shared tiles and give the same bits too).
//!
//! Gradients are f32: the optimizer's fp32 master weights read them. The loss scale is already in
//! `dy`; nothing here unscales.
use anyhow::{ensure, Context as _, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::LaunchConfig;
use half::f16;

use super::as_i32;
use crate::backend::{ConvParams, Shape4};
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Pixels per pipeline stage (`WG_BK` in the kernel).
const BK: usize = 32;
/// The GPU the plans are tuned for: an H100's 132 SMs. The plan stays a function of the shape
/// only (see the module docs); on a smaller GPU (an RTX 3070 Ti has 48 SMs) the same launches just
/// run in more waves.
const REFERENCE_SMS: usize = 132;
/// Fewest pipeline stages (of 32 pixels) a split should own: below that the partial tile's write
/// and re-read cost more than the split gains.
const MIN_STEPS_PER_SPLIT: usize = 16;
/// Bound on the split-K partials: `splits * c_out * kh*kw*c_in` f32 stay under 8 Mi floats
/// (32 MiB), whatever the shape (the splits are cut to fit, down to one, which needs none).
const MAX_PARTIAL_FLOATS: usize = 8 << 20;
/// Bias gradient: rows per chunk at least, and at most this many chunks, so its partials are at
/// most `128 * c_out` floats.
const BIAS_ROWS_PER_CHUNK: usize = 1024;
const BIAS_MAX_CHUNKS: usize = 128;

/// Split lanes per element of the reduction kernel (`WG_RED_LANES`).
const REDUCE_LANES: u32 = 8;

/// The CTA tile shapes of the kernel's entry points (`conv_wgrad_t<BM>x<BN>[_vec]_f16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// 128 x 128, 8 warps of 64 x 32: c_out >= 128.
    T128x128,
    /// 64 x 128, 8 warps of 32 x 64 over two k halves. No default plan picks it (64 x 64 was
    /// faster wherever it could be); kept for explicit plans and comparisons.
    T64x128,
    /// 32 x 128, 4 warps of 32 x 64 over two k halves: c_out 32 (HRNet's top branch).
    T32x128,
    /// 64 x 64, 4 warps of 32 x 32: c_out 64, short patch rows (1x1 of <= 64 channels, 7x7 on one
    /// channel), and layers with too few pixels for bigger tiles.
    T64x64,
    /// 64 x 16, 4 warps of 32 x 16 over two k halves: 3x3 on one channel (N = 9), and the smallest
    /// layers.
    T64x16,
}

impl Tile {
    pub const ALL: [Tile; 5] = [Tile::T128x128, Tile::T64x128, Tile::T32x128, Tile::T64x64, Tile::T64x16];

    /// (BM, BN, threads, pipeline stages, k-split warp groups), as in the kernel's entry points.
    const fn dims(self) -> (usize, usize, usize, usize, usize) {
        match self {
            Tile::T128x128 => (128, 128, 256, 3, 1),
            Tile::T64x128 => (64, 128, 256, 3, 2),
            Tile::T32x128 => (32, 128, 128, 3, 2),
            Tile::T64x64 => (64, 64, 128, 3, 1),
            Tile::T64x16 => (64, 16, 128, 3, 2),
        }
    }

    pub const fn bm(self) -> usize {
        self.dims().0
    }

    pub const fn bn(self) -> usize {
        self.dims().1
    }

    /// Dynamic shared memory of the kernel (`wgrad_smem_bytes` in conv_wgrad.cu): the padded
    /// pipeline stages or the fp32 tile that adds the k halves, then the scalar column table.
    pub const fn smem_bytes(self) -> usize {
        let (bm, bn, _, stages, warps_k) = self.dims();
        let pipeline = stages * BK * ((bm + 8) + (bn + 8)) * 2;
        let reduce = if warps_k > 1 { bm * bn * 4 } else { 0 };
        (if pipeline > reduce { pipeline } else { reduce }) + bn * 8
    }

    /// The entry point for this tile with dy (`vec_a`) and x (`vec_b`) loaded by 16-byte copies
    /// or element by element. The 256-thread tiles have no mixed variants: they fall back to
    /// scalar loads of both (the bits are the same either way).
    fn kernel(self, vec_a: bool, vec_b: bool) -> &'static str {
        match (self, vec_a, vec_b) {
            (Tile::T128x128, true, true) => "conv_wgrad_t128x128_vec_f16",
            (Tile::T128x128, _, _) => "conv_wgrad_t128x128_f16",
            (Tile::T64x128, true, true) => "conv_wgrad_t64x128_vec_f16",
            (Tile::T64x128, _, _) => "conv_wgrad_t64x128_f16",
            (Tile::T32x128, true, true) => "conv_wgrad_t32x128_vec_f16",
            (Tile::T32x128, true, false) => "conv_wgrad_t32x128_veca_f16",
            (Tile::T32x128, false, true) => "conv_wgrad_t32x128_vecb_f16",
            (Tile::T32x128, false, false) => "conv_wgrad_t32x128_f16",
            (Tile::T64x64, true, true) => "conv_wgrad_t64x64_vec_f16",
            (Tile::T64x64, true, false) => "conv_wgrad_t64x64_veca_f16",
            (Tile::T64x64, false, true) => "conv_wgrad_t64x64_vecb_f16",
            (Tile::T64x64, false, false) => "conv_wgrad_t64x64_f16",
            (Tile::T64x16, true, true) => "conv_wgrad_t64x16_vec_f16",
            (Tile::T64x16, true, false) => "conv_wgrad_t64x16_veca_f16",
            (Tile::T64x16, false, true) => "conv_wgrad_t64x16_vecb_f16",
            (Tile::T64x16, false, false) => "conv_wgrad_t64x16_f16",
        }
    }

    /// The tile a `m x n` weight gradient (m = c_out, n = kh*kw*c_in) prefers when its pixels
    /// can fill the GPU: the largest that the gradient fills. (64 x 64 beat 64 x 128 for c_out 64
    /// on an H100: more CTAs, no k halves to add.)
    fn preferred(m: usize, n: usize) -> Tile {
        if n <= 16 {
            Tile::T64x16
        } else if n <= 64 || (m > 32 && m <= 64) {
            Tile::T64x64
        } else if m <= 32 {
            Tile::T32x128
        } else {
            Tile::T128x128
        }
    }

    /// The next smaller tile, for gradients whose pixels cannot give this one enough CTAs.
    fn smaller(self) -> Option<Tile> {
        match self {
            Tile::T128x128 | Tile::T64x128 | Tile::T32x128 => Some(Tile::T64x64),
            Tile::T64x64 => Some(Tile::T64x16),
            Tile::T64x16 => None,
        }
    }

    /// Fewest CTAs (over all splits) with which this tile is kept rather than a smaller one: one
    /// per SM, two for 32 x 128. Measured on an H100 over HRNet-W32's and ResNet-50's layers
    /// (benches/gpu_conv_wgrad.rs with CEPHALO_WGRAD_SWEEP=1): below these a smaller tile with more
    /// CTAs was faster, above them not.
    fn min_ctas(self) -> usize {
        match self {
            Tile::T32x128 => 2 * REFERENCE_SMS,
            _ => REFERENCE_SMS,
        }
    }

    /// CTAs of this tile the reference GPU runs at once (a "wave"): two per SM for the 256-thread
    /// tiles, four for the 128-thread ones (registers and shared memory allow that many), and
    /// eight for 64 x 16, whose CTAs are so short (the 1-channel stem) that more of them measured
    /// faster.
    fn wave_ctas(self) -> usize {
        match self {
            Tile::T128x128 | Tile::T64x128 => 2 * REFERENCE_SMS,
            Tile::T32x128 | Tile::T64x64 => 4 * REFERENCE_SMS,
            Tile::T64x16 => 8 * REFERENCE_SMS,
        }
    }
}

/// How one weight gradient is launched: tile, number of pixel splits and pipeline stages (of 32
/// pixels) per split. A function of the shape only (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgradPlan {
    pub tile: Tile,
    pub splits: usize,
    pub steps_per_split: usize,
}

impl WgradPlan {
    /// The default plan for input shape `xs`: the preferred tile, made smaller while the pixels
    /// cannot give it `Tile::min_ctas` CTAs, and the split count that minimises waves (of
    /// `Tile::wave_ctas` CTAs) times stages per split.
    pub fn new(xs: Shape4, p: &ConvParams) -> WgradPlan {
        let mut tile = Tile::preferred(p.c_out, p.patch_len());
        while let Some(smaller) = tile.smaller() {
            if Self::with(xs, p, tile, usize::MAX).ctas(p) >= tile.min_ctas() {
                break;
            }
            tile = smaller;
        }
        // Splits minimising (waves of CTAs) x (stages per split): more splits shorten each CTA
        // but a launch lasts as many CTA lifetimes as it has waves, and a second, nearly empty
        // wave costs a whole one (measured: 17 splits of HRNet's 480-channel head conv ran 0.50
        // ms as 272 CTAs, 33 splits 0.33 ms as 528). The first minimum is the fewest splits.
        let tiles = Self::tiles(tile, p);
        let steps = conv_pixels(xs, p).div_ceil(BK).max(1);
        let most = Self::with(xs, p, tile, usize::MAX).splits;
        let wanted = (1..=most)
            .min_by_key(|&s| (tiles * s).div_ceil(tile.wave_ctas()) * steps.div_ceil(s))
            .unwrap_or(1);
        Self::with(xs, p, tile, wanted.max(1))
    }

    /// A plan with the given tile and about `splits` splits, cut so that every split owns at least
    /// `MIN_STEPS_PER_SPLIT` stages, the partials fit `MAX_PARTIAL_FLOATS`, and no split is
    /// empty. (Public for the benchmark, which compares plans.)
    pub fn with(xs: Shape4, p: &ConvParams, tile: Tile, splits: usize) -> WgradPlan {
        let steps = conv_pixels(xs, p).div_ceil(BK).max(1);
        let by_steps = (steps / MIN_STEPS_PER_SPLIT).max(1);
        let by_memory = (MAX_PARTIAL_FLOATS / p.weight_len().max(1)).max(1);
        let splits = splits.min(by_steps).min(by_memory).max(1);
        let steps_per_split = steps.div_ceil(splits);
        WgradPlan {
            tile,
            splits: steps.div_ceil(steps_per_split),
            steps_per_split,
        }
    }

    fn tiles(tile: Tile, p: &ConvParams) -> usize {
        p.c_out.div_ceil(tile.bm()) * p.patch_len().div_ceil(tile.bn())
    }

    /// CTAs of the main launch.
    pub fn ctas(&self, p: &ConvParams) -> usize {
        Self::tiles(self.tile, p) * self.splits
    }

    /// f32 elements of split-K partials (none with one split: it writes dW directly).
    pub fn partial_len(&self, p: &ConvParams) -> usize {
        if self.splits > 1 {
            self.splits * p.weight_len()
        } else {
            0
        }
    }
}

/// Output pixels of the convolution: the GEMM's K.
fn conv_pixels(xs: Shape4, p: &ConvParams) -> usize {
    p.out_shape(xs).pixels()
}

fn bias_chunks(pixels: usize) -> usize {
    pixels.div_ceil(BIAS_ROWS_PER_CHUNK).clamp(1, BIAS_MAX_CHUNKS)
}

/// f32 elements of scratch [`conv2d_wgrad`] needs for input shape `xs`: the larger of the split-K
/// partials and the bias gradient's partials (they are used one after the other), so at most
/// `max(8 Mi, 128 * c_out)` floats; 0 when neither needs any.
pub fn conv2d_wgrad_workspace_len(xs: Shape4, p: &ConvParams) -> usize {
    let plan = WgradPlan::new(xs, p);
    let pixels = conv_pixels(xs, p);
    let bias = if bias_chunks(pixels) > 1 {
        bias_chunks(pixels) * p.c_out
    } else {
        0
    };
    plan.partial_len(p).max(bias)
}

/// The operands of a weight gradient: the forward's input `x`, NHWC of shape `xs`, the output
/// gradient `dy` (NHWC `p.out_shape(xs)`), both fp16, and the geometry `p`. For the transposed
/// convolution ([`conv_transpose2d_wgrad`]) `p` is the transposed convolution's and `dy` has the
/// shape `p.transposed_out_shape(xs)`.
#[derive(Clone, Copy, Debug)]
pub struct ConvWgrad<'a> {
    pub x: DevSlice<'a, f16>,
    pub xs: Shape4,
    pub dy: DevSlice<'a, f16>,
    pub p: &'a ConvParams,
}

/// `dw` (f32, KRSC) = gradient of `y = conv2d(x, w)` with respect to `w` given `dy` (overwrites
/// it); `db` (f32, c_out) = per-channel sum of `dy` when given (overwrites it). `workspace` has at
/// least [`conv2d_wgrad_workspace_len`] elements.
pub fn conv2d_wgrad(
    gpu: &Gpu,
    c: ConvWgrad,
    dw: DevSliceMut<f32>,
    db: Option<DevSliceMut<f32>>,
    workspace: DevSliceMut<f32>,
) -> Result<()> {
    check_geometry("conv2d_wgrad", c.xs, c.p)?;
    conv2d_wgrad_planned(gpu, c, WgradPlan::new(c.xs, c.p), dw, db, workspace)
}

/// f32 elements of scratch [`conv_transpose2d_wgrad`] needs for input shape `xs`.
pub fn conv_transpose2d_wgrad_workspace_len(xs: Shape4, p: &ConvParams) -> usize {
    conv2d_wgrad_workspace_len(p.transposed_out_shape(xs), &p.adjoint())
}

/// Weight gradient of the transposed convolution `y = conv_transpose2d(x, w)` (overwrites `dw`,
/// `[c_in][kh][kw][c_out]`): the weight gradient of its adjoint convolution, whose input is `dy`
/// (shape `p.transposed_out_shape(xs)`) and whose output gradient is `x`.
pub fn conv_transpose2d_wgrad(
    gpu: &Gpu,
    c: ConvWgrad,
    dw: DevSliceMut<f32>,
    workspace: DevSliceMut<f32>,
) -> Result<()> {
    let ConvWgrad { x, xs, dy, p } = c;
    ensure!(
        xs.c == p.c_in && xs.h >= 1 && xs.w >= 1 && xs.n >= 1,
        "conv_transpose2d_wgrad: input {xs} for {} input channels",
        p.c_in
    );
    ensure!(
        (xs.h - 1) * p.stride + p.kh > 2 * p.pad && (xs.w - 1) * p.stride + p.kw > 2 * p.pad,
        "conv_transpose2d_wgrad: padding {} leaves no output for input {xs}",
        p.pad
    );
    let ys = p.transposed_out_shape(xs);
    let adj = p.adjoint();
    check_geometry("conv_transpose2d_wgrad", ys, &adj)?;
    ensure!(
        adj.out_shape(ys) == xs,
        "conv_transpose2d_wgrad: input {xs} is not the adjoint convolution's output of {ys}"
    );
    let adjoint = ConvWgrad {
        x: dy,
        xs: ys,
        dy: x,
        p: &adj,
    };
    conv2d_wgrad_planned(gpu, adjoint, WgradPlan::new(ys, &adj), dw, None, workspace)
}

/// The convolution is well formed for input `xs` (so that `p.out_shape` cannot panic).
fn check_geometry(what: &str, xs: Shape4, p: &ConvParams) -> Result<()> {
    ensure!(!xs.is_empty(), "{what}: empty input {xs}");
    ensure!(
        p.c_out > 0 && p.kh > 0 && p.kw > 0 && p.stride > 0,
        "{what}: degenerate convolution {p:?}"
    );
    ensure!(
        xs.c == p.c_in,
        "{what}: input {xs} has {} channels, the convolution takes {}",
        xs.c,
        p.c_in
    );
    ensure!(
        xs.h + 2 * p.pad >= p.kh && xs.w + 2 * p.pad >= p.kw,
        "{what}: input {xs} smaller than the {}x{} kernel with padding {}",
        p.kh,
        p.kw,
        p.pad
    );
    Ok(())
}

/// [`conv2d_wgrad`] with an explicit plan (the benchmark compares plans; any plan gives the same
/// gradient up to the order of the fp32 additions). `workspace` needs
/// `max(plan.partial_len(p), bias partials)` elements.
#[doc(hidden)]
pub fn conv2d_wgrad_planned(
    gpu: &Gpu,
    c: ConvWgrad,
    plan: WgradPlan,
    mut dw: DevSliceMut<f32>,
    db: Option<DevSliceMut<f32>>,
    mut workspace: DevSliceMut<f32>,
) -> Result<()> {
    let ConvWgrad { x, xs, dy, p } = c;
    check_geometry("conv2d_wgrad", xs, p)?;
    let ys = p.out_shape(xs);
    ensure!(
        x.len() == xs.len(),
        "conv2d_wgrad: x has {} elements, shape {xs}",
        x.len()
    );
    ensure!(
        dy.len() == ys.len(),
        "conv2d_wgrad: dy has {} elements, the output shape {ys} of {xs} has {}",
        dy.len(),
        ys.len()
    );
    ensure!(
        dw.len() == p.weight_len(),
        "conv2d_wgrad: dw has {} elements, the {}x{}x{}x{} weight {}",
        dw.len(),
        p.c_out,
        p.kh,
        p.kw,
        p.c_in,
        p.weight_len()
    );
    let npix = ys.pixels();
    // The kernels index pixels (plus a stage of slack) and patch columns in 32-bit ints.
    as_i32("conv2d_wgrad: output pixels + 32", npix + BK)?;
    as_i32("conv2d_wgrad: patch length", p.patch_len())?;
    as_i32("conv2d_wgrad: input pixels per image", xs.h * xs.w)?;
    let steps = npix.div_ceil(BK);
    ensure!(
        plan.splits >= 1
            && plan.steps_per_split >= 1
            && plan.splits * plan.steps_per_split >= steps
            && (plan.splits - 1) * plan.steps_per_split < steps,
        "conv2d_wgrad: plan {plan:?} does not cover {steps} stages of pixels with non-empty splits"
    );
    ensure!(
        workspace.len() >= plan.partial_len(p),
        "conv2d_wgrad: workspace of {} floats, the plan's {} splits need {}",
        workspace.len(),
        plan.splits,
        plan.partial_len(p)
    );

    let (xp, dyp) = (x.ptr(), dy.ptr());
    let vec_a = p.c_out.is_multiple_of(8) && all_aligned_16(&[dyp]);
    let vec_b = p.c_in.is_multiple_of(8) && all_aligned_16(&[xp]);
    let tile = plan.tile;
    let (_, _, threads, _, _) = tile.dims();
    let smem = tile.smem_bytes();
    let name = tile.kernel(vec_a, vec_b);
    let f = gpu.function(name)?;
    // Above 48 KiB a kernel must opt in to dynamic shared memory (sm_80..sm_90 all allow it).
    if smem > 48 * 1024 {
        f.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .with_context(|| format!("{name}: allowing {smem} bytes of shared memory"))?;
    }
    let out = if plan.splits > 1 { workspace.ptr() } else { dw.ptr() };
    let cfg = LaunchConfig {
        grid_dim: (
            p.patch_len().div_ceil(tile.bn()) as u32,
            p.c_out.div_ceil(tile.bm()) as u32,
            as_i32("conv2d_wgrad: splits", plan.splits)? as u32,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    ensure!(
        cfg.grid_dim.1 <= 65535 && cfg.grid_dim.2 <= 65535,
        "conv2d_wgrad: grid {:?} too large",
        cfg.grid_dim
    );
    let (h, w, c) = (as_i32("h", xs.h)?, as_i32("w", xs.w)?, as_i32("c_in", xs.c)?);
    let (pp, q, k) = (as_i32("p", ys.h)?, as_i32("q", ys.w)?, as_i32("c_out", p.c_out)?);
    let (r, s) = (as_i32("kh", p.kh)?, as_i32("kw", p.kw)?);
    let (stride, pad) = (as_i32("stride", p.stride)?, as_i32("pad", p.pad)?);
    let (npix_i, sps) = (npix as i32, as_i32("steps per split", plan.steps_per_split)?);
    // SAFETY: x covers n*h*w*c halves and dy npix*k halves (checked above); `out` is dw
    // (k*r*s*c floats, checked) with one split, else the workspace of splits*k*r*s*c floats
    // (checked); the kernel reads x and dy only inside those bounds (pixels below npix, taps
    // inside the image, channels below c and k) and writes only its split's k*r*s*c block.
    // Arguments (const __half*, const __half*, float*, int h, int w, int c, int p, int q, int k,
    // int r, int s, int stride, int pad, int npix, int steps_per_split); grid (ceil(N/BN),
    // ceil(M/BM), splits), the tile's block size and its dynamic shared memory.
    unsafe { launch!(gpu, f, cfg; xp, dyp, out, h, w, c, pp, q, k, r, s, stride, pad, npix_i, sps) }?;
    if plan.splits > 1 {
        reduce(gpu, workspace.as_ref(), plan.splits, p.weight_len(), &mut dw)?;
    }

    if let Some(mut db) = db {
        ensure!(
            db.len() == p.c_out,
            "conv2d_wgrad: db has {} elements for {} output channels",
            db.len(),
            p.c_out
        );
        let chunks = bias_chunks(npix);
        // One chunk writes db directly; more write partials to the workspace, free again now
        // that the split-K reduction (queued before on the same stream) has read it.
        ensure!(
            chunks == 1 || workspace.len() >= chunks * p.c_out,
            "conv2d_wgrad: workspace of {} floats, the bias gradient needs {}",
            workspace.len(),
            chunks * p.c_out
        );
        let target = if chunks > 1 { workspace.ptr() } else { db.ptr() };
        let (pixels, chunks_i) = (npix as i64, chunks as i32);
        let f = gpu.function("conv_wgrad_bias_partial_f16")?;
        let cfg = LaunchConfig {
            grid_dim: (p.c_out.div_ceil(32) as u32, chunks as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dy covers pixels*k halves (checked); the target holds chunks*k floats (db
        // itself when chunks == 1, checked lengths); arguments (const __half*, long long, int,
        // int, float*); grid (ceil(k/32), chunks), block (32, 8).
        unsafe { launch!(gpu, f, cfg; dyp, pixels, k, chunks_i, target) }?;
        if chunks > 1 {
            let partials = workspace.sub_mut(0, chunks * p.c_out);
            reduce(gpu, partials.as_ref(), chunks, p.c_out, &mut db)?;
        }
    }
    Ok(())
}

/// `out[i] = sum over s of partials[s * len + i]`, in a fixed order that depends on `splits` only.
fn reduce(gpu: &Gpu, partials: DevSlice<f32>, splits: usize, len: usize, out: &mut DevSliceMut<f32>) -> Result<()> {
    debug_assert!(partials.len() >= splits * len && out.len() == len);
    let (pp, op) = (partials.ptr(), out.ptr());
    let vec = (len.is_multiple_of(4) && all_aligned_16(&[pp, op])) as i32;
    let (splits_i, len_i) = (as_i32("splits", splits)?, len as i64);
    let f = gpu.function("conv_wgrad_reduce_f32")?;
    let elems = if vec == 1 { len / 4 } else { len };
    let cfg = LaunchConfig {
        grid_dim: (elems.div_ceil(32).clamp(1, 65535) as u32, 1, 1),
        block_dim: (32, REDUCE_LANES, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: partials cover splits*len floats and out len floats (the callers' checks);
    // arguments (const float*, int, long long, float*, int); block (32, 8) as the kernel's
    // lane reduction expects, any grid (grid-stride).
    unsafe { launch!(gpu, f, cfg; pp, splits_i, len_i, op, vec) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smem_mirrors_the_kernel_formula() {
        // wgrad_smem_bytes(128, 128, 3, 1) = 3*32*(136+136)*2 + 128*8, and (32, 128, 3, 2).
        assert_eq!(Tile::T128x128.smem_bytes(), 52224 + 1024);
        assert_eq!(Tile::T32x128.smem_bytes(), 3 * 32 * (40 + 136) * 2 + 1024);
        for t in Tile::ALL {
            assert!(t.smem_bytes() <= 99 * 1024, "{t:?} must fit an sm_86 block");
        }
    }

    #[test]
    fn plans_cover_every_pixel_with_non_empty_splits() {
        for (xs, p) in [
            (Shape4::new(4, 192, 192, 32), ConvParams::square(32, 32, 3, 1, 1)),
            (Shape4::new(1, 3, 5, 8), ConvParams::square(8, 8, 3, 1, 1)),
            (Shape4::new(4, 24, 24, 512), ConvParams::square(512, 2048, 1, 1, 0)),
        ] {
            let plan = WgradPlan::new(xs, &p);
            let steps = p.out_shape(xs).pixels().div_ceil(BK);
            assert!(plan.splits * plan.steps_per_split >= steps);
            assert!((plan.splits - 1) * plan.steps_per_split < steps);
            assert!(plan.partial_len(&p) <= MAX_PARTIAL_FLOATS);
        }
        // The top branch of HRNet-W32: three 32x128 tiles; 176 splits wanted for 528 CTAs, which
        // is 27 of its 4608 stages each, so 171 splits.
        let plan = WgradPlan::new(Shape4::new(4, 192, 192, 32), &ConvParams::square(32, 32, 3, 1, 1));
        assert_eq!(plan.tile, Tile::T32x128);
        assert_eq!((plan.splits, plan.steps_per_split), (171, 27));
    }

    /// Plans that were the fastest of a sweep over tiles and split counts on an H100
    /// (`CEPHALO_WGRAD_SWEEP=1 cargo bench --bench gpu_conv_wgrad`, 2026-11-23), kept by the
    /// chooser.
    #[test]
    fn plans_match_the_measured_best_ones() {
        let sq = ConvParams::square;
        for (xs, p, tile, splits) in [
            // HRNet-W32's 480-channel head: two full waves (a 17-split plan left 8 CTAs alone in a
            // second wave and ran 50 % longer).
            (Shape4::new(4, 192, 192, 480), sq(480, 480, 1, 1, 0), Tile::T128x128, 33),
            (Shape4::new(4, 96, 96, 64), sq(64, 64, 3, 1, 1), Tile::T64x64, 58),
            (Shape4::new(4, 48, 48, 32), sq(32, 256, 3, 2, 1), Tile::T64x16, 4),
            (Shape4::new(4, 48, 48, 64), sq(64, 256, 3, 2, 1), Tile::T64x64, 4),
            (Shape4::new(4, 24, 24, 512), sq(512, 512, 3, 1, 1), Tile::T128x128, 3),
            (Shape4::new(4, 48, 48, 256), sq(256, 256, 3, 1, 1), Tile::T128x128, 7),
            (Shape4::new(4, 768, 768, 1), sq(1, 64, 3, 2, 1), Tile::T64x16, 1024),
        ] {
            let plan = WgradPlan::new(xs, &p);
            assert_eq!((plan.tile, plan.splits), (tile, splits), "{xs} {p:?}");
        }
    }
}
