// Convolution forward and input gradient (dgrad) as tensor-core implicit GEMMs on fp16 NHWC
// activations and KRSC weights, fp32 accumulation. CPU twins: src/backend/cpu/conv.rs. Wrappers:
// src/backend/cuda/conv.rs. (The weight gradient lives in conv_wgrad.cu.)
//
// One mainloop serves both passes. The GEMM is D[M x N] = A[M x K] * B[K x N] where
//   forward: M = n*ho*wo output pixels, N = c_out, K = kh*kw*c_in; A[m][(r,s,c)] = x[n, oh*stride
//            - pad + r, ow*stride - pad + s, c] (zero outside the image), B = the KRSC weight,
//            already [N][K] with K contiguous;
//   dgrad:   M = n*h*w input pixels, N = c_in, K = kh*kw*c_out; A[m][(r,s,k)] = dy[n, oh, ow, k]
//            where oh = (h + pad - r) / stride when that divides exactly and lands inside dy (zero
//            otherwise), B[ci][(r,s,k)] = w[k][r][s][ci], re-laid out by
//            conv_dgrad_weight_relayout_f16 into the caller's workspace so it is K-contiguous too.
// A is gathered on the fly from the activations: no im2col buffer ever exists in memory. Here
// "source" names the tensor A is gathered from (x forward, dy dgrad), cs its channel count.
//
// Strided dgrad: for a given input pixel only the taps with (h + pad - r) % stride == 0 exist (a
// quarter of them for 3x3 stride 2, on average). So the dgrad grid has one z-slice per parity
// class (ph, pw) = ((h + pad) % stride, (w + pad) % stride): its rows are that class's pixels and
// its K runs over that class's taps only (see ConvSlice), so no MMA multiplies a structural zero.
// The same makes the 4x4 stride-2 transposed convolution (a dgrad) run 4 taps per pixel, not 16.
//
// Block tile BM x BN x BK (BK = 32 or 64 halves of K), WARPS_M x WARPS_N warps, each warp a
// (BM/WARPS_M) x (BN/WARPS_N) tile of m16n8k16 MMAs fed by ldmatrix from shared memory. K is
// walked as the flat (r, s, c) index, so a K tile may span taps and channel counts that are
// multiples of 8 waste nothing (only the last tile of K is partly zero). Blocks are numbered with
// the output-channel tiles fastest, so the blocks running together share their pixels.
// Two loaders fill the shared tiles:
//   vec (cs % 8 == 0, 16-byte aligned source and weight, at most 32 taps per slice): 16-byte
//     cp.async of 8 channels with zero-fill for the padding, a STAGES-deep pipeline (loads of
//     tile k+STAGES-1 are in flight while tile k is multiplied); each thread's rows carry a
//     precomputed source offset and a bit mask of their in-image taps, so a copy costs a few
//     instructions;
//   general (any cs: the 1-channel stem, HRNet-W18's 18/36/72/144, a 29-channel head): each
//     thread gathers scalars into registers for tile k+1 while tile k is multiplied, then stores
//     them into the other of two shared buffers (BK = 32, 4 warps).
// Shared tiles are rows of BK halves whose 16-byte chunks are XOR-swizzled (conv_swz), so the
// eight row addresses of every ldmatrix phase hit distinct banks.
//
// Epilogue: the fp32 accumulators go through shared memory (reusing the pipeline's buffers: the
// whole block tile at once where it fits, else one warp row at a time) so that each thread then
// owns 8 consecutive output channels of a pixel:
// y = act(acc * scale[c] + shift[c] (+ residual)) (+ old y when accumulating), rounded to fp16
// once, written with one 16-byte store when c_out % 8 == 0 and the output (and residual) are
// aligned, else element by element with the columns past c_out masked. The residual (forward
// only, a tensor of the output's shape) is the join of a ResNet/HRNet block in inference, where
// the batch norm before it is folded into scale and shift: y = relu(bn(conv(x)) + residual).
//
// BN-statistics epilogue (forward, training): when `stats` is non-null the block also summarises
// each of its output channels over its rows, from the fp16 values it stores (what a separate
// statistics pass would read back), as (count, mean, M2) into stats[row tile][channel][3]: the
// chunk partials of kernels/batchnorm.cu, merged by batchnorm_stats_finalize_f32. So a batch norm
// after a convolution never rereads the convolution's output for its statistics. The sums are
// shifted by the channel's value in the block's first row (see bn_summary.cuh); NT / BN groups of
// threads sum interleaved rows and their sums are added in group order.
//
// Deterministic: every output element is one thread's fixed-order sum; no atomics.
#include "common.cuh"
#include "half8_io.cuh"
#include "mma.cuh"
#include "bn_summary.cuh"

// K extent of the general loader's shared tiles (halves) and its threads per block (the vec
// loader's are template arguments).
#define CONV_BK 32
#define CONV_THREADS 128
// Padding (floats) of a row of the epilogue's staging tile: a half-warp's float2 writes of one
// fragment row pair land in distinct banks.
#define CONV_STAGE_PAD 8

// cp_async_16 through L1 (.ca) rather than L2 only (.cg): a KxK convolution reads every input
// element K*K times (once per tap) from neighbouring rows of the same block's tile, so keeping the
// activations in L1 saves most of the L2 traffic of the gather. The weights stay on .cg.
#ifndef CEPHALO_KERNEL_SIM
__device__ __forceinline__ void conv_cp_async_16_ca(void* smem, const void* gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(src_bytes));
}
#else
#define conv_cp_async_16_ca cp_async_16
#endif

// Offset (halves) of chunk `chunk` (8 halves) of row `row` in a swizzled BK-wide tile: the
// eight rows an ldmatrix phase reads land on eight distinct 16-byte bank groups.
template <int BK>
__device__ __forceinline__ int conv_swz(int row, int chunk) {
    static_assert(BK == 32 || BK == 64, "32- or 64-half rows");
    if (BK == 32) return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3);
    return row * 64 + ((chunk ^ (row & 7)) << 3);
}

// The rows of one GEMM launch slice (blockIdx.z) and the taps they read.
//   forward: one slice, every output pixel, taps (r, s) over the whole kernel; a row (pixel
//            (oh, ow)) reads source (oh*stride - pad + r, ...);
//   dgrad:   one slice per parity class (ph, pw) of (h + pad, w + pad) modulo the stride: only the
//            taps r = ph + stride*i, s = pw + stride*j reach a pixel of that class, at source
//            ((h + pad - ph) / stride - i, ...), so every class is a dense GEMM over its own taps
//            and no MMA is spent on the taps that do not divide. (For stride 1 there is one
//            class with every tap.) A class may have no pixels (a block exits) or no taps (its
//            pixels get zero, or keep their old value when accumulating).
struct ConvSlice {
    int ph, pw;            // the class: tap offsets
    int h_first, w_first;  // first pixel of the class
    int hc, wc;            // pixels of the class per image along h and w
    int rc, sc;            // taps of the class along r and s
};

template <bool DGRAD>
__device__ __forceinline__ ConvSlice conv_slice(int cls, int ho, int wo, int kh, int kw, int stride, int pad) {
    ConvSlice c;
    if (!DGRAD) {
        c.ph = c.pw = c.h_first = c.w_first = 0;
        c.hc = ho;
        c.wc = wo;
        c.rc = kh;
        c.sc = kw;
        return c;
    }
    c.ph = cls / stride;
    c.pw = cls - c.ph * stride;
    // The first h >= 0 with (h + pad) % stride == ph.
    c.h_first = ((c.ph - pad) % stride + stride) % stride;
    c.w_first = ((c.pw - pad) % stride + stride) % stride;
    c.hc = c.h_first < ho ? (ho - c.h_first + stride - 1) / stride : 0;
    c.wc = c.w_first < wo ? (wo - c.w_first + stride - 1) / stride : 0;
    c.rc = c.ph < kh ? (kh - c.ph + stride - 1) / stride : 0;
    c.sc = c.pw < kw ? (kw - c.pw + stride - 1) / stride : 0;
    return c;
}

// The source bases of GEMM row `row` of a slice and the element offset of its image: the source
// pixel of tap (i, j) of the slice is (h0 + i, w0 + j) forward and (h0 - i, w0 - j) dgrad. Rows
// past the slice carry bases far outside the source, so every tap of theirs fails.
template <bool DGRAD>
__device__ __forceinline__ void conv_row(int row, int m, const ConvSlice& c, int stride, int pad,
                                         long long image_elems, long long* base, int* h0, int* w0) {
    if (row >= m) {
        *base = 0;
        *h0 = -(1 << 29);
        *w0 = -(1 << 29);
        return;
    }
    const int img = row / (c.hc * c.wc);
    const int rem = row - img * c.hc * c.wc;
    const int j = rem / c.wc, l = rem - j * c.wc;
    *base = img * image_elems;
    if (DGRAD) {
        *h0 = (c.h_first + pad - c.ph) / stride + j;
        *w0 = (c.w_first + pad - c.pw) / stride + l;
    } else {
        *h0 = j * stride - pad;
        *w0 = l * stride - pad;
    }
}

// The source pixel of a row with bases (h0, w0) at slice tap (i, j), and whether it exists.
template <bool DGRAD>
__device__ __forceinline__ bool conv_tap(int h0, int w0, int i, int j, int hs, int ws, int* sh, int* sw) {
    *sh = DGRAD ? h0 - i : h0 + i;
    *sw = DGRAD ? w0 - j : w0 + j;
    return (unsigned)*sh < (unsigned)hs && (unsigned)*sw < (unsigned)ws;
}

// The kernel tap (r, s) of slice tap (i, j): where B's row segment starts.
template <bool DGRAD>
__device__ __forceinline__ int conv_weight_tap(const ConvSlice& c, int i, int j, int kw, int stride) {
    return DGRAD ? (c.ph + stride * i) * kw + c.pw + stride * j : i * kw + j;
}

// Bytes of dynamic shared memory a configuration needs (the wrapper computes the same): the
// larger of the pipeline's tiles (plus the general loader's row table) and the epilogue staging.
__host__ __device__ constexpr int conv_smem_bytes(int bm, int bn, int bk, int warps_m, int stages, bool vec) {
    const int pipeline = vec ? stages * (bm + bn) * bk * 2 : 2 * (bm + bn) * CONV_BK * 2 + bm * 16;
    const int staging = (bm / warps_m) * (bn + CONV_STAGE_PAD) * 4;
    return pipeline > staging ? pipeline : staging;
}

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, bool DGRAD, bool VEC>
__device__ __forceinline__ void conv_igemm(const __half* __restrict__ src, const __half* __restrict__ wgt,
                                           __half* __restrict__ out, int n, int hs, int ws, int cs, int ho,
                                           int wo, int nc, int kh, int kw, int stride, int pad,
                                           const float* __restrict__ scale, const float* __restrict__ shift,
                                           int relu, int accumulate, int vec_out,
                                           const __half* __restrict__ residual, float* __restrict__ stats) {
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MT = WM / 16, NT8 = WN / 8;
    constexpr int NT = WARPS_M * WARPS_N * 32;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "a warp tile is whole 16x16 MMA pairs");
    static_assert(VEC || (BK == CONV_BK && NT == CONV_THREADS), "the general loader is 4 warps x 32 K");
    constexpr int NSTAGE = VEC ? STAGES : 2;

    extern __shared__ float4 conv_smem[];
    __half* const s_a = reinterpret_cast<__half*>(conv_smem);  // [NSTAGE][BM * BK]
    __half* const s_b = s_a + NSTAGE * BM * BK;                 // [NSTAGE][BN * BK]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const ConvSlice sl = conv_slice<DGRAD>(blockIdx.z, ho, wo, kh, kw, stride, pad);
    const int m = n * sl.hc * sl.wc;  // rows of this slice; the wrapper checks n*ho*wo fits
    // Blocks walk the output channels' tiles fastest: the blocks running at once share their
    // pixels (A), read once from DRAM, while the weights (B) are small enough to stay in L2.
    const int ntiles_n = (nc + BN - 1) / BN;
    const int block_m = (blockIdx.x / ntiles_n) * BM, block_n = (blockIdx.x % ntiles_n) * BN;
    if (block_m >= m) return;  // the grid covers the largest slice
    const int kdim = kh * kw * cs;           // a weight row
    const int kslice = sl.rc * sl.sc * cs;   // this slice's K: its taps only
    const int ktiles = (kslice + BK - 1) / BK;
    const long long image_elems = (long long)hs * ws * cs;

    float acc[MT][NT8][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Multiplies the tiles in buffer `slot`: two k16 steps of MT x NT8 MMAs per warp.
    auto compute = [&](int slot) {
        const __half* a = s_a + slot * BM * BK;
        const __half* b = s_b + slot * BN * BK;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            uint32_t af[MT][4], bf[NT8][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                // Matrices 0..3: rows 0-7 / 8-15 of the m16 tile at k chunks 2kk, 2kk+1.
                const int row = wm * WM + i * 16 + (lane & 15);
                ldmatrix_x4(af[i], a + conv_swz<BK>(row, 2 * kk + (lane >> 4)));
            }
#pragma unroll
            for (int j = 0; j < NT8 / 2; ++j) {
                // Matrices 0..3: (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi).
                const int row = wn * WN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
                uint32_t t[4];
                ldmatrix_x4(t, b + conv_swz<BK>(row, 2 * kk + ((lane >> 3) & 1)));
                bf[2 * j][0] = t[0];
                bf[2 * j][1] = t[1];
                bf[2 * j + 1][0] = t[2];
                bf[2 * j + 1][1] = t[3];
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT8; ++j) mma_m16n8k16(acc[i][j], af[i], bf[j]);
        }
    };

    if (VEC) {
        // Thread t copies chunk t % CPR of rows t / CPR + RP i: its K offset within a tile is
        // fixed, so one (tap, channel) state per thread follows the tiles as they are loaded in
        // order, and what depends on the row is set up once: the element offset of the row's
        // source pixel at tap (0, 0) and a bit mask of the slice taps that land inside the
        // source (the wrapper sends slices of more than 32 taps to the general loader). A copy
        // then costs a shift, a 64-bit add and the cp.async.
        constexpr int CPR = BK / 8, RP = NT / CPR;  // chunks per row, rows per pass
        static_assert(BM % RP == 0, "whole passes of A rows");
        constexpr int A_PER = BM / RP, B_PER = (BN + RP - 1) / RP;
        const int kchunk = tid % CPR, row0 = tid / CPR;
        long long a_off[A_PER];
        uint32_t a_mask[A_PER];
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            long long base;
            int h0, w0;
            conv_row<DGRAD>(block_m + row0 + RP * i, m, sl, stride, pad, image_elems, &base, &h0, &w0);
            a_off[i] = base + ((long long)h0 * ws + w0) * cs;
            uint32_t mask = 0;
            for (int ti = 0, t = 0; ti < sl.rc; ++ti)
                for (int tj = 0; tj < sl.sc; ++tj, ++t) {
                    int sh, sw;
                    if (conv_tap<DGRAD>(h0, w0, ti, tj, hs, ws, &sh, &sw)) mask |= 1u << (t & 31);
                }
            a_mask[i] = mask;
        }
        long long b_off[B_PER];
        uint32_t b_ok = 0;
#pragma unroll
        for (int j = 0; j < B_PER; ++j) {
            const int co = block_n + row0 + RP * j;
            b_off[j] = (long long)co * kdim;
            if (co < nc && row0 + RP * j < BN) b_ok |= 1u << j;
        }
        // The slice tap (ti, tj) = t and channel kc of this thread's K offset in the next tile,
        // and the element offsets they give in the source (relative to a row's tap (0, 0)) and
        // in a weight row.
        int t = 0, ti = 0, tj = 0, kc = kchunk * 8;
        long long a_k = 0;
        int b_k = 0;
        const int taps = sl.rc * sl.sc;
        auto normalize = [&] {
            while (kc >= cs) {
                kc -= cs;
                ++t;
                if (++tj == sl.sc) {
                    tj = 0;
                    ++ti;
                }
            }
            a_k = ((long long)(DGRAD ? -ti : ti) * ws + (DGRAD ? -tj : tj)) * cs + kc;
            b_k = conv_weight_tap<DGRAD>(sl, ti, tj, kw, stride) * cs + kc;
        };
        normalize();

        auto load_tile = [&](int slot) {
            __half* a = s_a + slot * BM * BK;
            __half* b = s_b + slot * BN * BK;
            const bool k_ok = t < taps;
            const int bit = t & 31;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                const bool ok = k_ok && ((a_mask[i] >> bit) & 1u);
                // An invalid copy reads nothing but still needs a mapped, aligned address.
                const __half* g = ok ? src + (a_off[i] + a_k) : src;
                conv_cp_async_16_ca(a + conv_swz<BK>(row0 + RP * i, kchunk), g, ok);
            }
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                if (BN % RP != 0 && row0 + RP * j >= BN) break;  // fewer B rows than threads per pass
                const bool ok = k_ok && ((b_ok >> j) & 1u);
                const __half* g = ok ? wgt + (b_off[j] + b_k) : wgt;
                cp_async_16(b + conv_swz<BK>(row0 + RP * j, kchunk), g, ok);
            }
            kc += BK;
            normalize();
        };

#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < ktiles) load_tile(s);
            cp_async_commit();  // empty groups keep the wait count below uniform
        }
        for (int kt = 0; kt < ktiles; ++kt) {
            cp_async_wait<STAGES - 2>();
            // Tile kt is visible to all, and every warp is done with the buffer refilled below
            // (it held tile kt - 1).
            __syncthreads();
            const int next = kt + STAGES - 1;
            if (next < ktiles) load_tile(next % STAGES);
            cp_async_commit();
            compute(kt % STAGES);
        }
        cp_async_wait<0>();
    } else {
        // Thread t gathers K column t % 32 of rows t / 32 + 4 i (a warp covers one row's 32
        // consecutive K values: 64 contiguous bytes of shared memory per store).
        constexpr int A_PER = BM / 4, B_PER = BN / 4;
        long long* t_base = reinterpret_cast<long long*>(s_b + 2 * BN * BK);
        int* t_h = reinterpret_cast<int*>(t_base + BM);
        int* t_w = t_h + BM;
        for (int row = tid; row < BM; row += CONV_THREADS)
            conv_row<DGRAD>(block_m + row, m, sl, stride, pad, image_elems, &t_base[row], &t_h[row], &t_w[row]);
        __syncthreads();
        const int col = tid & 31, rgrp = tid >> 5;
        __half ra[A_PER], rb[B_PER];
        auto gather = [&](int kt) {
            const int k = kt * CONV_BK + col;
            const bool k_ok = k < kslice;
            const int tap = k_ok ? k / cs : 0;
            const int c = k - tap * cs;
            const int r = tap / sl.sc, s = tap - r * sl.sc;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                const int row = rgrp + 4 * i;
                int sh, sw;
                const bool ok = k_ok && conv_tap<DGRAD>(t_h[row], t_w[row], r, s, hs, ws, &sh, &sw);
                ra[i] = ok ? src[t_base[row] + (long long)(sh * ws + sw) * cs + c] : __float2half(0.0f);
            }
            const int wk = conv_weight_tap<DGRAD>(sl, r, s, kw, stride) * cs + c;
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                const int co = block_n + rgrp + 4 * j;
                rb[j] = k_ok && co < nc ? wgt[(long long)co * kdim + wk] : __float2half(0.0f);
            }
        };
        auto store = [&](int slot) {
            __half* a = s_a + slot * BM * BK;
            __half* b = s_b + slot * BN * BK;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) a[conv_swz<BK>(rgrp + 4 * i, col >> 3) + (col & 7)] = ra[i];
#pragma unroll
            for (int j = 0; j < B_PER; ++j) b[conv_swz<BK>(rgrp + 4 * j, col >> 3) + (col & 7)] = rb[j];
        };
        gather(0);
        for (int kt = 0; kt < ktiles; ++kt) {
            // Buffer kt % 2 was last read by compute(kt - 2), which every warp finished before
            // the barrier of iteration kt - 1.
            store(kt & 1);
            __syncthreads();
            if (kt + 1 < ktiles) gather(kt + 1);  // in flight during the MMAs below
            compute(kt & 1);
        }
    }
    __syncthreads();  // the pipeline's buffers become the epilogue's staging tile

    float* stage = reinterpret_cast<float*>(conv_smem);
    constexpr int LD = BN + CONV_STAGE_PAD;
    // Where the pipeline's buffers hold the whole BM x BN tile, every warp stages at once and the
    // accumulators die before the stores (one pass: fewer barriers, and registers free for the
    // epilogue's residual and statistics); else one warp row at a time.
    constexpr int PIPELINE_BYTES = VEC ? STAGES * (BM + BN) * BK * 2 : 2 * (BM + BN) * CONV_BK * 2 + BM * 16;
    constexpr bool WHOLE_TILE = BM * LD * 4 <= PIPELINE_BYTES;
    constexpr int PASSES = WHOLE_TILE ? 1 : WARPS_M;
    constexpr int PR = WHOLE_TILE ? BM : WM;  // rows staged per pass
    constexpr int CHUNKS = PR * BN / 8;       // 8-channel pieces of one pass's rows
    // The epilogue's map of an accumulator of column c (and its residual element r, ignored
    // without a residual); one fused multiply-add, like the CPU twin's mul_add.
    const bool with_residual = !DGRAD && residual != nullptr;
    auto epi = [&](float a, int c, float r) {
        float t = fmaf(a, scale ? scale[c] : 1.0f, shift ? shift[c] : 0.0f);
        if (with_residual) t += r;
        return relu ? fmaxf(t, 0.0f) : t;
    };
    // BN statistics: thread (st_grp, st_col) sums rows st_grp, st_grp + ST_GROUPS, ... of column
    // st_col of every pass's staged rows. The block is uniform in `with_stats`.
    constexpr int ST_GROUPS = NT / BN;
    static_assert(NT % BN == 0, "whole row groups for the statistics");
    const bool with_stats = !DGRAD && stats != nullptr;
    const int st_col = tid % BN, st_grp = tid / BN;
    const bool st_on = with_stats && block_n + st_col < nc;
    float st_shift = 0.0f, st_s = 0.0f, st_q = 0.0f;
    for (int pass = 0; pass < PASSES; ++pass) {
        if (WHOLE_TILE || wm == pass) {
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT8; ++j) {
                    const int r = (WHOLE_TILE ? wm * WM : 0) + i * 16 + (lane >> 2);
                    const int c = wn * WN + j * 8 + (lane & 3) * 2;
                    stage[r * LD + c] = acc[i][j][0];
                    stage[r * LD + c + 1] = acc[i][j][1];
                    stage[(r + 8) * LD + c] = acc[i][j][2];
                    stage[(r + 8) * LD + c + 1] = acc[i][j][3];
                }
        }
        __syncthreads();
        for (int id = tid; id < CHUNKS; id += NT) {
            const int r = id / (BN / 8), c8 = (id % (BN / 8)) * 8;
            const int gm = block_m + pass * PR + r, gc = block_n + c8;
            if (gm >= m || gc >= nc) continue;
            long long pixel = gm;  // forward rows are the output pixels in order
            if (DGRAD) {
                const int img = gm / (sl.hc * sl.wc);
                const int rem = gm - img * sl.hc * sl.wc;
                const int j = rem / sl.wc, l = rem - j * sl.wc;
                pixel = ((long long)img * ho + sl.h_first + stride * j) * wo + sl.w_first + stride * l;
            }
            float v[8], res[8] = {};
            if (with_residual) {
                const __half* rp = residual + pixel * nc + gc;
                if (vec_out) {
                    load8(rp, 0, res);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) res[e] = gc + e < nc ? __half2float(rp[e]) : 0.0f;
                }
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int c = gc + e < nc ? gc + e : gc;  // masked columns read a valid channel
                v[e] = epi(stage[r * LD + c8 + e], c, res[e]);
            }
            __half* o = out + pixel * nc + gc;
            if (vec_out) {  // nc % 8 == 0, `out` (and residual) aligned: 8 channels, 16 bytes
                if (accumulate) {
                    float old[8];
                    load8(o, 0, old);
#pragma unroll
                    for (int e = 0; e < 8; ++e) v[e] += old[e];
                }
                store8(o, 0, v);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (gc + e < nc) o[e] = __float2half_rn(accumulate ? __half2float(o[e]) + v[e] : v[e]);
                }
            }
        }
        if (st_on) {
            // The values as stored: rounded to fp16 (never accumulating: the wrapper refuses).
            const int gc = block_n + st_col;
            auto stored = [&](int r) { return __half2float(__float2half_rn(epi(stage[r * LD + st_col], gc, 0.0f))); };
            if (pass == 0) st_shift = stored(0);  // row block_m exists: the grid is exact forward
            for (int r = st_grp; r < PR && block_m + pass * PR + r < m; r += ST_GROUPS) {
                const float d = stored(r) - st_shift;
                st_s += d;
                st_q = fmaf(d, d, st_q);
            }
        }
        __syncthreads();  // the next pass overwrites the staging tile
    }
    if (with_stats) {
        float* sums = stage;  // [ST_GROUPS][BN][2]
        sums[(st_grp * BN + st_col) * 2] = st_s;
        sums[(st_grp * BN + st_col) * 2 + 1] = st_q;
        __syncthreads();
        if (st_grp == 0 && st_on) {
            for (int g = 1; g < ST_GROUPS; ++g) {
                st_s += sums[(g * BN + st_col) * 2];
                st_q += sums[(g * BN + st_col) * 2 + 1];
            }
            const long long rows = min(BM, m - block_m);
            shifted_summary(st_shift, st_s, st_q, rows, stats + ((long long)(block_m / BM) * nc + block_n + st_col) * 3);
        }
    }
}

// Entry points: conv_<pass>_<loader>_<BM>x<BN>[k<BK>]. (64x64k64 asks for 3 blocks per SM, what
// its shared memory allows on an H100 anyway: left alone, ptxas stops at 96 registers and
// spills.) Arguments, all variants alike:
//   src (x forward, dy dgrad: n x hs x ws x cs), wgt ([nc][kh][kw][cs]: the KRSC weight forward,
//   the re-laid-out one dgrad), out (n x ho x wo x nc), n, hs, ws, cs, ho, wo, nc, kh, kw, stride,
//   pad, scale, shift (nc floats each or null), relu, accumulate, vec_out, residual (forward only:
//   null or like out), stats (forward only: null, or ceil(rows / BM) * nc * 3 floats of
//   BN-statistics partials, see the header).
// Grid (ceil(rows / BM) * ceil(nc / BN), 1, slices): forward 1 slice of n*ho*wo rows; dgrad
// stride*stride slices, rows the largest class's n*hc*wc (see conv_slice). 32 * WARPS_M * WARPS_N
// threads, conv_smem_bytes(..) of dynamic shared memory (over 48 KiB needs the opt-in attribute).
#define CONV_PARAMS                                                                                    \
    const __half *__restrict__ src, const __half *__restrict__ wgt, __half *__restrict__ out, int n, int hs, \
        int ws, int cs, int ho, int wo, int nc, int kh, int kw, int stride, int pad,                \
        const float *__restrict__ scale, const float *__restrict__ shift, int relu, int accumulate, int vec_out, \
        const __half *__restrict__ residual, float *__restrict__ stats
#define CONV_ARGS \
    src, wgt, out, n, hs, ws, cs, ho, wo, nc, kh, kw, stride, pad, scale, shift, relu, accumulate, vec_out, residual, \
        stats

extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x128k64(CONV_PARAMS) {
    conv_igemm<128, 128, 64, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x64k64(CONV_PARAMS) {
    conv_igemm<128, 64, 64, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128, 3) conv_fwd_vec_64x64k64(CONV_PARAMS) {
    conv_igemm<64, 64, 64, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x128k32(CONV_PARAMS) {
    conv_igemm<128, 128, 32, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x64k32(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_64x64k32(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x32k32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_64x32k32(CONV_PARAMS) {
    conv_igemm<64, 32, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_gen_128x64(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 2, false, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_gen_128x32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 2, false, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_gen_64x64(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 2, false, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_gen_64x32(CONV_PARAMS) {
    conv_igemm<64, 32, 32, 2, 2, 2, false, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x128k64(CONV_PARAMS) {
    conv_igemm<128, 128, 64, 2, 2, 3, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x64k64(CONV_PARAMS) {
    conv_igemm<128, 64, 64, 2, 2, 3, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128, 3) conv_dgrad_vec_64x64k64(CONV_PARAMS) {
    conv_igemm<64, 64, 64, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x128k32(CONV_PARAMS) {
    conv_igemm<128, 128, 32, 2, 2, 3, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x64k32(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_64x64k32(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x32k32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_64x32k32(CONV_PARAMS) {
    conv_igemm<64, 32, 32, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_gen_128x64(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 2, true, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_gen_128x32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 2, true, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_gen_64x64(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 2, true, false>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_gen_64x32(CONV_PARAMS) {
    conv_igemm<64, 32, 32, 2, 2, 2, true, false>(CONV_ARGS);
}

// dgrad's B operand: wt[ci][t][k] = w[k][t][ci] (t = r * kw + s), so that the input gradient's
// GEMM reads its weight K-contiguous like the forward one. Grid-stride over wt (coalesced writes;
// the weight is small next to the activations, so the strided reads cost little).
extern "C" __global__ void conv_dgrad_weight_relayout_f16(const __half* __restrict__ w, __half* __restrict__ wt,
                                                          int cout, int taps, int cin) {
    const long long total = (long long)cout * taps * cin;
    for (long long i = global_thread_index(); i < total; i += grid_stride()) {
        const int k = (int)(i % cout);
        const long long rest = i / cout;
        const int t = (int)(rest % taps);
        const int ci = (int)(rest / taps);
        wt[i] = w[((long long)k * taps + t) * cin + ci];
    }
}
