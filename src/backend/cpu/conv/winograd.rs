//! Winograd's minimal filtering F(2x2, 3x3) for the inference forward of 3x3, stride-1, pad-1
//! convolutions (docs/maths.md, "Winograd convolution"), the bulk of HRNet's work.
//!
//! Output pixels are taken in 2x2 *tiles*. A tile depends on the 4x4 input patch `d` around it,
//! and for one input channel `c` and output channel `k`
//! `Y = A^T [(G g G^T) ⊙ (B^T d B)] A`
//! with `g` the 3x3 kernel. Summed over the input channels, the elementwise product becomes, for
//! each of the 16 positions `ξ` of the 4x4 transform domain, a matrix product: `M[ξ][tile][k] =
//! Σ_c V[ξ][tile][c] U[ξ][c][k]` with `V = B^T d B` and `U = G g G^T`. That product is what the
//! direct convolution's register tile ([`super::dot_tile`] and its intrinsic twins) computes for
//! a pass with one tap whose run is a tile's `c_in` values of `V` at `ξ`; so Winograd reuses it.
//! A tile costs 16 multiply-adds per input and output channel instead of the direct sum's 36:
//! 2.25x fewer.
//!
//! The transforms' coefficients are 0, ±1 and ±1/2, so `B^T d B` and `A^T m A` are additions
//! only and `G g G^T` is exact up to the additions' rounding. The rounding differs from the
//! direct sum's (inputs are combined before they are multiplied), by a few units of f32's last
//! place relative to the size of the terms (tests/backend_ops.rs measures it); every
//! output element is still one fixed chain of operations, so the results do not depend on the
//! instruction set or the thread count.
//!
//! A job transforms a run of tiles' inputs into a buffer sized for the core's L2, then for each
//! block of `L` output channels forms the 16 products and transforms each tile's 16 results
//! back into its 4 output pixels, which go through the same [`Store`] (bias, folded batch norm,
//! residual, ReLU) as the direct path.
use std::ops::Range;

use rayon::prelude::*;

use super::super::scratch::{self, Scratch};
use super::{fwd_store, lanes_for, tile_isa, tile_pixels, with_dot_tile, DotTile, Real, Store};
use crate::backend::cpu::simd::for_each_isa;
use crate::backend::{ConvParams, Shape4};

/// Positions of the 4x4 transform domain.
const XI: usize = 16;

/// Whether the inference forward runs `p` with Winograd: a 3x3 kernel at stride 1 and padding 1
/// (the output has the input's size), on enough input channels that the transforms are cheap
/// against the products, and up to 256 x 256 channels: every job reads all the transformed
/// weights (4 MiB in f32 at that width, the widest layer measured faster than the direct sum;
/// BENCHMARKS.md, "CPU backend against PyTorch and onnxruntime").
pub fn suits(p: &ConvParams) -> bool {
    p.kh == 3 && p.kw == 3 && p.stride == 1 && p.pad == 1 && p.c_in >= 8 && p.c_in * p.c_out <= 256 * 256
}

/// `U = G g G^T` of every kernel (output channel `k`, input channel `c`), packed for the register
/// tile as `[L-block][ξ][c][L]`: each `ξ` of a block is one tap of `c_in` run positions. The
/// padding lanes past `c_out` are zero.
fn transform_weights<T: Real>(w: &[T], p: &ConvParams, lanes: usize) -> Scratch<T> {
    let c_in = p.c_in;
    let half = T::from_f64(0.5);
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] applied to three values.
    let g3 = |a: T, b: T, c: T| [a, half * (a + b + c), half * (a - b + c), c];
    let blocks = p.c_out.div_ceil(lanes);
    let mut u = scratch::take::<T>(blocks * XI * c_in * lanes);
    u.par_chunks_mut(XI * c_in * lanes).enumerate().for_each(|(b, ub)| {
        for l in 0..lanes {
            let k = b * lanes + l;
            for c in 0..c_in {
                let mut v = [T::ZERO; XI];
                if k < p.c_out {
                    let g = |r: usize, s: usize| w[(k * 9 + r * 3 + s) * c_in + c];
                    // G g: four rows of three; then each row times G^T.
                    let cols: [[T; 4]; 3] = [0, 1, 2].map(|s| g3(g(0, s), g(1, s), g(2, s)));
                    for i in 0..4 {
                        v[4 * i..4 * i + 4].copy_from_slice(&g3(cols[0][i], cols[1][i], cols[2][i]));
                    }
                }
                for (xi, &v) in v.iter().enumerate() {
                    ub[(xi * c_in + c) * lanes + l] = v;
                }
            }
        }
    });
    u
}

/// `B^T d B` of one tile for the `CH` channels from `c0`: `d[4 * a + b]` holds the `c_in`
/// channels of the input pixel at row `a`, column `b` of the tile's 4x4 patch (zeros outside the
/// image); `v` receives position `ξ = 4 * row + column` at `v[ξ * stride + c0..][..CH]`.
///
/// Written over `CH`-value arrays, each step one vector operation.
#[inline(always)]
fn input_transform<T: Real, const CH: usize>(d: &[&[T]; XI], v: &mut [T], stride: usize, c0: usize) {
    // (Plain functions, not closures: a closure is not always inlined, and then runs without the
    // caller's instruction set.)
    #[inline(always)]
    fn load<T: Real, const CH: usize>(d: &[T], c0: usize) -> [T; CH] {
        let mut x = [T::ZERO; CH];
        x.copy_from_slice(&d[c0..c0 + CH]);
        x
    }
    // B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], applied to x0..x3.
    #[inline(always)]
    fn bt<T: Real, const CH: usize>(x0: &[T; CH], x1: &[T; CH], x2: &[T; CH], x3: &[T; CH], out: &mut [[T; CH]]) {
        for l in 0..CH {
            out[0][l] = x0[l] - x2[l];
            out[1][l] = x1[l] + x2[l];
            out[2][l] = x2[l] - x1[l];
            out[3][l] = x1[l] - x3[l];
        }
    }
    // Down the columns (t[4 * b + i] is row i of B^T d, column b), then along the rows.
    let mut t = [[T::ZERO; CH]; XI];
    for b in 0..4 {
        let (x0, x1, x2, x3) = (
            load(d[b], c0),
            load(d[4 + b], c0),
            load(d[8 + b], c0),
            load(d[12 + b], c0),
        );
        bt(&x0, &x1, &x2, &x3, &mut t[4 * b..4 * b + 4]);
    }
    let mut row = [[T::ZERO; CH]; 4];
    for i in 0..4 {
        bt(&t[i], &t[4 + i], &t[8 + i], &t[12 + i], &mut row);
        for (j, r) in row.iter().enumerate() {
            v[(4 * i + j) * stride + c0..][..CH].copy_from_slice(r);
        }
    }
}

/// `A^T m A` of one tile's 16 products (`m[ξ * stride]`, `L` output channels each): its output
/// pixels (0, 0), (0, 1), (1, 0), (1, 1).
#[inline(always)]
fn output_transform<T: Real, const L: usize>(m: &[[T; L]], stride: usize, y: &mut [[T; L]; 4]) {
    let mut mv = [[T::ZERO; L]; XI];
    for (xi, v) in mv.iter_mut().enumerate() {
        *v = m[xi * stride];
    }
    for l in 0..L {
        // A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: down the columns, then along the rows.
        let mut c = [[T::ZERO; 2]; 4];
        for (j, c) in c.iter_mut().enumerate() {
            let (m0, m1, m2, m3) = (mv[j][l], mv[4 + j][l], mv[8 + j][l], mv[12 + j][l]);
            *c = [m0 + m1 + m2, m1 - m2 - m3];
        }
        for i in 0..2 {
            y[2 * i][l] = c[0][i] + c[1][i] + c[2][i];
            y[2 * i + 1][l] = c[1][i] - c[2][i] - c[3][i];
        }
    }
}

/// A Winograd forward: the input, its tile grid and the transformed, packed weights.
struct WinogradPass<'a, T> {
    x: &'a [T],
    xs: Shape4,
    /// Tiles per row and per column of an image.
    tiles_w: usize,
    tiles_h: usize,
    u: &'a [T],
    zeros: &'a [T],
}

/// Tiles `tiles` of the pass, every output channel: input transform, the 16 products per block
/// of `L` channels, output transform and store.
#[inline(always)]
fn winograd_job<T: Real, const L: usize, const PX: usize>(
    pass: &WinogradPass<'_, T>,
    store: &Store<'_, T>,
    tiles: Range<usize>,
    kernel: DotTile<T, L, PX>,
) {
    let (xs, c_in) = (pass.xs, pass.xs.c);
    let per_image = pass.tiles_h * pass.tiles_w;
    // Tile t is image n, tile row ty, tile column tx; its 4x4 patch starts one pixel above and
    // left of output pixel (2 ty, 2 tx).
    let place = |t: usize| (t / per_image, (t / pass.tiles_w) % pass.tiles_h, t % pass.tiles_w);
    let count = tiles.len();
    let mut v = scratch::take::<T>(count * XI * c_in);
    for (i, t) in tiles.clone().enumerate() {
        let (n, ty, tx) = place(t);
        let mut d: [&[T]; XI] = [pass.zeros; XI];
        for (ab, d) in d.iter_mut().enumerate() {
            let (y, x) = ((2 * ty + ab / 4).wrapping_sub(1), (2 * tx + ab % 4).wrapping_sub(1));
            if y < xs.h && x < xs.w {
                *d = &pass.x[((n * xs.h + y) * xs.w + x) * c_in..][..c_in];
            }
        }
        // Position ξ of every tile is one run of `count * c_in` values, so a register tile's
        // consecutive tiles read consecutive rows.
        let (stride, vt) = (count * c_in, &mut v[i * c_in..]);
        let mut c0 = 0;
        while c0 + 16 <= c_in {
            input_transform::<T, 16>(&d, vt, stride, c0);
            c0 += 16;
        }
        while c0 + 4 <= c_in {
            input_transform::<T, 4>(&d, vt, stride, c0);
            c0 += 4;
        }
        for c in c0..c_in {
            input_transform::<T, 1>(&d, vt, stride, c);
        }
    }
    // The products, `[ξ][tile][L]` with room for whole register tiles, so that each tile's
    // results land in place.
    let padded = count.next_multiple_of(PX);
    let mut m = vec![[T::ZERO; L]; XI * padded];
    let mut y = [[T::ZERO; L]; 4];
    let block_len = XI * c_in * L;
    for b in 0..store.c_out.div_ceil(L) {
        let u = &pass.u[b * block_len..][..block_len];
        for xi in 0..XI {
            for g in (0..count).step_by(PX) {
                let valid = PX.min(count - g);
                // Tiles past the job's end repeat its first: computed, never kept.
                let mut starts = [(xi * count + g) * c_in; PX];
                for (px, s) in starts.iter_mut().enumerate().take(valid) {
                    *s = (xi * count + g + px) * c_in;
                }
                let out: &mut [[T; L]; PX] = (&mut m[xi * padded + g..][..PX]).try_into().expect("PX tiles");
                // SAFETY: every start plus c_in is inside v (count tiles of XI * c_in values),
                // and u holds XI taps of c_in * L values.
                *out = unsafe { kernel(v.as_ptr(), &starts, 1, 0, c_in, u.as_ptr().add(xi * c_in * L)) };
            }
        }
        for (i, t) in tiles.clone().enumerate() {
            let (n, ty, tx) = place(t);
            output_transform(&m[i..], padded, &mut y);
            for (q, yq) in y.iter().enumerate() {
                let (oy, ox) = (2 * ty + q / 2, 2 * tx + q % 2);
                if oy < xs.h && ox < xs.w {
                    // SAFETY: an output pixel of this job's tiles only; no other job has it.
                    unsafe { store.put((n * xs.h + oy) * xs.w + ox, b * L, yq) };
                }
            }
        }
    }
}

for_each_isa!(winograd_isa: winograd_job<L, PX>(
    pass: &WinogradPass<'_, T>,
    store: &Store<'_, T>,
    tiles: Range<usize>,
    kernel: DotTile<T, L, PX>,
));

/// The forward of a convolution that [`suits`] Winograd, stored through `store` (whose `c_out`
/// is `p.c_out`). `x` is NHWC `xs`, `w` KRSC.
pub(super) fn conv_fwd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, store: &Store<'_, T>) {
    debug_assert!(suits(p));
    assert_eq!(x.len(), xs.len(), "conv2d_fwd (Winograd): x length");
    assert_eq!(w.len(), p.weight_len(), "conv2d_fwd (Winograd): weight length");
    let lanes = lanes_for(p.c_out);
    let u = transform_weights(w, p, lanes);
    let zeros = scratch::zeroed::<T>(xs.c);
    let (tiles_h, tiles_w) = (xs.h.div_ceil(2), xs.w.div_ceil(2));
    let tiles = xs.n * tiles_h * tiles_w;
    if tiles == 0 {
        return;
    }
    let pass = WinogradPass {
        x,
        xs,
        tiles_w,
        tiles_h,
        u: &u,
        zeros: &zeros,
    };
    let isa = tile_isa::<T>();
    let px = tile_pixels(isa, lanes);
    // Tiles per job: their transformed inputs (16 values per channel) fill about 128 KiB, half of
    // a core's L2, in whole register tiles.
    let fit = 128 * 1024 / (XI * xs.c * std::mem::size_of::<T>());
    let per_job = (fit / px).max(1) * px;
    let jobs = tiles.div_ceil(per_job);
    (0..jobs).into_par_iter().for_each(|j| {
        let t = j * per_job..((j + 1) * per_job).min(tiles);
        with_dot_tile!(winograd_isa::<T>(isa, lanes; &pass, store; t));
    });
}

/// `y = conv2d(x, w)` by Winograd for a convolution that [`suits`] it, with no bias or epilogue:
/// for tests and benchmarks against [`super::conv2d_fwd`].
pub fn conv2d_fwd_winograd<T: Real>(x: &[T], xs: Shape4, w: &[T], p: &ConvParams, y: &mut [T]) {
    assert!(
        suits(p),
        "conv2d_fwd_winograd: {p:?} is not a 3x3 stride-1 pad-1 convolution"
    );
    conv_fwd(x, xs, w, p, &fwd_store(y, p.out_shape(xs), p, None, false, None));
}
