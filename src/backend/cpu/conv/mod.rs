//! CPU twins of `kernels/conv.cu`: conv2d forward, input gradient (dgrad), weight gradient
//! (wgrad), bias gradient, and the transposed convolution built from them.
//!
//! # Direct convolution in register tiles
//! In NHWC, one kernel row of one output pixel reads `kw * c_in` consecutive values of the
//! zero-padded input (the pixels under that kernel row, every channel), so a pixel's dot product
//! is `kh` contiguous *runs* against the matching rows of the weights. A tile computes `PX`
//! pixels times `L` output channels: for each input value of the runs, one broadcast and one
//! fused multiply-add into each pixel's accumulator vector of `L` lanes. The weights are packed
//! `[channel block][kernel row][run position][L]`, so each step loads one weight vector that all
//! `PX` pixels use. `L` is 16 (8 for narrow layers) and `PX` is as large as the vector registers
//! of the instruction set allow ([`super::simd`]); no im2col matrix is ever built.
//!
//! The input gradient is the same computation on the output gradient. For stride 1 it is a
//! convolution with the kernel flipped and the channel roles swapped. For stride `s` the input
//! pixels fall into `s * s` phases by their position modulo `s`: all pixels of a phase are reached
//! by the same subset of kernel taps, which again read contiguous runs of the output gradient.
//! The weight gradient tiles the kernel instead of the pixels: `L` output channels times `JB` run
//! positions accumulate over the pixels of a chunk.
//!
//! # Order of summation
//! Every output element is one chain of fused multiply-adds in a fixed order, starting from zero:
//! forward and input gradient over the kernel rows, each over its run; the weight gradient over
//! the pixels of each chunk of [`wgrad_chunk_pixels`] pixels, then the chunks' sums in order; the
//! bias gradient likewise. The tile sizes, the instruction set and the thread count only decide
//! which element is computed where, never the order, so the results are bit-identical for any of
//! them.
//!
//! # Winograd
//! The inference forward ([`conv2d_affine_fwd`]) of 3x3, stride-1, padding-1 convolutions runs
//! Winograd's F(2x2, 3x3) instead ([`winograd`], docs/maths.md#winograd-convolution): 2.25x fewer
//! multiply-adds, rounding errors no larger than the direct sum's, and the same independence from
//! instruction set and thread count.
use std::ops::Range;

use rayon::prelude::*;

use super::resample::UpsampleRows;
use super::scratch::{self, Scratch};
use super::simd::{for_each_isa, isa, Isa};
use super::Real;
use crate::backend::{upsample_shape, ConvParams, Shape4, UpsampleMode};

mod winograd;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use winograd::{conv2d_fwd_winograd, suits as winograd_suits};

/// Output channels per register block: 16, or 8 where that wastes fewer padding lanes (8, 19,
/// 24, 120 channels...). An 8-lane tile does half the work per instruction but keeps more pixels
/// in registers; on CPUs that split 512-bit FMAs in two (AMD Zen 4) both reach the same peak.
fn lanes_for(c_out: usize) -> usize {
    if c_out.div_ceil(8) * 8 < c_out.div_ceil(16) * 16 {
        8
    } else {
        16
    }
}

/// A raw pointer that rayon jobs may share: each job writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: only used to write elements no other job touches (see each use).
unsafe impl<T: Send> Send for Out<T> {}
unsafe impl<T: Send> Sync for Out<T> {}

/// Per-channel `y = max?(y * scale + shift (+ residual))` applied to each output tile while it
/// is in cache; `residual`, when given, has the output's shape (the inference block join).
#[derive(Clone, Copy)]
pub struct Affine<'a, T> {
    pub scale: &'a [T],
    pub shift: &'a [T],
    pub residual: Option<&'a [T]>,
    pub relu: bool,
}

/// An input as a pass reads it: the tensor itself, or a zero-padded copy.
enum Padded<'a, T: Real> {
    Same(&'a [T]),
    Copy(Scratch<T>),
}

impl<T: Real> std::ops::Deref for Padded<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Padded::Same(x) => x,
            Padded::Copy(x) => x,
        }
    }
}

/// `x` (NHWC `xs`) with `top`/`bottom` zero rows and `left`/`right` zero columns around every
/// image, plus `slack` zeros after the last image (for tiles that read past a run's end); `x`
/// itself when nothing is to be added.
fn padded<T: Real>(
    x: &[T],
    xs: Shape4,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
    slack: usize,
) -> Padded<'_, T> {
    if top + bottom + left + right + slack == 0 {
        return Padded::Same(x);
    }
    let (hp, wp, c) = (xs.h + top + bottom, xs.w + left + right, xs.c);
    let row = wp * c;
    let mut out = scratch::take::<T>(xs.n * hp * row + slack);
    let (body, tail) = out.split_at_mut(xs.n * hp * row);
    tail.fill(T::ZERO);
    body.par_chunks_mut(row).enumerate().for_each(|(i, dst)| {
        let (n, h) = (i / hp, i % hp);
        if h < top || h >= top + xs.h {
            dst.fill(T::ZERO);
            return;
        }
        let src = &x[(n * xs.h + h - top) * xs.w * c..][..xs.w * c];
        dst[..left * c].fill(T::ZERO);
        dst[left * c..(left + xs.w) * c].copy_from_slice(src);
        dst[(left + xs.w) * c..].fill(T::ZERO);
    });
    Padded::Copy(out)
}

/// Where a pass's pixel `p` reads or writes: pixel `p` is `(n, a, b)` in an `n x h x w` grid
/// (row-major) and maps to `base + n * sn + a * sa + b * sb`. Both the input runs and the output
/// pixels of every pass are such maps (the forward's strided windows, the input gradient's
/// phases), so a tile of consecutive pixels is found by stepping, without a division per pixel.
#[derive(Clone, Copy)]
struct PixelMap {
    h: usize,
    w: usize,
    base: usize,
    sn: usize,
    sa: usize,
    sb: usize,
}

impl PixelMap {
    /// The plain numbering of an `n x h x w` grid scaled by `unit` (pixel `p` -> `p * unit`).
    fn dense(h: usize, w: usize, unit: usize) -> Self {
        Self {
            h,
            w,
            base: 0,
            sn: h * w * unit,
            sa: w * unit,
            sb: unit,
        }
    }

    fn at(&self, p: usize) -> usize {
        let (n, a, b) = (p / (self.h * self.w), (p / self.w) % self.h, p % self.w);
        self.base + n * self.sn + a * self.sa + b * self.sb
    }

    /// The map's values at pixels `p0..p0 + N` (`p0 + N` may pass the end of the grid: the
    /// values there are never used but must not overflow).
    #[inline(always)]
    fn run<const N: usize>(&self, p0: usize) -> [usize; N] {
        let (mut n, mut a, mut b) = (p0 / (self.h * self.w), (p0 / self.w) % self.h, p0 % self.w);
        let mut row = self.base + n * self.sn + a * self.sa;
        std::array::from_fn(|_| {
            let v = row + b * self.sb;
            b += 1;
            if b == self.w {
                b = 0;
                a += 1;
                if a == self.h {
                    a = 0;
                    n += 1;
                }
                row = self.base + n * self.sn + a * self.sa;
            }
            v
        })
    }
}

/// One direct-convolution pass: output pixel `p` reads `taps` runs of `run` contiguous values
/// of `src`, `row_step` apart, from `start.at(p)`, against `weights` packed
/// `[block][tap][run][L]`, and its result goes to output pixel `dst.at(p)`.
struct Pass<'a, T> {
    src: &'a [T],
    pixels: usize,
    taps: usize,
    row_step: usize,
    run: usize,
    lanes: usize,
    weights: &'a [T],
    start: PixelMap,
    dst: PixelMap,
}

/// How a pass's results are stored: `y[dst * c_out + k] = epilogue(acc)`.
struct Store<'a, T> {
    y: Out<T>,
    c_out: usize,
    bias: Option<&'a [T]>,
    accumulate: bool,
    epilogue: Option<Affine<'a, T>>,
}

impl<T: Real> Store<'_, T> {
    /// Stores output channels `k0..k0 + L` (those below `c_out`) of output pixel `pixel`.
    ///
    /// # Safety
    /// `pixel < y.len() / c_out`, and no other thread touches these elements meanwhile.
    #[inline(always)]
    unsafe fn put<const L: usize>(&self, pixel: usize, k0: usize, acc: &[T; L]) {
        let at = pixel * self.c_out + k0;
        if k0 + L > self.c_out {
            // The last block of a channel count that is not a multiple of L.
            // SAFETY: as for the caller.
            return unsafe { self.put_some(at, k0, &acc[..self.c_out - k0]) };
        }
        // A whole block: each step is one vector operation over the lanes, in the same order as
        // `put_some` (bias, accumulate, affine, residual, ReLU).
        let mut v = *acc;
        // SAFETY: `at + L <= y.len()` (a whole block of an in-bounds pixel), exclusive by the
        // caller's contract.
        let y = unsafe { &mut *(self.y.0.add(at) as *mut [T; L]) };
        if let Some(b) = self.bias {
            let b = &b[k0..k0 + L];
            v.iter_mut().zip(b).for_each(|(v, &b)| *v = *v + b);
        }
        if self.accumulate {
            v.iter_mut().zip(y.iter()).for_each(|(v, &y)| *v = y + *v);
        }
        if let Some(e) = &self.epilogue {
            let (scale, shift) = (&e.scale[k0..k0 + L], &e.shift[k0..k0 + L]);
            v.iter_mut()
                .zip(scale)
                .zip(shift)
                .for_each(|((v, &s), &t)| *v = v.mul_add(s, t));
            if let Some(r) = e.residual {
                v.iter_mut().zip(&r[at..at + L]).for_each(|(v, &r)| *v = *v + r);
            }
            if e.relu {
                v.iter_mut().for_each(|v| *v = v.max(T::ZERO));
            }
        }
        *y = v;
    }

    /// [`Store::put`] for `acc.len()` channels from `k0`, one by one.
    ///
    /// # Safety
    /// As for [`Store::put`].
    #[inline(always)]
    unsafe fn put_some(&self, at: usize, k0: usize, acc: &[T]) {
        for (l, &a) in acc.iter().enumerate() {
            let k = k0 + l;
            // SAFETY: in bounds and exclusive by the caller's contract.
            let y = unsafe { &mut *self.y.0.add(at + l) };
            let mut v = a;
            if let Some(b) = self.bias {
                v = v + b[k];
            }
            if self.accumulate {
                v = *y + v;
            }
            if let Some(e) = &self.epilogue {
                v = v.mul_add(e.scale[k], e.shift[k]);
                if let Some(r) = e.residual {
                    v = v + r[at + l];
                }
                if e.relu {
                    v = v.max(T::ZERO);
                }
            }
            *y = v;
        }
    }
}

/// The register tile of [`Pass`]: `PX` pixels (their run starts in `starts`) times `L` lanes.
///
/// # Safety
/// Every `starts[px] + t * row_step + j` (t < taps, j < run) is inside `src`, and `w` holds
/// `taps * run * L` values.
#[inline(always)]
unsafe fn dot_tile<T: Real, const L: usize, const PX: usize>(
    src: *const T,
    starts: &[usize; PX],
    taps: usize,
    row_step: usize,
    run: usize,
    w: *const T,
) -> [[T; L]; PX] {
    let mut acc = [[T::ZERO; L]; PX];
    for t in 0..taps {
        // SAFETY (all pointer arithmetic below): within the bounds the caller guarantees.
        let rows: [*const T; PX] = std::array::from_fn(|px| unsafe { src.add(starts[px] + t * row_step) });
        let wt = unsafe { w.add(t * run * L) };
        for j in 0..run {
            let wv: [T; L] = unsafe { *(wt.add(j * L) as *const [T; L]) };
            for px in 0..PX {
                let xv = unsafe { *rows[px].add(j) };
                for l in 0..L {
                    acc[px][l] = xv.mul_add(wv[l], acc[px][l]);
                }
            }
        }
    }
    acc
}

/// Runs tiles `tiles` of the pass for blocks `blocks` (both in units of tiles and `L`-blocks).
#[inline(always)]
fn pass_job<T: Real, const L: usize, const PX: usize>(
    pass: &Pass<'_, T>,
    store: &Store<'_, T>,
    tiles: Range<usize>,
    blocks: Range<usize>,
    kernel: DotTile<T, L, PX>,
) {
    let block_len = pass.taps * pass.run * L;
    for tile in tiles {
        let p0 = tile * PX;
        let valid = PX.min(pass.pixels - p0);
        // Pixels past the end repeat the first one: computed, never stored.
        let mut starts: [usize; PX] = pass.start.run(p0);
        for px in valid..PX {
            starts[px] = starts[0];
        }
        let dsts: [usize; PX] = pass.dst.run(p0);
        for b in blocks.clone() {
            let w = &pass.weights[b * block_len..(b + 1) * block_len];
            // SAFETY: the pass's constructor checked that every run of every pixel is inside `src`.
            let acc = unsafe {
                kernel(
                    pass.src.as_ptr(),
                    &starts,
                    pass.taps,
                    pass.row_step,
                    pass.run,
                    w.as_ptr(),
                )
            };
            for px in 0..valid {
                // SAFETY: dst maps the pass's pixels one to one onto output pixels, and the
                // blocks of one tile are in one job, so no two jobs write an element.
                unsafe { store.put(dsts[px], b * L, &acc[px]) };
            }
        }
    }
}

/// A register tile function of a pass: [`dot_tile`] or one of its intrinsic twins in [`x86`].
type DotTile<T, const L: usize, const PX: usize> =
    unsafe fn(*const T, &[usize; PX], usize, usize, usize, *const T) -> [[T; L]; PX];

// The job loop and the stores compiled per instruction set (the epilogue's multiply-adds are
// fused instructions there, not calls), the tile itself passed in.
for_each_isa!(pass_isa: pass_job<L, PX>(
    pass: &Pass<'_, T>,
    store: &Store<'_, T>,
    tiles: Range<usize>,
    blocks: Range<usize>,
    kernel: DotTile<T, L, PX>,
));

/// Pixels per tile of [`dot_tile`] for `lanes` on `isa`: as many accumulator vectors as leave
/// registers for the weight vector and the broadcast, and at most 12, so that the tile's row
/// pointers stay in general-purpose registers (with 16 pixels the 8-lane AVX-512 tile reloaded 5
/// of its 16 row pointers from the stack in its innermost loop, one per 3 FMAs).
fn tile_pixels(isa: Isa, lanes: usize) -> usize {
    match (isa, lanes) {
        (Isa::Avx512, _) => 12,
        (Isa::Avx2, 16) => 6,
        (Isa::Avx2, _) => 12,
        (Isa::Baseline, 16) => 4,
        (Isa::Baseline, _) => 8,
    }
}

/// The instruction set whose register tiles run for element type `T`: the vector tiles are f32
/// only; other element types (f64 for gradient checks) run the baseline tile, whose size the
/// job split must use too.
fn tile_isa<T: Real>() -> Isa {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        isa()
    } else {
        Isa::Baseline
    }
}

/// `a` as the same value of another type: a `T`-generic argument passed to an f32-only variant.
///
/// # Safety
/// `A` and `B` are the same type (`T` is f32 wherever [`tile_isa`] chose a vector tile).
#[cfg(target_arch = "x86_64")]
unsafe fn same<A, B>(a: &A) -> &B {
    debug_assert_eq!(std::mem::size_of::<A>(), std::mem::size_of::<B>());
    // SAFETY: the same type, by the caller's contract.
    unsafe { &*(a as *const A).cast::<B>() }
}

/// Calls a [`for_each_isa`] job whose last argument is a [`DotTile`], with the register tile
/// [`tile_isa`] (`$isa`) and the lane count `$lanes` call for (sized by [`tile_pixels`]):
/// `with_dot_tile!(module::<T>(isa, lanes; generic arguments...; plain arguments...))`, where the
/// generic arguments are references to `T`-generic values and the plain ones do not depend on `T`.
macro_rules! with_dot_tile {
    ($module:ident::<$t:ty>($isa:expr, $lanes:expr; $($g:expr),*; $($a:expr),*)) => {{
        use $crate::backend::cpu::conv as c;
        match ($isa, $lanes) {
            // SAFETY: [`c::tile_isa`] picks a vector instruction set only for f32 (so `same`
            // casts to the type itself) and only one this CPU supports.
            #[cfg(target_arch = "x86_64")]
            (c::Isa::Avx512, 16) => unsafe {
                $module::avx512::<f32, 16, 12>($(c::same($g)),*, $($a),*, c::x86::dot_avx512)
            },
            #[cfg(target_arch = "x86_64")]
            (c::Isa::Avx512, _) => unsafe {
                $module::avx512::<f32, 8, 12>($(c::same($g)),*, $($a),*, c::x86::dot_avx512_ymm)
            },
            #[cfg(target_arch = "x86_64")]
            (c::Isa::Avx2, 16) => unsafe { $module::avx2::<f32, 16, 6>($(c::same($g)),*, $($a),*, c::x86::dot_avx2) },
            #[cfg(target_arch = "x86_64")]
            (c::Isa::Avx2, _) => unsafe { $module::avx2::<f32, 8, 12>($(c::same($g)),*, $($a),*, c::x86::dot_avx2) },
            (_, 16) => $module::baseline::<$t, 16, 4>($($g),*, $($a),*, c::dot_tile),
            _ => $module::baseline::<$t, 8, 8>($($g),*, $($a),*, c::dot_tile),
        }
    }};
}
use with_dot_tile;

/// Runs `pass` over all its pixels in parallel jobs.
fn run_pass<T: Real>(pass: &Pass<'_, T>, store: &Store<'_, T>) {
    if pass.pixels == 0 {
        return;
    }
    let isa = tile_isa::<T>();
    let lanes = pass.lanes;
    let px = tile_pixels(isa, lanes);
    let tiles = pass.pixels.div_ceil(px);
    let blocks = store.c_out.div_ceil(lanes);
    // Blocks in one job: their packed weights stay in the core's L2 (256 KiB of them) while the
    // job's tiles stream past.
    let block_bytes = pass.taps * pass.run * lanes * std::mem::size_of::<T>();
    let blocks_per_job = (256 * 1024 / block_bytes.max(1)).clamp(1, blocks);
    // Tiles in one job: about 2^18 multiply-adds, enough to hide the scheduling.
    let fmas_per_tile = px * pass.taps * pass.run * lanes * blocks_per_job;
    let tiles_per_job = ((1 << 18) / fmas_per_tile.max(1)).clamp(1, tiles);
    let block_groups = blocks.div_ceil(blocks_per_job);
    let tile_groups = tiles.div_ceil(tiles_per_job);
    // Consecutive jobs (which rayon hands to the same thread) share their block group, so its
    // weights stay in cache while the tiles stream past (wide layers on small images have more
    // weights than the cache holds).
    (0..tile_groups * block_groups).into_par_iter().for_each(|job| {
        let (bg, tg) = (job / tile_groups, job % tile_groups);
        let t = tg * tiles_per_job..((tg + 1) * tiles_per_job).min(tiles);
        let b = bg * blocks_per_job..((bg + 1) * blocks_per_job).min(blocks);
        with_dot_tile!(pass_isa::<T>(isa, lanes; pass, store; t, b));
    });
}

/// Checks the bound [`dot_tile`] relies on: the furthest value any pixel's runs reach.
fn check_reach(src_len: usize, last_start: usize, taps: usize, row_step: usize, run: usize) {
    if taps > 0 && run > 0 {
        let reach = last_start + (taps - 1) * row_step + run;
        assert!(reach <= src_len, "conv: a run reaches {reach} of {src_len} values");
    }
}

/// Packs KRSC-ordered weights for [`dot_tile`]: `out[((b * taps + t) * run + j) * L + l] =
/// w_at(b * L + l, t, j)` for output channels below `c_out`, zero for the padding lanes.
fn pack<T: Real>(
    c_out: usize,
    taps: usize,
    run: usize,
    lanes: usize,
    w_at: impl Fn(usize, usize, usize) -> T + Sync,
) -> Scratch<T> {
    let blocks = c_out.div_ceil(lanes);
    let mut out = scratch::take::<T>(blocks * taps * run * lanes);
    out.par_chunks_mut(run * lanes).enumerate().for_each(|(bt, dst)| {
        let (b, t) = (bt / taps, bt % taps);
        for (j, v) in dst.chunks_exact_mut(lanes).enumerate() {
            for (l, e) in v.iter_mut().enumerate() {
                let k = b * lanes + l;
                *e = if k < c_out { w_at(k, t, j) } else { T::ZERO };
            }
        }
    });
    out
}

/// Where a forward's results go, checked against the convolution: `y` (NHWC
/// `p.out_shape(xs)`), plus `bias`, onto `y`'s values when `accumulate`, then `epilogue`.
fn fwd_store<'a, T: Real>(
    y: &'a mut [T],
    ys: Shape4,
    p: &ConvParams,
    bias: Option<&'a [T]>,
    accumulate: bool,
    epilogue: Option<Affine<'a, T>>,
) -> Store<'a, T> {
    assert_eq!(y.len(), ys.len(), "conv2d_fwd: y length");
    if let Some(b) = bias {
        assert_eq!(b.len(), p.c_out, "conv2d_fwd: bias length");
    }
    if let Some(e) = &epilogue {
        assert!(
            e.scale.len() == p.c_out && e.shift.len() == p.c_out,
            "conv2d_fwd: affine length"
        );
        if let Some(r) = e.residual {
            assert_eq!(r.len(), y.len(), "conv2d_fwd: residual length");
        }
    }
    Store {
        y: Out(y.as_mut_ptr()),
        c_out: p.c_out,
        bias,
        accumulate,
        epilogue,
    }
}

/// The direct forward of `x` (NHWC `xs`) with KRSC weights `w`, stored through `store`.
fn conv_fwd_into<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, store: &Store<'_, T>) {
    let ys = p.out_shape(xs);
    assert_eq!(x.len(), xs.len(), "conv2d_fwd: x length");
    assert_eq!(w.len(), p.weight_len(), "conv2d_fwd: weight length");
    let pad = p.pad;
    let src = padded(x, xs, pad, pad, pad, pad, 0);
    let (hp, wp, c) = (xs.h + 2 * pad, xs.w + 2 * pad, xs.c);
    let (run, patch) = (p.kw * c, p.patch_len());
    let lanes = lanes_for(p.c_out);
    let weights = pack(p.c_out, p.kh, run, lanes, |k, r, j| w[k * patch + r * run + j]);
    let st = p.stride;
    let start = PixelMap {
        h: ys.h,
        w: ys.w,
        base: 0,
        sn: hp * wp * c,
        sa: st * wp * c,
        sb: st * c,
    };
    let pixels = ys.pixels();
    if pixels > 0 {
        check_reach(src.len(), start.at(pixels - 1), p.kh, wp * c, run);
    }
    let pass = Pass {
        src: &src,
        pixels,
        taps: p.kh,
        row_step: wp * c,
        run,
        lanes,
        weights: &weights,
        start,
        dst: PixelMap::dense(ys.h, ys.w, 1),
    };
    run_pass(&pass, store);
}

/// `y = epilogue(conv2d(x, w) + bias)`: the inference form with batch norm folded into
/// `affine` (and the block's residual join and ReLU, when given).
pub fn conv2d_affine_fwd<T: Real>(
    x: &[T],
    xs: Shape4,
    w: &[T],
    p: &ConvParams,
    bias: Option<&[T]>,
    affine: Affine<'_, T>,
    y: &mut [T],
) {
    let store = fwd_store(y, p.out_shape(xs), p, bias, false, Some(affine));
    if winograd::suits(p) {
        winograd::conv_fwd(x, xs, w, p, &store);
    } else {
        conv_fwd_into(x, xs, w, p, &store);
    }
}

/// `y = conv2d(x, w) + bias`. `x` is NHWC `xs`, `w` is KRSC, `y` is NHWC `p.out_shape(xs)`.
pub fn conv2d_fwd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, bias: Option<&[T]>, y: &mut [T]) {
    conv_fwd_into(x, xs, w, p, &fwd_store(y, p.out_shape(xs), p, bias, false, None));
}

/// `y = epilogue(conv1x1(concat(x[0], up(x[1]), ..., up(x[m])), w) + bias)`, every `up` a
/// bilinear upsampling to `x[0]`'s size, computed without the concatenation: input `j` is
/// convolved with its slice of the weights (its channels of the concatenation) at its own size,
/// the products of inputs 1.. are upsampled and added, then the bias (with input 0's product)
/// and `epilogue` (no residual). Exact in real arithmetic since the convolution and the
/// upsampling commute; docs/maths.md#the-heads-split-convolution. The convolution is `(w, p)`:
/// KRSC weights `p.c_out x p.c_in`, `p.c_in` the sum of the inputs' channels.
pub fn conv1x1_concat_affine_fwd<T: Real>(
    xs: &[(&[T], Shape4)],
    (w, p): (&[T], &ConvParams),
    bias: Option<&[T]>,
    epilogue: Affine<'_, T>,
    y: &mut [T],
) {
    assert_eq!(
        (p.kh, p.kw, p.stride, p.pad),
        (1, 1, 1, 0),
        "conv1x1_concat: a 1x1 convolution"
    );
    assert_eq!(w.len(), p.weight_len(), "conv1x1_concat: weight length");
    assert!(epilogue.residual.is_none(), "conv1x1_concat: no residual");
    let (x0, s0) = xs[0];
    assert_eq!(
        xs.iter().map(|(_, s)| s.c).sum::<usize>(),
        p.c_in,
        "conv1x1_concat: channels"
    );
    let ys = Shape4 { c: p.c_out, ..s0 };
    // Input j's slice of the weights, as a convolution of its own: [c_out][c_j].
    let mut offset = 0;
    let mut slice = |c: usize| {
        let part = ConvParams::square(c, p.c_out, 1, 1, 0);
        let mut wj = scratch::take::<T>(part.weight_len());
        for (k, row) in wj.chunks_exact_mut(c).enumerate() {
            row.copy_from_slice(&w[k * p.c_in + offset..][..c]);
        }
        offset += c;
        (part, wj)
    };
    let (p0, w0) = slice(s0.c);
    let mut smaller = Vec::new();
    for &(xj, sj) in &xs[1..] {
        assert!(
            sj.h > 0 && s0.h % sj.h == 0,
            "conv1x1_concat: {sj} does not upsample to {s0}"
        );
        let (pj, wj) = slice(sj.c);
        let (zs, factor) = (Shape4 { c: p.c_out, ..sj }, s0.h / sj.h);
        assert_eq!(
            upsample_shape(zs, factor),
            ys,
            "conv1x1_concat: {sj} does not upsample to {s0}"
        );
        let mut z = scratch::take::<T>(zs.len());
        conv_fwd_into(xj, sj, &wj, &pj, &fwd_store(&mut z[..], zs, &pj, None, false, None));
        let up = UpsampleRows::new(zs, factor, UpsampleMode::Bilinear);
        smaller.push((z, up));
    }
    assert_eq!(y.len(), ys.len(), "conv1x1_concat: y length");
    // Bands of output rows small enough to stay in cache: the upsampled products are summed
    // into the band, then input 0's product, the bias and the epilogue are added by the
    // convolution's store as it writes the band (a 1x1 convolution reads only the band's own
    // pixels of input 0). The output goes to memory once.
    let row_len = ys.w * ys.c;
    let rows = (256 * 1024 / (row_len * std::mem::size_of::<T>()).max(1)).max(1);
    y.par_chunks_mut(rows * row_len).enumerate().for_each(|(band, yb)| {
        yb.fill(T::ZERO);
        for (r, row) in yb.chunks_exact_mut(row_len).enumerate() {
            let nr = band * rows + r;
            for (z, up) in &smaller {
                up.add_row(z, nr / ys.h, nr % ys.h, row);
            }
        }
        let band_rows = yb.len() / row_len;
        let (xb, xbs) = (
            &x0[band * rows * s0.w * s0.c..][..band_rows * s0.w * s0.c],
            Shape4::new(1, band_rows, s0.w, s0.c),
        );
        let ybs = Shape4 { c: p.c_out, ..xbs };
        conv_fwd_into(xb, xbs, &w0, &p0, &fwd_store(yb, ybs, &p0, bias, true, Some(epilogue)));
    });
}

/// Kernel taps `phase, phase + stride, ...` below `k`: how many reach an input pixel whose
/// padded position is `phase` modulo `stride`.
fn phase_taps(k: usize, stride: usize, phase: usize) -> usize {
    if phase >= k {
        0
    } else {
        (k - phase).div_ceil(stride)
    }
}

/// Input gradient: `dx (+)= conv2d_dgrad(dy, w)`, where `dy` has shape `p.out_shape(xs)`.
///
/// Input pixel `(ih, iw)` receives `dy[oh, ow] * w[r, s]` for every `oh * stride + r = ih + pad`
/// (likewise for columns). The pixels whose `ih + pad` and `iw + pad` have the same residues
/// `(ph, pw)` modulo the stride are reached by the same taps `r = ph + stride * i`,
/// `s = pw + stride * m`; taken in reverse order those read consecutive rows and columns of `dy`,
/// so each phase is one direct-convolution pass over a zero-padded `dy`.
pub fn conv2d_dgrad<T: Real>(dy: &[T], w: &[T], p: &ConvParams, dx: &mut [T], xs: Shape4, accumulate: bool) {
    let ys = p.out_shape(xs);
    assert_eq!(dy.len(), ys.len(), "conv2d_dgrad: dy length");
    assert_eq!(w.len(), p.weight_len(), "conv2d_dgrad: weight length");
    assert_eq!(dx.len(), xs.len(), "conv2d_dgrad: dx length");
    let (k, c, st, pad) = (p.c_out, p.c_in, p.stride, p.pad);
    let phases: Vec<(usize, usize)> = (0..st).flat_map(|ph| (0..st).map(move |pw| (ph, pw))).collect();
    let mut accumulate = accumulate;
    if !accumulate
        && phases
            .iter()
            .any(|&(ph, pw)| phase_taps(p.kh, st, ph) * phase_taps(p.kw, st, pw) == 0)
    {
        // Some pixels are reached by no tap (a kernel smaller than its stride): their gradient
        // is zero, and the other phases add onto the zeros.
        dx.fill(T::ZERO);
        accumulate = true;
    }
    // dy padded so that every tap of every phase reads inside it: the first tap of a phase reads
    // `taps - 1` rows above its pixel's last output row, the last up to row (h - 1 + pad) / stride.
    let (top, left) = (p.kh.div_ceil(st) - 1, p.kw.div_ceil(st) - 1);
    let bottom = ((xs.h - 1 + pad) / st + 1).saturating_sub(ys.h);
    let right = ((xs.w - 1 + pad) / st + 1).saturating_sub(ys.w);
    let src = padded(dy, ys, top, bottom, left, right, 0);
    let (hpd, wpd) = (ys.h + top + bottom, ys.w + left + right);
    let patch = p.patch_len();
    let lanes = lanes_for(c);
    let store = Store {
        y: Out(dx.as_mut_ptr()),
        c_out: c,
        bias: None,
        accumulate,
        epilogue: None,
    };
    for (ph, pw) in phases {
        let (mh, mw) = (phase_taps(p.kh, st, ph), phase_taps(p.kw, st, pw));
        // The first input row and column of this phase, and how many there are.
        let (ih0, iw0) = ((ph + st - pad % st) % st, (pw + st - pad % st) % st);
        let count = |first: usize, len: usize| if first < len { (len - 1 - first) / st + 1 } else { 0 };
        let (nh, nw) = (count(ih0, xs.h), count(iw0, xs.w));
        if mh * mw == 0 || nh * nw == 0 {
            continue;
        }
        let run = mw * k;
        // Tap t (reversed) is kernel row ph + st * (mh - 1 - t); run position j = m * k + kk is
        // kernel column pw + st * (mw - 1 - m) of output channel kk.
        let weights = pack(c, mh, run, lanes, |cc, t, j| {
            let (m, kk) = (j / k, j % k);
            let (r, s) = (ph + st * (mh - 1 - t), pw + st * (mw - 1 - m));
            w[kk * patch + (r * p.kw + s) * c + cc]
        });
        // Phase pixel (n, a, b) is input pixel (ih0 + a * st, iw0 + b * st); it reads dy from
        // padded row top + (ih + pad - ph) / st - (mh - 1) = row0 + a, likewise for columns.
        let row0 = top + (ih0 + pad - ph) / st - (mh - 1);
        let col0 = left + (iw0 + pad - pw) / st - (mw - 1);
        let start = PixelMap {
            h: nh,
            w: nw,
            base: (row0 * wpd + col0) * k,
            sn: hpd * wpd * k,
            sa: wpd * k,
            sb: k,
        };
        let dst = PixelMap {
            h: nh,
            w: nw,
            base: ih0 * xs.w + iw0,
            sn: xs.h * xs.w,
            sa: st * xs.w,
            sb: st,
        };
        let pixels = xs.n * nh * nw;
        check_reach(src.len(), start.at(pixels - 1), mh, wpd * k, run);
        let pass = Pass {
            src: &src,
            pixels,
            taps: mh,
            row_step: wpd * k,
            run,
            lanes,
            weights: &weights,
            start,
            dst,
        };
        run_pass(&pass, &store);
    }
}

/// Pixels per chunk of the weight and bias gradients: chunks are summed separately, then in
/// order, so this (a function of the sizes only, never of the threads) fixes the summation.
/// About 1024 pixels, fewer than 64 chunks, and at most 32 Mi values of partial sums.
pub fn wgrad_chunk_pixels(pixels: usize, weight_len: usize) -> usize {
    let max_chunks = (32 * 1024 * 1024 / weight_len.max(1)).clamp(1, 64);
    1024.max(pixels.div_ceil(max_chunks))
}

/// Where the weight gradient's pixels read the padded input: output pixel `(n, oh, ow)` starts
/// at `((n * hp + oh * stride) * wp + ow * stride) * c`, so along one output row the start
/// advances by `stride * c` per pixel.
#[derive(Clone, Copy)]
struct RowGeometry {
    out_h: usize,
    out_w: usize,
    hp: usize,
    wp: usize,
    c: usize,
    stride: usize,
}

impl RowGeometry {
    fn start(&self, pixel: usize) -> usize {
        let (n, oh, ow) = (
            pixel / (self.out_h * self.out_w),
            (pixel / self.out_w) % self.out_h,
            pixel % self.out_w,
        );
        ((n * self.hp + oh * self.stride) * self.wp + ow * self.stride) * self.c
    }
    /// Calls `f(start(p), p)` for each pixel `p` of `pixels` in order, one output row at a time,
    /// so that only a row's first pixel costs divisions: the walk of every weight-gradient tile.
    #[inline(always)]
    fn walk(&self, pixels: Range<usize>, mut f: impl FnMut(usize, usize)) {
        let step = self.stride * self.c;
        let mut p = pixels.start;
        while p < pixels.end {
            let count = (self.out_w - p % self.out_w).min(pixels.end - p);
            let start = self.start(p);
            for i in 0..count {
                f(start + i * step, p + i);
            }
            p += count;
        }
    }
}

/// Weight-gradient tile: run positions `j0..j0 + JB` of kernel row `t` for `L` output channels,
/// summed over `pixels` in order (gradients at `dy[p * ldy + k0..]`), walked by
/// [`RowGeometry::walk`].
///
/// # Safety
/// Every `geometry.start(p) + offset + JB` is inside `src`; `dy` holds `L` values at each
/// `p * ldy + k0`.
#[inline(always)]
unsafe fn wgrad_tile<T: Real, const L: usize, const JB: usize>(
    src: *const T,
    geometry: RowGeometry,
    pixels: Range<usize>,
    offset: usize,
    dy: *const T,
    ldy: usize,
    k0: usize,
) -> [[T; L]; JB] {
    let mut acc = [[T::ZERO; L]; JB];
    geometry.walk(pixels, |x_at, p| {
        // SAFETY: within the bounds the caller guarantees.
        let g: [T; L] = unsafe { *(dy.add(p * ldy + k0) as *const [T; L]) };
        let xr = unsafe { src.add(x_at + offset) };
        for (j, a) in acc.iter_mut().enumerate() {
            let xv = unsafe { *xr.add(j) };
            for (al, gl) in a.iter_mut().zip(&g) {
                *al = xv.mul_add(*gl, *al);
            }
        }
    });
    acc
}

/// The weight gradient's operands: the padded input, the (channel-padded) output gradient and
/// the geometry of the runs.
struct WgradPass<'a, T> {
    src: &'a [T],
    geometry: RowGeometry,
    row_step: usize,
    run: usize,
    dy: &'a [T],
    ldy: usize,
}

/// A weight-gradient tile function: [`wgrad_tile`] or one of its vector-intrinsic twins.
type WgradTile<T, const L: usize, const JB: usize> =
    unsafe fn(*const T, RowGeometry, Range<usize>, usize, *const T, usize, usize) -> [[T; L]; JB];

/// One job of the weight gradient: pixel chunk `pixels`, channel block `b`, kernel row `t`,
/// every run position, into `out` (`run * L` values, `[j][l]`).
fn wgrad_job<T: Real, const L: usize, const JB: usize>(
    pass: &WgradPass<'_, T>,
    pixels: Range<usize>,
    b: usize,
    t: usize,
    out: &mut [T],
    tile: WgradTile<T, L, JB>,
) {
    for j0 in (0..pass.run).step_by(JB) {
        // SAFETY: the caller padded `src` with JB values of slack and `dy` to whole blocks.
        let acc = unsafe {
            tile(
                pass.src.as_ptr(),
                pass.geometry,
                pixels.clone(),
                t * pass.row_step + j0,
                pass.dy.as_ptr(),
                pass.ldy,
                b * L,
            )
        };
        for (j, a) in acc.iter().enumerate().take(pass.run - j0) {
            out[(j0 + j) * L..(j0 + j + 1) * L].copy_from_slice(a);
        }
    }
}

/// Run positions per weight-gradient tile for `lanes` on `isa`.
const fn wgrad_tile_runs(isa: Isa, lanes: usize) -> usize {
    match (isa, lanes) {
        (Isa::Avx512, 16) => 12,
        (Isa::Avx512, _) => 12,
        (Isa::Avx2, 16) => 6,
        (Isa::Avx2, _) => 12,
        (Isa::Baseline, 16) => 4,
        (Isa::Baseline, _) => 8,
    }
}

/// The largest run positions per tile of any instruction set: the slack the padded input needs.
const MAX_TILE_RUNS: usize = 16;

/// Weight gradient `dw = sum over pixels of dy^T * patches` (overwrites `dw`, KRSC).
pub fn conv2d_wgrad<T: Real>(x: &[T], xs: Shape4, dy: &[T], p: &ConvParams, dw: &mut [T]) {
    let ys = p.out_shape(xs);
    assert_eq!(x.len(), xs.len(), "conv2d_wgrad: x length");
    assert_eq!(dy.len(), ys.len(), "conv2d_wgrad: dy length");
    assert_eq!(dw.len(), p.weight_len(), "conv2d_wgrad: dw length");
    let (k, pixels) = (p.c_out, ys.pixels());
    if pixels == 0 {
        dw.fill(T::ZERO);
        return;
    }
    let pad = p.pad;
    let src = padded(x, xs, pad, pad, pad, pad, MAX_TILE_RUNS);
    let (hp, wp, c) = (xs.h + 2 * pad, xs.w + 2 * pad, xs.c);
    let (run, patch) = (p.kw * c, p.patch_len());
    let lanes = lanes_for(k);
    let blocks = k.div_ceil(lanes);
    // The output gradient with its channels padded to whole blocks, unless they already are.
    let kp = blocks * lanes;
    let dy_padded;
    let dyv: &[T] = if kp == k {
        dy
    } else {
        let mut d = scratch::zeroed::<T>(pixels * kp);
        d.par_chunks_mut(kp)
            .zip(dy.par_chunks(k))
            .for_each(|(dst, row)| dst[..k].copy_from_slice(row));
        dy_padded = d;
        &dy_padded
    };
    let geometry = RowGeometry {
        out_h: ys.h,
        out_w: ys.w,
        hp,
        wp,
        c,
        stride: p.stride,
    };
    check_reach(src.len(), geometry.start(pixels - 1), p.kh, wp * c, run + MAX_TILE_RUNS);
    let pass = WgradPass {
        src: &src,
        geometry,
        row_step: wp * c,
        run,
        dy: dyv,
        ldy: kp,
    };
    let chunk = wgrad_chunk_pixels(pixels, p.weight_len());
    let chunks = pixels.div_ceil(chunk);
    // Partial sums per chunk, laid out [chunk][block][tap][run][lanes]: one job per
    // (chunk, block, tap) writes its own run * lanes values.
    let job_len = run * lanes;
    let mut partial = scratch::take::<T>(chunks * blocks * p.kh * job_len);
    let isa = isa();
    partial.par_chunks_mut(job_len).enumerate().for_each(|(job, out)| {
        let (ch, b, t) = (job / (blocks * p.kh), (job / p.kh) % blocks, job % p.kh);
        let px = ch * chunk..((ch + 1) * chunk).min(pixels);
        #[cfg(target_arch = "x86_64")]
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && isa != Isa::Baseline {
            // SAFETY: T is f32 (checked above), so these are the same types.
            let pass = unsafe { &*(&pass as *const WgradPass<'_, T>).cast::<WgradPass<'_, f32>>() };
            let out: &mut [f32] = bytemuck::cast_slice_mut(out);
            // The function pointers are only called on CPUs that support them: `isa()` only
            // returns instruction sets this CPU supports.
            match (isa, lanes) {
                (Isa::Avx512, 16) => {
                    wgrad_job::<f32, 16, { wgrad_tile_runs(Isa::Avx512, 16) }>(pass, px, b, t, out, x86::wgrad_avx512)
                }
                (Isa::Avx512, _) => {
                    wgrad_job::<f32, 8, { wgrad_tile_runs(Isa::Avx512, 8) }>(pass, px, b, t, out, x86::wgrad_avx512_ymm)
                }
                (_, 16) => {
                    wgrad_job::<f32, 16, { wgrad_tile_runs(Isa::Avx2, 16) }>(pass, px, b, t, out, x86::wgrad_avx2)
                }
                _ => wgrad_job::<f32, 8, { wgrad_tile_runs(Isa::Avx2, 8) }>(pass, px, b, t, out, x86::wgrad_avx2),
            }
            return;
        }
        match lanes {
            16 => wgrad_job::<T, 16, { wgrad_tile_runs(Isa::Baseline, 16) }>(&pass, px, b, t, out, wgrad_tile),
            _ => wgrad_job::<T, 8, { wgrad_tile_runs(Isa::Baseline, 8) }>(&pass, px, b, t, out, wgrad_tile),
        }
    });
    // dw[ki][t][j] = the chunks' partial sums, added in chunk order.
    let per_chunk = blocks * p.kh * job_len;
    dw.par_chunks_mut(patch).enumerate().for_each(|(ki, row)| {
        let (b, l) = (ki / lanes, ki % lanes);
        for (tj, v) in row.iter_mut().enumerate() {
            let (t, j) = (tj / run, tj % run);
            let at = ((b * p.kh + t) * run + j) * lanes + l;
            let mut sum = partial[at];
            for ch in 1..chunks {
                sum = sum + partial[ch * per_chunk + at];
            }
            *v = sum;
        }
    });
}

/// Bias gradient: `db[k] = sum over pixels of dy[.., k]` (overwrites `db`), summed per chunk of
/// [`wgrad_chunk_pixels`] pixels in f64, then over the chunks in order.
pub fn conv2d_bias_grad<T: Real>(dy: &[T], ys: Shape4, db: &mut [T]) {
    assert_eq!(dy.len(), ys.len(), "conv2d_bias_grad: dy length");
    assert_eq!(db.len(), ys.c, "conv2d_bias_grad: db length");
    let k = ys.c;
    let chunk = wgrad_chunk_pixels(ys.pixels(), k);
    let partial: Vec<Vec<f64>> = dy
        .par_chunks((chunk * k).max(1))
        .map(|rows| {
            let mut s = vec![0.0f64; k];
            for row in rows.chunks_exact(k) {
                s.iter_mut().zip(row).for_each(|(a, &v)| *a += v.to_f64());
            }
            s
        })
        .collect();
    for (i, d) in db.iter_mut().enumerate() {
        *d = T::from_f64(partial.iter().map(|s| s[i]).fold(0.0, |a, v| a + v));
    }
}

/// Transposed convolution `y = conv_transpose2d(x, w)`; `w` is `[c_in][kh][kw][c_out]`, `y` has
/// shape `p.transposed_out_shape(xs)`. It is the input gradient of the adjoint convolution.
pub fn conv_transpose2d_fwd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, y: &mut [T]) {
    let ys = p.transposed_out_shape(xs);
    conv2d_dgrad(x, w, &p.adjoint(), y, ys, false);
}

/// Input gradient of the transposed convolution: the adjoint convolution's forward.
pub fn conv_transpose2d_dgrad<T: Real>(dy: &[T], w: &[T], p: &ConvParams, dx: &mut [T], xs: Shape4, accumulate: bool) {
    let ys = p.transposed_out_shape(xs);
    let adjoint = p.adjoint();
    let store = fwd_store(dx, adjoint.out_shape(ys), &adjoint, None, accumulate, None);
    conv_fwd_into(dy, ys, w, &adjoint, &store);
}

/// Weight gradient of the transposed convolution (overwrites `dw`, `[c_in][kh][kw][c_out]`).
pub fn conv_transpose2d_wgrad<T: Real>(x: &[T], xs: Shape4, dy: &[T], p: &ConvParams, dw: &mut [T]) {
    let ys = p.transposed_out_shape(xs);
    // In the adjoint convolution dy is the input and x the output gradient.
    conv2d_wgrad(dy, ys, x, &p.adjoint(), dw);
}
