//! The convolution register tiles in f32 with explicit x86 vector intrinsics: the twins of
//! [`super::dot_tile`] and [`super::wgrad_tile`] that the CPU runs when it has AVX2 or AVX-512.
//!
//! Written as plain Rust over arrays, LLVM sometimes vectorizes the wrong loop (seen: the weight
//! gradient's pixel loop, with gathers and scatters of the accumulators, at 1 % of the FMA peak,
//! and the 8-lane forward tile at 4 %). With intrinsics the accumulators are registers by
//! construction. Each lane computes exactly what the plain tile computes (`acc = x * w + acc`,
//! fused, in the same order), so the results are bit-identical to it.

use std::arch::x86_64::*;
use std::ops::Range;

use super::RowGeometry;

/// `L = 16` lanes in one 512-bit register per run position.
///
/// # Safety
/// As [`super::wgrad_tile`], and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn wgrad_avx512<const JB: usize>(
    src: *const f32,
    geometry: RowGeometry,
    pixels: Range<usize>,
    offset: usize,
    dy: *const f32,
    ldy: usize,
    k0: usize,
) -> [[f32; 16]; JB] {
    let mut acc = [_mm512_setzero_ps(); JB];
    geometry.walk(pixels, |x_at, p| {
        // SAFETY: within the bounds the caller guarantees.
        let g = unsafe { _mm512_loadu_ps(dy.add(p * ldy + k0)) };
        let xr = unsafe { src.add(x_at + offset) };
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *xr.add(j) }), g, *a);
        }
    });
    let mut out = [[0.0f32; 16]; JB];
    for (o, a) in out.iter_mut().zip(&acc) {
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// `L = 8` or `16` lanes in one or two 256-bit registers per run position.
#[inline(always)]
unsafe fn wgrad_ymm<const L: usize, const JB: usize>(
    src: *const f32,
    geometry: RowGeometry,
    pixels: Range<usize>,
    offset: usize,
    dy: *const f32,
    ldy: usize,
    k0: usize,
) -> [[f32; L]; JB] {
    let mut acc = [[_mm256_setzero_ps(); 2]; JB];
    geometry.walk(pixels, |x_at, p| {
        // SAFETY: within the bounds the caller guarantees.
        let gs = unsafe { dy.add(p * ldy + k0) };
        let g: [__m256; 2] = std::array::from_fn(|h| {
            if h < L / 8 {
                unsafe { _mm256_loadu_ps(gs.add(8 * h)) }
            } else {
                unsafe { _mm256_setzero_ps() }
            }
        });
        let xr = unsafe { src.add(x_at + offset) };
        for (j, a) in acc.iter_mut().enumerate() {
            let xv = unsafe { _mm256_set1_ps(*xr.add(j)) };
            for (ah, gh) in a.iter_mut().zip(&g).take(L / 8) {
                *ah = unsafe { _mm256_fmadd_ps(xv, *gh, *ah) };
            }
        }
    });
    let mut out = [[0.0f32; L]; JB];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (h, ah) in a.iter().enumerate().take(L / 8) {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), *ah) };
        }
    }
    out
}

/// # Safety
/// As [`super::wgrad_tile`], and the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn wgrad_avx2<const L: usize, const JB: usize>(
    src: *const f32,
    geometry: RowGeometry,
    pixels: Range<usize>,
    offset: usize,
    dy: *const f32,
    ldy: usize,
    k0: usize,
) -> [[f32; L]; JB] {
    unsafe { wgrad_ymm::<L, JB>(src, geometry, pixels, offset, dy, ldy, k0) }
}

/// 256-bit registers with AVX-512's 32 of them (the 8-lane tile).
///
/// # Safety
/// As [`super::wgrad_tile`], and the CPU supports AVX-512F/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn wgrad_avx512_ymm<const L: usize, const JB: usize>(
    src: *const f32,
    geometry: RowGeometry,
    pixels: Range<usize>,
    offset: usize,
    dy: *const f32,
    ldy: usize,
    k0: usize,
) -> [[f32; L]; JB] {
    unsafe { wgrad_ymm::<L, JB>(src, geometry, pixels, offset, dy, ldy, k0) }
}

/// [`super::dot_tile`] with `L = 16` lanes in one 512-bit register per pixel.
///
/// # Safety
/// As [`super::dot_tile`], and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_avx512<const PX: usize>(
    src: *const f32,
    starts: &[usize; PX],
    taps: usize,
    row_step: usize,
    run: usize,
    w: *const f32,
) -> [[f32; 16]; PX] {
    let mut acc = [_mm512_setzero_ps(); PX];
    for t in 0..taps {
        // SAFETY (all pointer arithmetic below): within the bounds the caller guarantees.
        let rows: [*const f32; PX] = std::array::from_fn(|px| unsafe { src.add(starts[px] + t * row_step) });
        let wt = unsafe { w.add(t * run * 16) };
        for j in 0..run {
            let wv = unsafe { _mm512_loadu_ps(wt.add(j * 16)) };
            for (a, row) in acc.iter_mut().zip(&rows) {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *row.add(j) }), wv, *a);
            }
        }
    }
    let mut out = [[0.0f32; 16]; PX];
    for (o, a) in out.iter_mut().zip(&acc) {
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// [`super::dot_tile`] with `L = 8` or `16` lanes in one or two 256-bit registers per pixel.
#[inline(always)]
unsafe fn dot_ymm<const L: usize, const PX: usize>(
    src: *const f32,
    starts: &[usize; PX],
    taps: usize,
    row_step: usize,
    run: usize,
    w: *const f32,
) -> [[f32; L]; PX] {
    let mut acc = [[_mm256_setzero_ps(); 2]; PX];
    for t in 0..taps {
        // SAFETY (all pointer arithmetic below): within the bounds the caller guarantees.
        let rows: [*const f32; PX] = std::array::from_fn(|px| unsafe { src.add(starts[px] + t * row_step) });
        let wt = unsafe { w.add(t * run * L) };
        for j in 0..run {
            let wv: [__m256; 2] = std::array::from_fn(|h| unsafe {
                if h < L / 8 {
                    _mm256_loadu_ps(wt.add(j * L + 8 * h))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (a, row) in acc.iter_mut().zip(&rows) {
                let xv = unsafe { _mm256_set1_ps(*row.add(j)) };
                for (ah, wh) in a.iter_mut().zip(&wv).take(L / 8) {
                    *ah = unsafe { _mm256_fmadd_ps(xv, *wh, *ah) };
                }
            }
        }
    }
    let mut out = [[0.0f32; L]; PX];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (h, ah) in a.iter().enumerate().take(L / 8) {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), *ah) };
        }
    }
    out
}

/// # Safety
/// As [`super::dot_tile`], and the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2<const L: usize, const PX: usize>(
    src: *const f32,
    starts: &[usize; PX],
    taps: usize,
    row_step: usize,
    run: usize,
    w: *const f32,
) -> [[f32; L]; PX] {
    unsafe { dot_ymm::<L, PX>(src, starts, taps, row_step, run, w) }
}

/// 256-bit registers with AVX-512's 32 of them (the 8-lane tile).
///
/// # Safety
/// As [`super::dot_tile`], and the CPU supports AVX-512F/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub unsafe fn dot_avx512_ymm<const L: usize, const PX: usize>(
    src: *const f32,
    starts: &[usize; PX],
    taps: usize,
    row_step: usize,
    run: usize,
    w: *const f32,
) -> [[f32; L]; PX] {
    unsafe { dot_ymm::<L, PX>(src, starts, taps, row_step, run, w) }
}
