// Weight gradient (wgrad) of the NHWC fp16 convolution, on tensor cores, deterministic.
// CPU twins: conv2d_wgrad, conv2d_bias_grad and conv_transpose2d_wgrad in
// src/backend/cpu/conv.rs. Wrappers: src/backend/cuda/conv_wgrad.rs.
//
// The GEMM: dW[m][n] = sum over output pixels k of dy[k][m] * patch[k][n], with
//   M = c_out, N = kh*kw*c_in (n = (r*kw + s)*c_in + c, the KRSC order of the weight),
//   K = batch*P*Q output pixels, patch[k][n] = x[img][oh*stride + r - pad][ow*stride + s - pad][c]
//   (zero outside the image). K is long (147456 at HRNet's top branch) and M*N small, so the
//   pixels are split over gridDim.z ("split-K"): split z writes its own fp32 partial tile to a
//   workspace, and conv_wgrad_reduce_f32 adds the splits in a fixed order. Nothing is atomic, the
//   split count is a function of the shape only (the wrapper's plan), so every result bit is the
//   same on every run and every GPU.
//
// Both operands are pixel-major in memory ("K-outer"): a stage copies a BK x BM tile of dy and a
// BK x BN tile of gathered patches into shared memory as they lie (rows = pixels), then
// ldmatrix .trans turns 8x8 blocks of them into the A (M x K, row-major) and B (K x N) fragments
// of mma.m16n8k16 (layouts in mma.cuh). Rows are padded by 8 halves (16 bytes): the eight row
// addresses of one ldmatrix then fall in eight different 16-byte bank groups, without conflicts.
//
// Two loaders per operand, chosen at compile time (dy by c_out, x by c_in):
// - vector (channels % 8 == 0, 16-byte aligned tensor): each 8-channel chunk of a
//   row is one 16-byte cp.async (zero-filled out of the image or past the split's pixels), in a
//   STAGES-deep pipeline. A thread always loads the same column chunk, so its tap (r, s, c) is
//   decoded once; the pixel of each of its rows is tracked incrementally from stage to stage.
// - scalar (any channel counts: the 1-channel stem, HRNet-W18's 18/36, the head's 29): element by
//   element through registers, each thread with a fixed pixel row and the taps of the tile's
//   columns decoded once into a shared table.
// Both fill the same shared tiles, so every combination gives identical bits.
#include "common.cuh"
#include "mma.cuh"

#define WG_BK 32  // pixels per pipeline stage: two k16 steps of the MMA

// Dynamic shared memory; see wgrad_smem_bytes.
#define WG_SMEM_DECL extern __shared__ __align__(16) unsigned char wgrad_smem[];

// Bytes of dynamic shared memory a tile configuration needs: the pipeline stages, or the fp32
// tile used to add the K-split warps' accumulators, whichever is larger, then the scalar
// loader's column table (2 ints per column). Mirrored by `Tile::smem_bytes` in the wrapper.
__host__ __device__ constexpr int wgrad_smem_bytes(int bm, int bn, int stages, int warps_k) {
    return ((stages * WG_BK * ((bm + 8) + (bn + 8)) * 2) > (warps_k > 1 ? bm * bn * 4 : 0)
                ? (stages * WG_BK * ((bm + 8) + (bn + 8)) * 2)
                : bm * bn * 4) +
           bn * 8;
}

// Geometry of the convolution, as the kernels take it.
struct WgradGeom {
    int h, w, c;   // input height, width, channels (c_in)
    int p, q, k;   // output height, width, channels (c_out = M)
    int r, s;      // kernel height, width
    int stride, pad;
    int npix;      // batch * p * q = K
    int ncols;     // r * s * c = N
};

// The output pixel `pix` of a row, and where its patch starts in the input (ih0, iw0 may be
// negative: padding), tracked incrementally as the row moves forward by WG_BK pixels per stage.
struct PixelCursor {
    int pix, img, oh, ow;

    __device__ __forceinline__ void init(int pixel, const WgradGeom& g) {
        pix = pixel;
        ow = pixel % g.q;
        const int t = pixel / g.q;
        oh = t % g.p;
        img = t / g.p;
    }
    // pix += WG_BK with at most two divisions, only when the row wraps.
    __device__ __forceinline__ void advance(const WgradGeom& g) {
        pix += WG_BK;
        ow += WG_BK;
        if (ow >= g.q) {
            const int carry = ow / g.q;
            ow -= carry * g.q;
            oh += carry;
            if (oh >= g.p) {
                const int c2 = oh / g.p;
                oh -= c2 * g.p;
                img += c2;
            }
        }
    }
    __device__ __forceinline__ int ih0(const WgradGeom& g) const { return oh * g.stride - g.pad; }
    __device__ __forceinline__ int iw0(const WgradGeom& g) const { return ow * g.stride - g.pad; }
    // Input pixel index (img, ih0, iw0), which may lie outside the image; only combined with a
    // tap that brings it inside is it dereferenced.
    __device__ __forceinline__ long long base(const WgradGeom& g) const {
        return ((long long)img * g.h + ih0(g)) * g.w + iw0(g);
    }
};

// One CTA computes the BM x BN tile (blockIdx.y, blockIdx.x) of dW over split blockIdx.z's
// pixels. Warps are WARPS_M x WARPS_N x WARPS_K: each owns a (BM/WARPS_M) x (BN/WARPS_N) block of
// the tile and, when WARPS_K == 2, one of the two k16 halves of every stage (the halves' sums are
// added through shared memory at the end, in a fixed order).
template <int BM, int BN, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES, bool VEC_A, bool VEC_B>
__device__ __forceinline__ void wgrad_tile(const __half* __restrict__ x, const __half* __restrict__ dy,
                                           float* __restrict__ out, const WgradGeom g, int steps_per_split) {
    constexpr int THREADS = 32 * WARPS_M * WARPS_N * WARPS_K;
    constexpr int LDA = BM + 8, LDB = BN + 8;  // padded row lengths in halves
    constexpr int STAGE_HALVES = WG_BK * (LDA + LDB);
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
    constexpr int MT = WTM / 16, NT = WTN / 8;            // m16 and n8 MMA tiles per warp
    constexpr int KSTEPS = 2 / WARPS_K;                   // k16 steps per warp per stage
    static_assert(WARPS_K == 1 || WARPS_K == 2, "a stage has two k16 steps");
    static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tiles are whole m16 x n16 blocks");
    static_assert(THREADS % (BM / 8) == 0 && THREADS % (BN / 8) == 0, "fixed column chunk per thread");
    static_assert(THREADS % BM == 0 && THREADS % WG_BK == 0 && BN % (THREADS / WG_BK) == 0, "scalar loader layout");

    WG_SMEM_DECL
    __half* const smem = reinterpret_cast<__half*>(wgrad_smem);
    int* const col_table = reinterpret_cast<int*>(wgrad_smem + wgrad_smem_bytes(BM, BN, STAGES, WARPS_K) - BN * 8);

#ifndef CEPHALO_KERNEL_SIM
    {
        // A launch with less dynamic shared memory than this configuration uses is a wrapper bug
        // that would silently corrupt memory: stop it loudly instead.
        uint32_t dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (uint32_t)wgrad_smem_bytes(BM, BN, STAGES, WARPS_K)) __trap();
    }
#endif

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int warp_m = warp % WARPS_M, warp_n = (warp / WARPS_M) % WARPS_N, warp_k = warp / (WARPS_M * WARPS_N);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_begin = blockIdx.z * steps_per_split * WG_BK;
    const int k_end = min(g.npix, k_begin + steps_per_split * WG_BK);
    const int steps = (k_end - k_begin + WG_BK - 1) / WG_BK;

    // ---- loader state ----
    // Vector: chunk i of a stage's A tile is row i / (BM/8), column chunk i % (BM/8); the same for
    // B with BN. THREADS is a multiple of BM/8 and BN/8, so a thread's column chunk is fixed.
    // A tile smaller than the block (64 x 16) leaves the last threads without a B chunk.
    constexpr int A_TOTAL = WG_BK * BM / 8, B_TOTAL = WG_BK * BN / 8;
    constexpr int A_CHUNKS = (A_TOTAL + THREADS - 1) / THREADS, B_CHUNKS = (B_TOTAL + THREADS - 1) / THREADS;
    constexpr int A_ROW_STEP = THREADS / (BM / 8), B_ROW_STEP = THREADS / (BN / 8);
    // Scalar: A element i is row i / BM, column i % BM (fixed column); B has one fixed row per
    // thread and columns tid / BK + j * (THREADS / BK).
    constexpr int A_ELEMS = WG_BK * BM / THREADS, B_ELEMS = WG_BK * BN / THREADS;
    constexpr int A_ROW_STEP_S = THREADS / BM, B_COL_STEP_S = THREADS / WG_BK;

    const int a_col = VEC_A ? (tid % (BM / 8)) * 8 : tid % BM;
    const bool a_col_ok = m0 + a_col < g.k;
    const int a_row0 = VEC_A ? tid / (BM / 8) : tid / BM;

    // Vector B: this thread's tap.
    int b_r = 0, b_s = 0, b_c = 0;
    bool b_col_ok = false;
    const int b_col = (tid % (BN / 8)) * 8;
    PixelCursor bcur[VEC_B ? B_CHUNKS : 1];
    if constexpr (VEC_B) {
        const int n = n0 + b_col;
        b_col_ok = n < g.ncols;
        if (b_col_ok) {
            b_c = n % g.c;
            const int rs = n / g.c;
            b_r = rs / g.s;
            b_s = rs % g.s;
        }
#pragma unroll
        for (int j = 0; j < B_CHUNKS; ++j) bcur[j].init(k_begin + tid / (BN / 8) + j * B_ROW_STEP, g);
    } else {
        // Scalar B: the tile's taps, (r << 16 | s) and c, with r = -1 (never inside) past N.
        for (int col = tid; col < BN; col += THREADS) {
            const int n = n0 + col;
            int rs_packed = -65536, c = 0;  // r = -1
            if (n < g.ncols) {
                c = n % g.c;
                const int rs = n / g.c;
                rs_packed = ((rs / g.s) << 16) | (rs % g.s);
            }
            col_table[2 * col] = rs_packed;
            col_table[2 * col + 1] = c;
        }
        bcur[0].init(k_begin + tid % WG_BK, g);
        __syncthreads();
    }

    // Copies stage `step` of this split into pipeline slot `slot`, then advances the cursors.
    auto load_stage = [&](int step, int slot) {
        __half* sa = smem + slot * STAGE_HALVES;
        __half* sb = sa + WG_BK * LDA;
        const int kbase = k_begin + step * WG_BK;
        if constexpr (VEC_A) {
#pragma unroll
            for (int j = 0; j < A_CHUNKS; ++j) {
                if (A_TOTAL % THREADS != 0 && tid + j * THREADS >= A_TOTAL) break;
                const int row = a_row0 + j * A_ROW_STEP;
                const int pix = kbase + row;
                const bool ok = a_col_ok && pix < k_end;
                const __half* src = ok ? dy + (long long)pix * g.k + m0 + a_col : dy;
                cp_async_16(sa + row * LDA + a_col, src, ok);
            }
        } else {
#pragma unroll 4
            for (int j = 0; j < A_ELEMS; ++j) {
                const int row = a_row0 + j * A_ROW_STEP_S;
                const int pix = kbase + row;
                __half v = __float2half(0.0f);
                if (a_col_ok && pix < k_end) v = dy[(long long)pix * g.k + m0 + a_col];
                sa[row * LDA + a_col] = v;
            }
        }
        if constexpr (VEC_B) {
#pragma unroll
            for (int j = 0; j < B_CHUNKS; ++j) {
                if (B_TOTAL % THREADS != 0 && tid + j * THREADS >= B_TOTAL) break;
                const int row = tid / (BN / 8) + j * B_ROW_STEP;
                const PixelCursor& cu = bcur[j];
                const int ih = cu.ih0(g) + b_r, iw = cu.iw0(g) + b_s;
                const bool ok = b_col_ok && cu.pix < k_end && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w;
                const __half* src = ok ? x + (cu.base(g) + (long long)b_r * g.w + b_s) * g.c + b_c : x;
                cp_async_16(sb + row * LDB + b_col, src, ok);
                bcur[j].advance(g);
            }
        } else {
            const PixelCursor& cu = bcur[0];
            const int row = tid % WG_BK;
            const bool row_ok = cu.pix < k_end;
            const int ih0 = cu.ih0(g), iw0 = cu.iw0(g);
            const long long base = cu.base(g);
#pragma unroll 4
            for (int j = 0; j < B_ELEMS; ++j) {
                const int col = tid / WG_BK + j * B_COL_STEP_S;
                const int rs = col_table[2 * col], c = col_table[2 * col + 1];
                const int r = rs >> 16, s = rs & 0xffff;
                const int ih = ih0 + r, iw = iw0 + s;
                __half v = __float2half(0.0f);
                if (row_ok && r >= 0 && (unsigned)ih < (unsigned)g.h && (unsigned)iw < (unsigned)g.w)
                    v = x[(base + (long long)r * g.w + s) * g.c + c];
                sb[row * LDB + col] = v;
            }
            bcur[0].advance(g);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // ---- pipeline: STAGES - 1 stages in flight while one is computed ----
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < steps) load_stage(st, st);
        cp_async_commit();
    }
    const int wm = warp_m * WTM, wn = warp_n * WTN;
    for (int step = 0; step < steps; ++step) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage `step` visible to all; every warp is done with slot step - 1
        {
            const int next = step + STAGES - 1;
            if (next < steps) load_stage(next, next % STAGES);
            cp_async_commit();
        }
        const __half* sa = smem + (step % STAGES) * STAGE_HALVES;
        const __half* sb = sa + WG_BK * LDA;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            const int k16 = (warp_k * KSTEPS + kk) * 16;
            uint32_t a[MT][4], b[NT / 2][4];
            // A block (k16 x m16) stored pixel-major: matrix i of the x4 is rows k + 8 * (i / 2),
            // columns m + 8 * (i % 2), which .trans turns into a0..a3 of the M x K fragment.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4_trans(a[mt], sa + (k16 + 8 * (lane / 16) + lane % 8) * LDA + wm + mt * 16 + 8 * ((lane / 8) % 2));
            // B block (k16 x n16): matrix i is rows k + 8 * (i % 2), columns n + 8 * (i / 2), giving
            // b0, b1 of the first n8 tile and b0, b1 of the second.
#pragma unroll
            for (int np = 0; np < NT / 2; ++np)
                ldmatrix_x4_trans(b[np], sb + (k16 + 8 * ((lane / 8) % 2) + lane % 8) * LDB + wn + np * 16 + 8 * (lane / 16));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_m16n8k16(acc[mt][nt], a[mt], &b[nt / 2][2 * (nt % 2)]);
        }
    }
    cp_async_wait<0>();

    // ---- epilogue ----
    const int gq = lane / 4, tq = lane % 4;
    if constexpr (WARPS_K == 2) {
        // The second k half's warps hand their sums to the first's through shared memory (the
        // pipeline buffers, free once everyone is past the last stage).
        __syncthreads();
        float* red = reinterpret_cast<float*>(wgrad_smem);
        if (warp_k == 1) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        red[(wm + mt * 16 + gq + 8 * (e / 2)) * BN + wn + nt * 8 + 2 * tq + e % 2] = acc[mt][nt][e];
        }
        __syncthreads();
        if (warp_k == 1) return;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    acc[mt][nt][e] += red[(wm + mt * 16 + gq + 8 * (e / 2)) * BN + wn + nt * 8 + 2 * tq + e % 2];
    }
    float* dst = out + (long long)blockIdx.z * g.k * g.ncols;
    // (n, n + 1) share an 8-byte aligned float2 when rows have even length and out is aligned.
    const bool pairs = (g.ncols % 2) == 0 && (reinterpret_cast<uintptr_t>(out) & 7) == 0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half_row = 0; half_row < 2; ++half_row) {
            const int m = m0 + wm + mt * 16 + gq + 8 * half_row;
            if (m >= g.k) continue;
            float* row = dst + (long long)m * g.ncols;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int n = n0 + wn + nt * 8 + 2 * tq;
                const float v0 = acc[mt][nt][2 * half_row], v1 = acc[mt][nt][2 * half_row + 1];
                if (pairs && n + 1 < g.ncols) {
                    *reinterpret_cast<float2*>(row + n) = make_float2(v0, v1);
                } else {
                    if (n < g.ncols) row[n] = v0;
                    if (n + 1 < g.ncols) row[n + 1] = v1;
                }
            }
        }
}

// Entry points: one per (tile configuration, loader). Arguments, for every one of them:
//   (const __half* x, const __half* dy, float* out, int h, int w, int c, int p, int q, int k,
//    int r, int s, int stride, int pad, int npix, int steps_per_split)
// out: dW itself (gridDim.z == 1) or the workspace of gridDim.z partials of k * r * s * c floats.
// Grid (ceil(N / BN), ceil(M / BM), splits); block THREADS; dynamic shared memory
// wgrad_smem_bytes(BM, BN, STAGES, WARPS_K).
#define WGRAD_ARGS                                                                                       \
    const __half *__restrict__ x, const __half *__restrict__ dy, float *__restrict__ out, int h, int w, \
        int c, int p, int q, int k, int r, int s, int stride, int pad, int npix, int steps_per_split
#define WGRAD_GEOM WgradGeom{h, w, c, p, q, k, r, s, stride, pad, npix, r * s * c}

// 128 x 128, warps 2 x 4 (64 x 32 each): the big layers (c_out >= 128).
extern "C" __global__ void __launch_bounds__(256, 2) conv_wgrad_t128x128_vec_f16(WGRAD_ARGS) {
    wgrad_tile<128, 128, 2, 4, 1, 3, true, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2) conv_wgrad_t128x128_f16(WGRAD_ARGS) {
    wgrad_tile<128, 128, 2, 4, 1, 3, false, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
// 64 x 128, warps 2 x 2 x 2 (32 x 64 each, k halves added at the end). Not a default any more
// (64 x 64 measured faster for c_out 64 on an H100), kept for explicit plans.
extern "C" __global__ void __launch_bounds__(256, 2) conv_wgrad_t64x128_vec_f16(WGRAD_ARGS) {
    wgrad_tile<64, 128, 2, 2, 2, 3, true, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2) conv_wgrad_t64x128_f16(WGRAD_ARGS) {
    wgrad_tile<64, 128, 2, 2, 2, 3, false, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
// The 128-thread tiles also come with one operand vector and the other scalar (suffix veca: dy
// by 16-byte copies, x element by element, for the stems on one input channel; vecb: the
// reverse, for the 29-landmark head).
// 32 x 128, warps 1 x 2 x 2 (32 x 64 each): c_out <= 32 (HRNet's top branch, the head).
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t32x128_vec_f16(WGRAD_ARGS) {
    wgrad_tile<32, 128, 1, 2, 2, 3, true, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t32x128_veca_f16(WGRAD_ARGS) {
    wgrad_tile<32, 128, 1, 2, 2, 3, true, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t32x128_vecb_f16(WGRAD_ARGS) {
    wgrad_tile<32, 128, 1, 2, 2, 3, false, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t32x128_f16(WGRAD_ARGS) {
    wgrad_tile<32, 128, 1, 2, 2, 3, false, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
// 64 x 64, warps 2 x 2 (32 x 32 each): c_out 64, short patch rows (1x1 of <= 64 channels, the
// 7x7 stem on one channel), and layers with too few pixels to fill the GPU with bigger tiles.
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x64_vec_f16(WGRAD_ARGS) {
    wgrad_tile<64, 64, 2, 2, 1, 3, true, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x64_veca_f16(WGRAD_ARGS) {
    wgrad_tile<64, 64, 2, 2, 1, 3, true, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x64_vecb_f16(WGRAD_ARGS) {
    wgrad_tile<64, 64, 2, 2, 1, 3, false, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x64_f16(WGRAD_ARGS) {
    wgrad_tile<64, 64, 2, 2, 1, 3, false, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
// 64 x 16, warps 2 x 1 x 2 (32 x 16 each): 3x3 on one channel (N = 9), and the smallest layers,
// where only many small CTAs fill the GPU.
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x16_vec_f16(WGRAD_ARGS) {
    wgrad_tile<64, 16, 2, 1, 2, 3, true, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x16_veca_f16(WGRAD_ARGS) {
    wgrad_tile<64, 16, 2, 1, 2, 3, true, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x16_vecb_f16(WGRAD_ARGS) {
    wgrad_tile<64, 16, 2, 1, 2, 3, false, true>(x, dy, out, WGRAD_GEOM, steps_per_split);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_t64x16_f16(WGRAD_ARGS) {
    wgrad_tile<64, 16, 2, 1, 2, 3, false, false>(x, dy, out, WGRAD_GEOM, steps_per_split);
}

// out[i] = the sum over s in 0..splits of partials[s * len + i], in a fixed order: the
// deterministic split-K reduction, also used for the bias gradient's per-chunk partials.
// Block (32, WG_RED_LANES): threadIdx.x picks an element (or, with `vec`, four: len % 4 == 0 and
// both pointers 16-byte aligned), threadIdx.y a lane that adds splits y, y + 8, y + 16, ... in
// order; lane 0 then adds the 8 lane sums in lane order. The grouping depends on `splits` only.
// Lanes and 4-deep unrolled loads keep enough loads in flight for 100+ splits (HRNet's top
// branch) to take a few microseconds, not one memory latency per split. Grid: ceil(elements / 32)
// blocks (elements = len / 4 with vec, else len), any count (grid-stride).
#define WG_RED_LANES 8
template <typename V>
__device__ __forceinline__ void add_into(V& a, const V& b);
template <>
__device__ __forceinline__ void add_into<float>(float& a, const float& b) {
    a += b;
}
template <>
__device__ __forceinline__ void add_into<float4>(float4& a, const float4& b) {
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    a.w += b.w;
}

template <typename V>
__device__ __forceinline__ void reduce_splits(const V* __restrict__ partials, int splits, long long elems,
                                              V* __restrict__ out, V zero) {
    __shared__ V lane_sums[WG_RED_LANES][32];
    const int lane = threadIdx.y;
    for (long long base = (long long)blockIdx.x * 32; base < elems; base += (long long)gridDim.x * 32) {
        const long long i = base + threadIdx.x;
        V acc = zero;
        if (i < elems) {
            int s = lane;
            // Four loads issued before the four ordered adds.
            for (; s + 3 * WG_RED_LANES < splits; s += 4 * WG_RED_LANES) {
                V v[4];
#pragma unroll
                for (int u = 0; u < 4; ++u) v[u] = partials[(long long)(s + u * WG_RED_LANES) * elems + i];
#pragma unroll
                for (int u = 0; u < 4; ++u) add_into(acc, v[u]);
            }
            for (; s < splits; s += WG_RED_LANES) add_into(acc, partials[(long long)s * elems + i]);
        }
        lane_sums[lane][threadIdx.x] = acc;
        __syncthreads();
        if (lane == 0 && i < elems) {
            V total = lane_sums[0][threadIdx.x];
            for (int l = 1; l < WG_RED_LANES; ++l) add_into(total, lane_sums[l][threadIdx.x]);
            out[i] = total;
        }
        __syncthreads();
    }
}

extern "C" __global__ void conv_wgrad_reduce_f32(const float* __restrict__ partials, int splits, long long len,
                                                 float* __restrict__ out, int vec) {
    if (vec) {
        reduce_splits<float4>(reinterpret_cast<const float4*>(partials), splits, len / 4,
                              reinterpret_cast<float4*>(out), make_float4(0.0f, 0.0f, 0.0f, 0.0f));
    } else {
        reduce_splits<float>(partials, splits, len, out, 0.0f);
    }
}

// Bias gradient, pass 1: partials[chunk][ch] = sum of dy[row][ch] over chunk `chunk`'s rows
// (pixels * chunk / chunks up to the next chunk's start). Grid (ceil(k / 32), chunks), block
// (32, 8): a warp reads 32 consecutive channels of one row; the 8 row lanes are added in lane
// order. Pass 2 is conv_wgrad_reduce_f32 over the chunks.
extern "C" __global__ void conv_wgrad_bias_partial_f16(const __half* __restrict__ dy, long long pixels, int k,
                                                       int chunks, float* __restrict__ partials) {
    __shared__ float lanes[8][32];
    const int ch = blockIdx.x * 32 + threadIdx.x;
    const long long row0 = pixels * blockIdx.y / chunks, row1 = pixels * (blockIdx.y + 1) / chunks;
    float sum = 0.0f;
    if (ch < k) {
        for (long long row = row0 + threadIdx.y; row < row1; row += 8) sum += __half2float(dy[row * k + ch]);
    }
    lanes[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && ch < k) {
        float total = lanes[0][threadIdx.x];
        for (int l = 1; l < 8; ++l) total += lanes[l][threadIdx.x];
        partials[(long long)blockIdx.y * k + ch] = total;
    }
}
