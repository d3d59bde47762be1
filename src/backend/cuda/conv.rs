//! Launch wrappers of `kernels/conv.cu`: convolution forward (with a per-channel scale/shift/ReLU
//! epilogue) and input gradient, and the transposed convolution built from them. CPU twins in
//! `backend/cpu/conv.rs`. (The weight gradient is `conv_wgrad.rs`.)
//!
//! Both passes are one tensor-core implicit GEMM whose A operand is gathered from NHWC
//! activations on the fly (see the kernel file's header). What the wrapper decides:
//! * the loader: `vec` (16-byte `cp.async`, multi-stage pipeline) when the gathered tensor's
//!   channels come in 8s, the tensors are 16-byte aligned and the kernel has at most 32 taps,
//!   else the general scalar gather;
//! * the block tile, from a small table per loader and GPU class ([`TILES_BIG_SMEM`],
//!   [`TILES_SMALL_SMEM`], [`TILES_GENERAL`]) by the GEMM's M (pixels) and N (output channels)
//!   and the GPU's SM count, so that a 4x192x192x32 layer (M huge, N = 32) and a 4x24x24x256
//!   one (M small) both fill the GPU ([`pick_tile`]);
//! * for a convolution whose output feeds a training-mode batch norm ([`conv2d_fwd_bn_stats`]),
//!   the per-row-tile BN statistics its epilogue writes, and the merge of them into the BN's
//!   `[mean; invstd]` (the batch-norm wrappers' finalize kernel);
//! * dgrad's weight re-layout `[c_out][kh][kw][c_in] -> [c_in][kh][kw][c_out]` into the caller's
//!   workspace ([`conv2d_dgrad_workspace_len`] halves), so both GEMMs read B K-contiguous.
//!
//! Everything but the launch itself is a function of shapes, so [`plan`] is tested without a GPU.
use anyhow::{ensure, Context as _, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::LaunchConfig;
use half::f16;

use super::as_i32;
use super::batchnorm::{finalize_stats, StatsTargets};
use crate::backend::{BnParams, ConvParams, GradOut, Shape4};
use crate::gpu::memory::all_aligned_16;
use crate::gpu::{DevSlice, DevSliceMut, Gpu};

/// Per-output-channel epilogue applied to the fp32 accumulator before the fp16 store:
/// `y = act(acc * scale[c] + shift[c] + residual)`; `None` means scale 1 / shift 0 / no
/// residual. Bias = shift only; inference BN folding = scale and shift; a residual (a tensor of
/// the output's shape) is the block join `relu(bn(conv(x)) + residual)` of inference; `relu`
/// clamps at 0.
#[derive(Clone, Copy, Debug)]
pub struct ConvEpilogue<'a> {
    pub scale: Option<DevSlice<'a, f32>>,
    pub shift: Option<DevSlice<'a, f32>>,
    pub residual: Option<DevSlice<'a, f16>>,
    pub relu: bool,
}

impl ConvEpilogue<'_> {
    pub const NONE: ConvEpilogue<'static> = ConvEpilogue {
        scale: None,
        shift: None,
        residual: None,
        relu: false,
    };
}

/// K extent of the general loader's shared tiles (`CONV_BK`).
const GEN_BK: usize = 32;
/// Padding of the epilogue's staging rows (`CONV_STAGE_PAD`).
const STAGE_PAD: usize = 8;
/// Dynamic shared memory a block may use without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;
/// The most any configuration may use after opting in: the RTX 30xx/40xx limit (sm_86/sm_89 allow
/// 99 KiB per block; sm_80 163 KiB, sm_90 227 KiB), so every tile could run on every supported GPU.
const MAX_SHARED_BYTES: usize = 99 * 1024;

/// Which implicit GEMM a launch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `y = conv(x, w)`: M = output pixels, N = c_out, K = kh*kw*c_in.
    Fwd,
    /// `dx = dgrad(dy, w)`: M = input pixels, N = c_in, K = kh*kw*c_out.
    Dgrad,
}

/// A block-tile configuration of `conv.cu`: its template arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Block tile rows (GEMM M: pixels), columns (GEMM N: channels) and K step (halves).
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    /// Warps along M and along N.
    pub warps_m: usize,
    pub warps_n: usize,
    /// Depth of the vec loader's cp.async pipeline (the general loader double-buffers).
    pub stages: usize,
}

const fn tile(bm: usize, bn: usize, bk: usize, warps_m: usize, warps_n: usize, stages: usize) -> Tile {
    Tile {
        bm,
        bn,
        bk,
        warps_m,
        warps_n,
        stages,
    }
}

/// The vec-loader configurations for GPUs with at least [`BIG_SMEM_PER_SM`] of shared memory per
/// SM (A100, H100): the five block shapes of [`TILES_SMALL_SMEM`], the three larger ones also
/// with 64-wide K steps (up to 96 KiB per block), which [`pick_tile`] takes from [`k64_from`] on.
pub const TILES_BIG_SMEM: [Tile; 8] = {
    let s = TILES_SMALL_SMEM;
    [
        tile(128, 128, 64, 2, 2, 3),
        tile(128, 64, 64, 2, 2, 3),
        tile(64, 64, 64, 2, 2, 4),
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
    ]
};

/// The GEMM K (kernel taps x gathered channels) from which a block shape runs faster with
/// 64-wide K steps than with 32-wide ones on an H100: fewer barriers and pipeline waits per MMA
/// pay off over long K loops, while short ones gain more from the blocks per SM that the
/// smaller shared tiles allow. Measured over every HRNet-W32 and ResNet-50 convolution, forward
/// and dgrad (2026-11-23, `CONV_BENCH_TILES=1 cargo bench --bench gpu_conv`).
pub fn k64_from(bm: usize, bn: usize) -> usize {
    match (bm, bn) {
        (128, 128) => 1024,
        (128, 64) => 512,
        (64, 64) => 256,
        _ => usize::MAX,
    }
}

/// The vec-loader configurations for GPUs with about 100 KiB per SM (RTX 30xx/40xx): 32-wide K
/// steps only, at most 48 KiB per block, so that at least two blocks share an SM.
pub const TILES_SMALL_SMEM: [Tile; 5] = [
    tile(128, 128, 32, 2, 2, 3),
    tile(128, 64, 32, 2, 2, 4),
    tile(64, 64, 32, 2, 2, 4),
    tile(128, 32, 32, 4, 1, 4),
    tile(64, 32, 32, 2, 2, 4),
];

/// The general loader's configurations (scalar gather, double-buffered 32-wide K steps; no
/// 128x128: its register staging would not fit next to 128 accumulators per thread).
pub const TILES_GENERAL: [Tile; 4] = [
    tile(128, 64, 32, 2, 2, 2),
    tile(128, 32, 32, 4, 1, 2),
    tile(64, 64, 32, 2, 2, 2),
    tile(64, 32, 32, 2, 2, 2),
];

/// Shared memory per SM from which [`TILES_BIG_SMEM`] is used.
pub const BIG_SMEM_PER_SM: usize = 160 * 1024;

/// Shared memory per SM of a compute capability (the CUDA programming guide's table): 228 KiB on
/// sm_90, 164 KiB on sm_80/sm_87, 100 KiB on the consumer parts (sm_86, sm_89, sm_120).
pub fn smem_per_sm(compute_capability: (u32, u32)) -> usize {
    match compute_capability {
        (9, 0) => 228 * 1024,
        (8, 0) | (8, 7) => 164 * 1024,
        _ => 100 * 1024,
    }
}

impl Tile {
    /// The kernel of this tile for a pass and loader; `None` where none is instantiated.
    pub fn kernel(&self, pass: Pass, vec: bool) -> Option<&'static str> {
        let t = self;
        let key = (t.bm, t.bn, t.bk, t.warps_m, t.warps_n, t.stages);
        Some(match (pass, vec, key) {
            (Pass::Fwd, true, (128, 128, 64, 2, 2, 3)) => "conv_fwd_vec_128x128k64",
            (Pass::Fwd, true, (128, 64, 64, 2, 2, 3)) => "conv_fwd_vec_128x64k64",
            (Pass::Fwd, true, (64, 64, 64, 2, 2, 4)) => "conv_fwd_vec_64x64k64",
            (Pass::Fwd, true, (128, 128, 32, 2, 2, 3)) => "conv_fwd_vec_128x128k32",
            (Pass::Fwd, true, (128, 64, 32, 2, 2, 4)) => "conv_fwd_vec_128x64k32",
            (Pass::Fwd, true, (64, 64, 32, 2, 2, 4)) => "conv_fwd_vec_64x64k32",
            (Pass::Fwd, true, (128, 32, 32, 4, 1, 4)) => "conv_fwd_vec_128x32k32",
            (Pass::Fwd, true, (64, 32, 32, 2, 2, 4)) => "conv_fwd_vec_64x32k32",
            (Pass::Fwd, false, (128, 64, 32, 2, 2, 2)) => "conv_fwd_gen_128x64",
            (Pass::Fwd, false, (128, 32, 32, 4, 1, 2)) => "conv_fwd_gen_128x32",
            (Pass::Fwd, false, (64, 64, 32, 2, 2, 2)) => "conv_fwd_gen_64x64",
            (Pass::Fwd, false, (64, 32, 32, 2, 2, 2)) => "conv_fwd_gen_64x32",
            (Pass::Dgrad, true, (128, 128, 64, 2, 2, 3)) => "conv_dgrad_vec_128x128k64",
            (Pass::Dgrad, true, (128, 64, 64, 2, 2, 3)) => "conv_dgrad_vec_128x64k64",
            (Pass::Dgrad, true, (64, 64, 64, 2, 2, 4)) => "conv_dgrad_vec_64x64k64",
            (Pass::Dgrad, true, (128, 128, 32, 2, 2, 3)) => "conv_dgrad_vec_128x128k32",
            (Pass::Dgrad, true, (128, 64, 32, 2, 2, 4)) => "conv_dgrad_vec_128x64k32",
            (Pass::Dgrad, true, (64, 64, 32, 2, 2, 4)) => "conv_dgrad_vec_64x64k32",
            (Pass::Dgrad, true, (128, 32, 32, 4, 1, 4)) => "conv_dgrad_vec_128x32k32",
            (Pass::Dgrad, true, (64, 32, 32, 2, 2, 4)) => "conv_dgrad_vec_64x32k32",
            (Pass::Dgrad, false, (128, 64, 32, 2, 2, 2)) => "conv_dgrad_gen_128x64",
            (Pass::Dgrad, false, (128, 32, 32, 4, 1, 2)) => "conv_dgrad_gen_128x32",
            (Pass::Dgrad, false, (64, 64, 32, 2, 2, 2)) => "conv_dgrad_gen_64x64",
            (Pass::Dgrad, false, (64, 32, 32, 2, 2, 2)) => "conv_dgrad_gen_64x32",
            _ => return None,
        })
    }

    /// Threads per block: a warp per warp tile.
    pub fn threads(&self) -> usize {
        32 * self.warps_m * self.warps_n
    }

    /// Dynamic shared memory of one block, as `conv_smem_bytes` in the kernel file: the larger of
    /// the pipeline's tiles (plus the general loader's per-row table) and the epilogue staging.
    pub fn smem_bytes(&self, vec: bool) -> usize {
        let pipeline = if vec {
            self.stages * (self.bm + self.bn) * self.bk * 2
        } else {
            2 * (self.bm + self.bn) * GEN_BK * 2 + self.bm * 16
        };
        let staging = (self.bm / self.warps_m) * (self.bn + STAGE_PAD) * 4;
        pipeline.max(staging)
    }

    /// A short name: `128x64k64s3`, with `/8w` for other than four warps.
    pub fn label(&self) -> String {
        let mut s = format!("{}x{}k{}s{}", self.bm, self.bn, self.bk, self.stages);
        if self.threads() != 128 {
            s += &format!("/{}w", self.threads() / 32);
        }
        s
    }

    /// The selection model's view of this tile: its throughput relative to 128x128 when it has
    /// the SM to itself (bigger warp tiles reuse each fragment over more MMAs), and how many of
    /// its blocks the registers let share an SM. Fitted to the H100 timings of every tile on
    /// every HRNet-W32 and ResNet-50 convolution, forward and dgrad (the sweep of
    /// `CONV_BENCH_TILES=1 cargo bench --bench gpu_conv`, 2026-11-23); the general
    /// loader's tiles borrow the vec ones' figures (only their relative order matters).
    fn model(&self) -> (f64, usize) {
        match (self.bm, self.bn, self.bk) {
            (128, 128, _) => (1.0, 2),
            (128, 64, 64) => (0.9, 3),
            (128, 64, _) => (0.9, 4),
            (64, 64, 64) => (0.7, 4),
            (64, 64, _) => (0.7, 6),
            (128, 32, _) => (0.5, 6),
            _ => (0.5, 8),
        }
    }
}

/// The shape of one implicit-GEMM launch: `slices` z-slices of at most `rows` rows (GEMM M) and
/// `taps` kernel taps each, `cols` output channels (GEMM N), gathering from a tensor of `cs`
/// channels (GEMM K = taps * cs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub rows: usize,
    pub slices: usize,
    pub taps: usize,
    pub cols: usize,
    pub cs: usize,
}

/// The most kernel taps of a slice the vec loader takes (one bit each in a per-row mask); larger
/// kernels (none of the networks has one with c_in % 8 == 0) use the general loader.
pub const VEC_MAX_TAPS: usize = 32;

impl GemmShape {
    /// The forward GEMM of convolution `p` on input `xs`: one slice of every output pixel.
    pub fn fwd(xs: Shape4, p: &ConvParams) -> GemmShape {
        GemmShape {
            rows: p.out_shape(xs).pixels(),
            slices: 1,
            taps: p.kh * p.kw,
            cols: p.c_out,
            cs: p.c_in,
        }
    }

    /// The input-gradient GEMM of convolution `p` on input `xs`: one slice per parity class of
    /// the stride (see `conv_slice` in the kernel file), rows = the largest class's pixels.
    pub fn dgrad(xs: Shape4, p: &ConvParams) -> GemmShape {
        let s = p.stride;
        // Pixels 0..len whose (i + pad) % s == class.
        let class_len = |len: usize, class: usize| {
            let first = (class + s - p.pad % s) % s;
            if first < len {
                (len - first).div_ceil(s)
            } else {
                0
            }
        };
        let most_h = (0..s).map(|c| class_len(xs.h, c)).max().unwrap_or(0);
        let most_w = (0..s).map(|c| class_len(xs.w, c)).max().unwrap_or(0);
        GemmShape {
            rows: xs.n * most_h * most_w,
            slices: s * s,
            taps: p.kh.div_ceil(s) * p.kw.div_ceil(s),
            cols: p.c_in,
            cs: p.c_out,
        }
    }

    /// Whether the vec loader takes this GEMM when the tensors are 16-byte aligned.
    pub fn vec_ok(&self) -> bool {
        self.cs.is_multiple_of(8) && self.taps <= VEC_MAX_TAPS
    }
}

/// The GPU properties the tile choice depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuShape {
    pub sms: usize,
    pub smem_per_sm: usize,
}

impl GpuShape {
    pub fn of(gpu: &Gpu) -> GpuShape {
        GpuShape {
            sms: gpu.info().multiprocessors as usize,
            smem_per_sm: smem_per_sm(gpu.info().compute_capability),
        }
    }

    /// The configurations a loader chooses from on this GPU for a GEMM of `k` = taps x channels:
    /// one per block shape (on big-shared-memory GPUs the 32- or 64-wide K step, by [`k64_from`]).
    pub fn tiles(&self, vec: bool, k: usize) -> Vec<Tile> {
        if !vec {
            TILES_GENERAL.to_vec()
        } else if self.smem_per_sm >= BIG_SMEM_PER_SM {
            let wide = |t: &&Tile| (t.bk == 64) == (k >= k64_from(t.bm, t.bn));
            TILES_BIG_SMEM.iter().filter(wide).copied().collect()
        } else {
            TILES_SMALL_SMEM.to_vec()
        }
    }
}

/// Blocks an SM needs resident before its tensor cores are busy (8 warps); with fewer, a block's
/// time is set by latencies, not by its share of the SM.
const SATURATING_BLOCKS: usize = 2;

/// The block tile for `g` on GPU `d`: the configuration with the least modelled time. The busiest
/// SM gets `r = ceil(blocks / sms)` blocks. While they all fit at once (registers and shared
/// memory allow `per_sm`), its time is their area over the tile's throughput, scaled down when
/// fewer than `SATURATING_BLOCKS` keep it busy; beyond that it runs `ceil(r / per_sm)` full
/// rounds. Large tiles win on large GEMMs; small ones when large ones would leave SMs idle (few
/// pixels, as in HRNet's 1/32 branch) or waste columns (c_out = 32 in a 64-wide tile). On the
/// H100 timings it was fitted to, its picks cost 1.5 % more than the best of the eight tiles for
/// each shape, summed over both networks' forward and dgrad convolutions.
pub fn pick_tile(g: &GemmShape, vec: bool, d: &GpuShape) -> Tile {
    let sms = d.sms.max(1);
    let mut best = None;
    for t in &d.tiles(vec, g.taps * g.cs) {
        let (eff, by_regs) = t.model();
        let per_sm = by_regs.min(d.smem_per_sm / (t.smem_bytes(vec) + 1024)).max(1);
        let blocks = g.slices * g.rows.div_ceil(t.bm) * g.cols.div_ceil(t.bn);
        let r = blocks.div_ceil(sms);
        let area = (t.bm * t.bn) as f64;
        let cost = if r <= per_sm {
            r as f64 * area / (eff * (r as f64 / SATURATING_BLOCKS as f64).min(1.0))
        } else {
            (r.div_ceil(per_sm) * per_sm) as f64 * area / eff
        };
        // On a tie the tile with more blocks: more SMs busy, the same modelled time.
        if best.is_none_or(|(c, b, _)| cost < c || (cost == c && blocks > b)) {
            best = Some((cost, blocks, *t));
        }
    }
    best.expect("every tile list is non-empty").2
}

/// One GEMM launch, decided from shapes (and pointer alignment) only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    pub kernel: &'static str,
    pub tile: Tile,
    /// The 16-byte cp.async loader.
    pub vec: bool,
    pub grid: (u32, u32, u32),
    pub smem_bytes: u32,
}

/// The launch of a `pass` GEMM of shape `g` on GPU `d`; `aligned`: the gathered tensor and the
/// weight operand are 16-byte aligned. `tile` forces a configuration (benchmarks, tests), else
/// [`pick_tile`] chooses.
pub fn plan(pass: Pass, g: &GemmShape, aligned: bool, d: &GpuShape, tile: Option<Tile>) -> Result<LaunchPlan> {
    let vec = g.vec_ok() && aligned;
    let tile = tile.unwrap_or_else(|| pick_tile(g, vec, d));
    let Some(kernel) = tile.kernel(pass, vec) else {
        anyhow::bail!(
            "conv: no {} kernel {} for {pass:?}",
            if vec { "vec" } else { "general" },
            tile.label()
        );
    };
    let smem = tile.smem_bytes(vec);
    ensure!(
        smem <= MAX_SHARED_BYTES,
        "conv: tile {} needs {smem} bytes of shared memory",
        tile.label()
    );
    // One block per (row tile, column tile), the column tiles fastest (see the kernel file).
    let blocks = g.rows.div_ceil(tile.bm).max(1) * g.cols.div_ceil(tile.bn);
    ensure!(
        blocks <= i32::MAX as usize && g.slices <= 65535,
        "conv: {g:?} needs {blocks} x {} blocks, over the launch limits",
        g.slices
    );
    Ok(LaunchPlan {
        kernel,
        tile,
        vec,
        grid: (blocks as u32, 1, g.slices as u32),
        smem_bytes: smem as u32,
    })
}

/// One implicit-GEMM launch's arguments (see the entry points' comment in the kernel file).
struct Gemm {
    pass: Pass,
    src: u64,
    /// The gathered tensor's shape (x forward, dy dgrad).
    ss: Shape4,
    wgt: u64,
    out: u64,
    /// The output's shape (y forward, dx dgrad): GEMM M = its pixels, N = its channels.
    os: Shape4,
    p: ConvParams,
    scale: u64,
    shift: u64,
    relu: bool,
    accumulate: bool,
    /// Forward only: 0, or a tensor of the output's shape added before the ReLU.
    residual: u64,
    /// Forward only: 0, or the BN-statistics partials (`ceil(M / bm) * N * 3` floats).
    stats: u64,
}

/// Launches one GEMM; returns its plan (`None` when the output is empty and nothing ran).
fn launch_gemm(gpu: &Gpu, g: Gemm, tile: Option<Tile>) -> Result<Option<LaunchPlan>> {
    let (m, nc) = (g.os.pixels(), g.os.c);
    if m == 0 || nc == 0 {
        return Ok(None);
    }
    let shape = match g.pass {
        Pass::Fwd => GemmShape::fwd(g.ss, &g.p),
        Pass::Dgrad => GemmShape::dgrad(g.os, &g.p),
    };
    let lp = plan(
        g.pass,
        &shape,
        all_aligned_16(&[g.src, g.wgt]),
        &GpuShape::of(gpu),
        tile,
    )?;
    // The statistics workspace is sized for row tiles of MIN_TILE_ROWS (every tile has at least
    // that many; a unit test checks the tables).
    ensure!(
        g.stats == 0 || lp.tile.bm >= MIN_TILE_ROWS,
        "conv: tile {} has fewer rows than the statistics workspace allows for",
        lp.tile.label()
    );
    // The kernel indexes rows, one image's pixels and K in 32-bit ints; elements in 64-bit.
    as_i32("conv GEMM rows", m)?;
    as_i32("conv K", g.p.kh * g.p.kw * g.ss.c + 64)?;
    as_i32("conv source pixels per image", g.ss.h * g.ss.w)?;
    let (src, wgt, out, scale, shift) = (g.src, g.wgt, g.out, g.scale, g.shift);
    let (residual, stats) = (g.residual, g.stats);
    let (n, hs, ws, cs) = (
        as_i32("batch", g.ss.n)?,
        as_i32("height", g.ss.h)?,
        as_i32("width", g.ss.w)?,
        as_i32("channels", g.ss.c)?,
    );
    let (ho, wo, nc) = (
        as_i32("height", g.os.h)?,
        as_i32("width", g.os.w)?,
        as_i32("channels", nc)?,
    );
    let (kh, kw, stride, pad) = (
        as_i32("kernel height", g.p.kh)?,
        as_i32("kernel width", g.p.kw)?,
        as_i32("stride", g.p.stride)?,
        as_i32("padding", g.p.pad)?,
    );
    let (relu, accumulate) = (g.relu as i32, g.accumulate as i32);
    let vec_out = (g.os.c.is_multiple_of(8) && all_aligned_16(&[out, residual])) as i32;
    let cfg = LaunchConfig {
        grid_dim: lp.grid,
        block_dim: (lp.tile.threads() as u32, 1, 1),
        shared_mem_bytes: lp.smem_bytes,
    };
    let f = gpu.function(lp.kernel)?;
    if lp.smem_bytes as usize > DEFAULT_SHARED_BYTES {
        // Raising the limit is a property of the function, cheap to set again on every launch.
        f.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            lp.smem_bytes as i32,
        )
        .with_context(|| format!("{}: allowing {} bytes of shared memory", lp.kernel, lp.smem_bytes))?;
    }
    // SAFETY: src covers ss.len() halves, wgt nc*kh*kw*cs, out os.len() (checked by the callers),
    // scale/shift nc floats or null; arguments (const __half*, const __half*, __half*, int n,
    // int hs, int ws, int cs, int ho, int wo, int nc, int kh, int kw, int stride, int pad,
    // const float*, const float*, int relu, int accumulate, int vec_out, const __half* residual:
    // null or os.len() halves, float* stats: null or ceil(m / bm) * nc * 3 floats, both checked
    // by the callers); tile.threads() and conv_smem_bytes
    // of dynamic shared memory (Tile::smem_bytes mirrors it), allowed above.
    unsafe {
        launch!(gpu, f, cfg;
            src, wgt, out, n, hs, ws, cs, ho, wo, nc, kh, kw, stride, pad, scale, shift, relu, accumulate, vec_out,
            residual, stats)
    }?;
    Ok(Some(lp))
}

/// Checks that `p` is not degenerate and that input `xs` has the channels `conv` (the
/// convolution or the transposed one) takes.
fn check_params(what: &str, xs: Shape4, p: &ConvParams, conv: &str) -> Result<()> {
    ensure!(
        p.c_in > 0 && p.c_out > 0 && p.kh > 0 && p.kw > 0 && p.stride > 0,
        "{what}: degenerate parameters {p:?}"
    );
    ensure!(
        xs.c == p.c_in,
        "{what}: input {xs} has {} channels, {conv} takes {}",
        xs.c,
        p.c_in
    );
    Ok(())
}

/// Checks a convolution's geometry and returns its output shape for input `xs`.
fn out_shape(what: &str, xs: Shape4, p: &ConvParams) -> Result<Shape4> {
    check_params(what, xs, p, "the convolution")?;
    ensure!(
        xs.h + 2 * p.pad >= p.kh && xs.w + 2 * p.pad >= p.kw,
        "{what}: input {xs} (padding {}) is smaller than the {}x{} kernel",
        p.pad,
        p.kh,
        p.kw
    );
    Ok(p.out_shape(xs))
}

fn check_len(what: &str, name: &str, len: usize, want: usize, shape: impl std::fmt::Display) -> Result<()> {
    ensure!(len == want, "{what}: {name} has {len} elements, {shape} needs {want}");
    Ok(())
}

/// Checks a GEMM's operands: the gathered tensor `src`, the weight (of `w_len` elements) and the
/// output `out`, each `src` and `out` a (name, length, shape).
fn check_operands(
    what: &str,
    p: &ConvParams,
    src: (&str, usize, Shape4),
    w_len: usize,
    out: (&str, usize, Shape4),
) -> Result<()> {
    check_len(what, src.0, src.1, src.2.len(), src.2)?;
    check_len(what, "the weight", w_len, p.weight_len(), format_args!("{p:?}"))?;
    check_len(what, out.0, out.1, out.2.len(), out.2)
}

/// The operands of a convolution forward: the input `x`, NHWC of shape `xs`, the weight `w` and
/// the geometry `p`. For an ordinary convolution `w` is KRSC; for the transposed convolution
/// ([`conv_transpose2d_fwd`]) `p` is the transposed convolution's and `w` is `[c_in][kh][kw][c_out]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvFwd<'a> {
    pub x: DevSlice<'a, f16>,
    pub xs: Shape4,
    pub w: DevSlice<'a, f16>,
    pub p: &'a ConvParams,
}

/// The operands of an input gradient: the output gradient `dy`, the weight `w` and geometry `p`
/// as in [`ConvFwd`], and the shape `xs` of the input whose gradient is computed (`dy` has the
/// forward's output shape for input `xs`).
#[derive(Clone, Copy, Debug)]
pub struct ConvDgrad<'a> {
    pub dy: DevSlice<'a, f16>,
    pub w: DevSlice<'a, f16>,
    pub p: &'a ConvParams,
    pub xs: Shape4,
}

/// The forward GEMM into `y` (added to it when `y.accumulate`, as the transposed convolution's
/// input gradient does); `stats`, when not null, the BN-statistics partials its epilogue writes.
fn fwd_gemm(
    what: &str,
    gpu: &Gpu,
    conv: ConvFwd,
    epilogue: &ConvEpilogue,
    y: GradOut<DevSliceMut<f16>>,
    stats: u64,
    tile: Option<Tile>,
) -> Result<Option<LaunchPlan>> {
    let ConvFwd { x, xs, w, p } = conv;
    let GradOut { data: y, accumulate } = y;
    let ys = out_shape(what, xs, p)?;
    check_operands(what, p, ("x", x.len(), xs), w.len(), ("y", y.len(), ys))?;
    let per_channel = |v: &Option<DevSlice<f32>>, name: &str| -> Result<u64> {
        match v {
            Some(s) => {
                check_len(what, name, s.len(), p.c_out, format_args!("c_out = {}", p.c_out))?;
                Ok(s.ptr())
            }
            None => Ok(0),
        }
    };
    let scale = per_channel(&epilogue.scale, "the epilogue scale")?;
    let shift = per_channel(&epilogue.shift, "the epilogue shift")?;
    let residual = match &epilogue.residual {
        Some(r) => {
            check_len(what, "the residual", r.len(), ys.len(), ys)?;
            ensure!(
                !accumulate && stats == 0,
                "{what}: a residual joins a plain forward only"
            );
            r.ptr()
        }
        None => 0,
    };
    let g = Gemm {
        pass: Pass::Fwd,
        src: x.ptr(),
        ss: xs,
        wgt: w.ptr(),
        out: y.ptr(),
        os: ys,
        p: *p,
        scale,
        shift,
        relu: epilogue.relu,
        accumulate,
        residual,
        stats,
    };
    launch_gemm(gpu, g, tile)
}

/// An output the forward overwrites.
fn overwrite(y: DevSliceMut<f16>) -> GradOut<DevSliceMut<f16>> {
    GradOut {
        data: y,
        accumulate: false,
    }
}

/// `y = epilogue(conv2d(x, w))`: `x` NHWC `xs`, `w` KRSC, `y` NHWC `p.out_shape(xs)`, overwritten.
pub fn conv2d_fwd(gpu: &Gpu, conv: ConvFwd, epilogue: &ConvEpilogue, y: DevSliceMut<f16>) -> Result<()> {
    fwd_gemm("conv2d_fwd", gpu, conv, epilogue, overwrite(y), 0, None)?;
    Ok(())
}

/// [`conv2d_fwd`] through a forced tile configuration (benchmarks and tests compare them).
pub fn conv2d_fwd_tiled(
    gpu: &Gpu,
    conv: ConvFwd,
    epilogue: &ConvEpilogue,
    y: DevSliceMut<f16>,
    tile: Tile,
) -> Result<()> {
    fwd_gemm("conv2d_fwd", gpu, conv, epilogue, overwrite(y), 0, Some(tile))?;
    Ok(())
}

/// The smallest block-tile M of any configuration: it bounds the row tiles, and so the
/// BN-statistics partials, of [`conv2d_fwd_bn_stats`].
const MIN_TILE_ROWS: usize = 64;

/// f32 elements of the workspace [`conv2d_fwd_bn_stats`] needs for an output of shape `ys`: a
/// `(count, mean, M2)` summary per channel per row tile, for the smallest row tile.
pub fn conv2d_bn_stats_workspace_len(ys: Shape4) -> usize {
    ys.pixels().div_ceil(MIN_TILE_ROWS) * ys.c * 3
}

/// Training fusion of a convolution and the batch norm that reads its output: `y = conv2d(x, w)
/// (+ bias)` exactly as [`conv2d_fwd`] writes it, and that BN's batch statistics, summarised per
/// row tile by the epilogue from the fp16 values it stores and merged by the batch-norm finalize
/// kernel into `targets` (`saved = [mean; invstd]`, running statistics updated), as
/// `batchnorm::bn_fwd_train` would compute them from `y` without reading it back. The BN then
/// only applies them (`batchnorm::bn_apply_saved`). `targets.workspace`: at least
/// [`conv2d_bn_stats_workspace_len`] floats, overwritten. CPU twin: `conv2d_fwd` then
/// `bn_batch_stats`.
///
/// Deterministic run to run; but the row tile, and so how the summaries group the rows, is the
/// one [`pick_tile`] chose for this GPU's SM count, so the statistics may differ in their last
/// bits between GPU models (the plain batch-norm reduction's do not).
pub fn conv2d_fwd_bn_stats(
    gpu: &Gpu,
    conv: ConvFwd,
    bias: Option<DevSlice<f32>>,
    y: DevSliceMut<f16>,
    bp: BnParams,
    mut targets: StatsTargets,
) -> Result<()> {
    const WHAT: &str = "conv2d_fwd_bn_stats";
    let ys = out_shape(WHAT, conv.xs, conv.p)?;
    ensure!(!ys.is_empty(), "{WHAT}: empty output {ys}");
    ensure!(
        targets.workspace.len() >= conv2d_bn_stats_workspace_len(ys),
        "{WHAT}: workspace of {} floats, {ys} needs {}",
        targets.workspace.len(),
        conv2d_bn_stats_workspace_len(ys)
    );
    targets.check(ys.c)?;
    let epilogue = ConvEpilogue {
        shift: bias,
        ..ConvEpilogue::NONE
    };
    let plan = fwd_gemm(WHAT, gpu, conv, &epilogue, overwrite(y), targets.workspace.ptr(), None)?
        .expect("a non-empty output launches");
    let chunks = ys.pixels().div_ceil(plan.tile.bm);
    finalize_stats(gpu, ys.pixels(), ys.c, chunks, bp, &mut targets)
}

/// Halves of scratch [`conv2d_dgrad`] needs: the weight re-laid out as `[c_in][kh][kw][c_out]`.
pub fn conv2d_dgrad_workspace_len(p: &ConvParams) -> usize {
    p.weight_len()
}

fn dgrad_gemm(
    what: &str,
    gpu: &Gpu,
    d: ConvDgrad,
    dx: GradOut<DevSliceMut<f16>>,
    workspace: DevSliceMut<f16>,
    tile: Option<Tile>,
) -> Result<()> {
    let ConvDgrad { dy, w, p, xs } = d;
    let GradOut { data: dx, accumulate } = dx;
    let ys = out_shape(what, xs, p)?;
    check_operands(what, p, ("dy", dy.len(), ys), w.len(), ("dx", dx.len(), xs))?;
    ensure!(
        workspace.len() >= conv2d_dgrad_workspace_len(p),
        "{what}: workspace of {} halves, {p:?} needs {}",
        workspace.len(),
        conv2d_dgrad_workspace_len(p)
    );
    let (wp, wtp) = (w.ptr(), workspace.ptr());
    let (cout, taps, cin) = (
        as_i32("c_out", p.c_out)?,
        as_i32("kernel taps", p.kh * p.kw)?,
        as_i32("c_in", p.c_in)?,
    );
    let f = gpu.function("conv_dgrad_weight_relayout_f16")?;
    // SAFETY: w covers cout*taps*cin halves (checked), the workspace at least as many; arguments
    // (const __half*, __half*, int, int, int); a grid-stride 1-D launch.
    unsafe { launch!(gpu, f, gpu.grid_1d(p.weight_len()); wp, wtp, cout, taps, cin) }?;
    let g = Gemm {
        pass: Pass::Dgrad,
        src: dy.ptr(),
        ss: ys,
        wgt: wtp,
        out: dx.ptr(),
        os: xs,
        p: *p,
        scale: 0,
        shift: 0,
        relu: false,
        accumulate,
        residual: 0,
        stats: 0,
    };
    launch_gemm(gpu, g, tile)?;
    Ok(())
}

/// `dx (+)= conv2d_dgrad(dy, w)`: the input gradient of `y = conv2d(x, w)` with `x` of shape
/// `d.xs` and `dy` of shape `p.out_shape(xs)`; added to `dx` when `dx.accumulate` (in fp32,
/// rounded once). `workspace`: at least [`conv2d_dgrad_workspace_len`] halves, overwritten.
pub fn conv2d_dgrad(gpu: &Gpu, d: ConvDgrad, dx: GradOut<DevSliceMut<f16>>, workspace: DevSliceMut<f16>) -> Result<()> {
    dgrad_gemm("conv2d_dgrad", gpu, d, dx, workspace, None)
}

/// [`conv2d_dgrad`] through a forced tile configuration (benchmarks and tests compare them).
pub fn conv2d_dgrad_tiled(
    gpu: &Gpu,
    d: ConvDgrad,
    dx: GradOut<DevSliceMut<f16>>,
    workspace: DevSliceMut<f16>,
    tile: Tile,
) -> Result<()> {
    dgrad_gemm("conv2d_dgrad", gpu, d, dx, workspace, Some(tile))
}

/// The output shape of a transposed convolution on `xs`, checked, and its adjoint convolution
/// (which maps that output back onto `xs`).
fn transposed_shape(what: &str, xs: Shape4, p: &ConvParams) -> Result<(Shape4, ConvParams)> {
    check_params(what, xs, p, "the transposed convolution")?;
    ensure!(
        xs.h > 0 && xs.w > 0 && (xs.h - 1) * p.stride + p.kh > 2 * p.pad && (xs.w - 1) * p.stride + p.kw > 2 * p.pad,
        "{what}: input {xs} gives an empty output with {p:?}"
    );
    let ys = p.transposed_out_shape(xs);
    let adjoint = p.adjoint();
    // The adjoint convolution maps the output back onto exactly this input.
    ensure!(
        out_shape(what, ys, &adjoint)? == xs,
        "{what}: {p:?} does not map {ys} back onto {xs}"
    );
    Ok((ys, adjoint))
}

/// Transposed convolution `y = conv_transpose2d(x, w)`, `w` `[c_in][kh][kw][c_out]`, `y` of shape
/// `p.transposed_out_shape(xs)` (overwritten): the input gradient of the adjoint convolution.
/// `workspace`: at least `conv2d_dgrad_workspace_len(p)` halves.
pub fn conv_transpose2d_fwd(gpu: &Gpu, conv: ConvFwd, y: DevSliceMut<f16>, workspace: DevSliceMut<f16>) -> Result<()> {
    let what = "transposed conv forward";
    let ConvFwd { x, xs, w, p } = conv;
    let (ys, adjoint) = transposed_shape(what, xs, p)?;
    let d = ConvDgrad {
        dy: x,
        w,
        p: &adjoint,
        xs: ys,
    };
    dgrad_gemm(what, gpu, d, overwrite(y), workspace, None)
}

/// Input gradient of the transposed convolution, `dx (+)=`: the adjoint convolution's forward
/// (`dy` of shape `p.transposed_out_shape(xs)`).
pub fn conv_transpose2d_dgrad(gpu: &Gpu, d: ConvDgrad, dx: GradOut<DevSliceMut<f16>>) -> Result<()> {
    let what = "transposed conv input gradient";
    let ConvDgrad { dy, w, p, xs } = d;
    let (ys, adjoint) = transposed_shape(what, xs, p)?;
    let conv = ConvFwd {
        x: dy,
        xs: ys,
        w,
        p: &adjoint,
    };
    fwd_gemm(what, gpu, conv, &ConvEpilogue::NONE, dx, 0, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: GpuShape = GpuShape {
        sms: 132,
        smem_per_sm: 228 * 1024,
    };
    const RTX_3070_TI: GpuShape = GpuShape {
        sms: 48,
        smem_per_sm: 100 * 1024,
    };

    #[test]
    fn every_tile_has_its_kernels_and_fits_shared_memory() {
        for (tiles, vec) in [
            (&TILES_BIG_SMEM[..], true),
            (&TILES_SMALL_SMEM, true),
            (&TILES_GENERAL, false),
        ] {
            for t in tiles {
                assert_eq!(t.bm % (16 * t.warps_m), 0, "{t:?}");
                assert_eq!(t.bn % (16 * t.warps_n), 0, "{t:?}");
                let name = t.kernel(Pass::Fwd, vec).expect("forward kernel");
                assert!(t.kernel(Pass::Dgrad, vec).is_some(), "{name} has no dgrad twin");
                assert!(t.smem_bytes(vec) <= MAX_SHARED_BYTES, "{name}");
                // The BN-statistics epilogue: row groups of whole columns, and at most the
                // partials conv2d_bn_stats_workspace_len sized the workspace for.
                assert_eq!(t.threads() % t.bn, 0, "{name}");
                assert!(t.bm >= MIN_TILE_ROWS, "{name}");
            }
        }
        // Two blocks of every small-memory tile fit an RTX 30xx SM.
        for t in TILES_SMALL_SMEM {
            assert!(2 * (t.smem_bytes(true) + 1024) <= 100 * 1024, "{t:?}");
        }
        // The same numbers as conv_smem_bytes in the kernel file, for three configurations.
        assert_eq!(TILES_BIG_SMEM[0].smem_bytes(true), 3 * 256 * 128);
        assert_eq!(TILES_BIG_SMEM[2].smem_bytes(true), 4 * 128 * 128);
        assert_eq!(TILES_SMALL_SMEM[0].smem_bytes(true), 3 * 256 * 64);
        assert_eq!(TILES_GENERAL[0].smem_bytes(false), 2 * 192 * 64 + 128 * 16);
    }

    fn fwd(m: usize, n: usize) -> GemmShape {
        GemmShape {
            rows: m,
            slices: 1,
            taps: 9,
            cols: n,
            cs: 32,
        }
    }

    #[test]
    fn small_and_narrow_gemms_get_small_tiles() {
        for d in [H100, RTX_3070_TI] {
            // A large square GEMM takes the largest tile.
            let t = pick_tile(&fwd(4 * 96 * 96, 256), true, &d);
            assert_eq!((t.bm, t.bn), (128, 128), "{d:?}");
            // c_out = 32 never takes a tile wider than 32.
            assert_eq!(pick_tile(&fwd(4 * 192 * 192, 32), true, &d).bn, 32);
            // The general loader picks among its own tiles.
            assert!(TILES_GENERAL.contains(&pick_tile(&fwd(4 * 96 * 96, 256), false, &d)));
        }
        // Few pixels: smaller than 128x128 so the grid covers more SMs.
        let t = pick_tile(&fwd(4 * 24 * 24, 256), true, &H100);
        assert!(t.bm * t.bn < 128 * 128, "{t:?}");
        assert_eq!(smem_per_sm((9, 0)), 228 * 1024);
        assert_eq!(smem_per_sm((8, 6)), 100 * 1024);
        // Long K loops take 64-wide K steps where shared memory allows, short ones 32.
        let long = GemmShape {
            cs: 512,
            ..fwd(4 * 96 * 96, 256)
        };
        assert_eq!(pick_tile(&long, true, &H100).bk, 64);
        assert_eq!(pick_tile(&long, true, &RTX_3070_TI).bk, 32);
        assert_eq!(
            pick_tile(
                &GemmShape {
                    taps: 1,
                    cs: 128,
                    ..long
                },
                true,
                &H100
            )
            .bk,
            32
        );
    }

    #[test]
    fn dgrad_slices_are_the_stride_parity_classes() {
        // 3x3 stride 1: one slice of every pixel and every tap.
        let g = GemmShape::dgrad(Shape4::new(2, 7, 9, 16), &ConvParams::square(16, 24, 3, 1, 1));
        assert_eq!((g.rows, g.slices, g.taps, g.cols, g.cs), (2 * 7 * 9, 1, 9, 16, 24));
        // Stride 2 pad 1 on 7 x 9: (h + 1) even for h = 1, 3, 5 (3 rows), odd for 0, 2, 4, 6 (4);
        // at most 2 x 2 of the 3 x 3 taps per class.
        let g = GemmShape::dgrad(Shape4::new(2, 7, 9, 16), &ConvParams::square(16, 24, 3, 2, 1));
        assert_eq!((g.rows, g.slices, g.taps), (2 * 4 * 5, 4, 4));
        // Stride 3 pad 0 on 4 x 4: classes of sizes 2, 1, 1.
        let g = GemmShape::dgrad(Shape4::new(1, 4, 4, 8), &ConvParams::square(8, 8, 2, 3, 0));
        assert_eq!((g.rows, g.slices, g.taps), (4, 9, 1));
    }

    #[test]
    fn plan_picks_the_loader_by_channels_taps_and_alignment() {
        let g = |cs, taps| GemmShape {
            rows: 1000,
            slices: 1,
            taps,
            cols: 64,
            cs,
        };
        let p = plan(Pass::Fwd, &g(32, 9), true, &RTX_3070_TI, None).unwrap();
        assert!(p.vec && p.kernel.contains("fwd_vec"));
        assert!(!plan(Pass::Fwd, &g(18, 9), true, &H100, None).unwrap().vec);
        assert!(!plan(Pass::Fwd, &g(32, 49), true, &H100, None).unwrap().vec);
        assert!(!plan(Pass::Dgrad, &g(32, 9), false, &H100, None).unwrap().vec);
        assert!(plan(Pass::Fwd, &g(18, 9), true, &H100, Some(TILES_BIG_SMEM[0])).is_err());
        let d = GemmShape {
            rows: 1000,
            slices: 4,
            taps: 4,
            cols: 40,
            cs: 8,
        };
        let p = plan(Pass::Dgrad, &d, true, &H100, Some(TILES_BIG_SMEM[7])).unwrap();
        assert_eq!(
            (p.kernel, p.grid, p.tile.threads()),
            (
                "conv_dgrad_vec_64x32k32",
                (1000usize.div_ceil(64) as u32 * 2, 1, 4),
                128
            )
        );
    }
}
