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
// Block tile BM x BN x 32 (K), 4 warps in a WARPS_M x WARPS_N grid, each warp a (BM/WARPS_M) x
// (BN/WARPS_N) tile of m16n8k16 MMAs fed by ldmatrix from shared memory. K is walked as the flat
// (r, s, c) index, so a 32-wide K tile may span taps and channel counts that are multiples of 8
// waste nothing (only the last tile of K is partly zero).
// Two loaders fill the shared tiles:
//   vec (cs % 8 == 0, 16-byte aligned source and weight): 16-byte cp.async of 8 channels with
//     zero-fill for the padding, a STAGES-deep pipeline (loads of tile k+STAGES-1 are in flight
//     while tile k is multiplied);
//   general (any cs: the 1-channel stem, HRNet-W18's 18/36/72/144, a 29-channel head): each
//     thread gathers scalars into registers for tile k+1 while tile k is multiplied, then stores
//     them into the other of two shared buffers.
// Shared tiles are rows of 32 halves (64 bytes) whose four 16-byte chunks are XOR-swizzled by
// (row / 2) % 4, so the eight row addresses of every ldmatrix phase hit distinct banks.
//
// Epilogue: the fp32 accumulators go through shared memory (one warp row at a time, reusing the
// pipeline's buffers) so that each thread then owns 8 consecutive output channels of a pixel:
// y = act(acc * scale[c] + shift[c]) (+ old y when accumulating), rounded to fp16 once, written
// with one 16-byte store when c_out % 8 == 0 and the output is aligned, else element by element
// with the columns past c_out masked.
//
// Deterministic: every output element is one thread's fixed-order sum; no atomics.
#include "common.cuh"
#include "half8_io.cuh"
#include "mma.cuh"

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
                                           int relu, int accumulate, int vec_out) {
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
    const int block_m = blockIdx.x * BM, block_n = blockIdx.y * BN;
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
        // fixed, so one (r, s, c) state per thread follows the tiles as they are loaded in order.
        constexpr int CPR = BK / 8, RP = NT / CPR;  // chunks per row, rows per pass
        static_assert(BM % RP == 0, "whole passes of A rows");
        constexpr int A_PER = BM / RP, B_PER = (BN + RP - 1) / RP;
        const int kchunk = tid % CPR, row0 = tid / CPR;
        long long a_base[A_PER];
        int a_h[A_PER], a_w[A_PER];
#pragma unroll
        for (int i = 0; i < A_PER; ++i)
            conv_row<DGRAD>(block_m + row0 + RP * i, m, sl, stride, pad, image_elems, &a_base[i], &a_h[i], &a_w[i]);
        // (kr, ks) is the slice tap, kc the channel, of this thread's K offset in the next tile.
        int kr = 0, ks = 0, kc = kchunk * 8;
        auto normalize = [&] {
            while (kc >= cs) {
                kc -= cs;
                if (++ks == sl.sc) {
                    ks = 0;
                    ++kr;
                }
            }
        };
        normalize();

        auto load_tile = [&](int slot) {
            __half* a = s_a + slot * BM * BK;
            __half* b = s_b + slot * BN * BK;
            const bool k_ok = kr < sl.rc;
#pragma unroll
            for (int i = 0; i < A_PER; ++i) {
                int sh, sw;
                const bool ok = k_ok && conv_tap<DGRAD>(a_h[i], a_w[i], kr, ks, hs, ws, &sh, &sw);
                // An invalid copy reads nothing but still needs a mapped, aligned address.
                const __half* g = ok ? src + a_base[i] + (long long)(sh * ws + sw) * cs + kc : src;
                conv_cp_async_16_ca(a + conv_swz<BK>(row0 + RP * i, kchunk), g, ok);
            }
            const int k = conv_weight_tap<DGRAD>(sl, kr, ks, kw, stride) * cs + kc;
#pragma unroll
            for (int j = 0; j < B_PER; ++j) {
                const int row = row0 + RP * j;
                if (BN % RP != 0 && row >= BN) break;  // fewer B rows than threads per pass
                const int co = block_n + row;
                const bool ok = k_ok && co < nc;
                const __half* g = ok ? wgt + (long long)co * kdim + k : wgt;
                cp_async_16(b + conv_swz<BK>(row, kchunk), g, ok);
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
    constexpr int CHUNKS = WM * BN / 8;  // 8-channel pieces of one warp row's tile
    for (int pass = 0; pass < WARPS_M; ++pass) {
        if (wm == pass) {
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT8; ++j) {
                    const int r = i * 16 + (lane >> 2), c = wn * WN + j * 8 + (lane & 3) * 2;
                    stage[r * LD + c] = acc[i][j][0];
                    stage[r * LD + c + 1] = acc[i][j][1];
                    stage[(r + 8) * LD + c] = acc[i][j][2];
                    stage[(r + 8) * LD + c + 1] = acc[i][j][3];
                }
        }
        __syncthreads();
        for (int id = tid; id < CHUNKS; id += NT) {
            const int r = id / (BN / 8), c8 = (id % (BN / 8)) * 8;
            const int gm = block_m + pass * WM + r, gc = block_n + c8;
            if (gm >= m || gc >= nc) continue;
            long long pixel = gm;  // forward rows are the output pixels in order
            if (DGRAD) {
                const int img = gm / (sl.hc * sl.wc);
                const int rem = gm - img * sl.hc * sl.wc;
                const int j = rem / sl.wc, l = rem - j * sl.wc;
                pixel = ((long long)img * ho + sl.h_first + stride * j) * wo + sl.w_first + stride * l;
            }
            float v[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int c = gc + e < nc ? gc + e : gc;  // masked columns read a valid channel
                // One fused multiply-add, like the CPU twin's mul_add.
                const float t = fmaf(stage[r * LD + c8 + e], scale ? scale[c] : 1.0f, shift ? shift[c] : 0.0f);
                v[e] = relu ? fmaxf(t, 0.0f) : t;
            }
            __half* o = out + pixel * nc + gc;
            if (vec_out) {  // nc % 8 == 0 and `out` aligned: the 8 channels exist and are 16 bytes
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
        __syncthreads();  // the next warp row overwrites the staging tile
    }
}

// Entry points: conv_<pass>_<loader>_<BM>x<BN>. Arguments, all variants alike:
//   src (x forward, dy dgrad: n x hs x ws x cs), wgt ([nc][kh][kw][cs]: the KRSC weight forward,
//   the re-laid-out one dgrad), out (n x ho x wo x nc), n, hs, ws, cs, ho, wo, nc, kh, kw, stride,
//   pad, scale, shift (nc floats each or null), relu, accumulate, vec_out.
// Grid (ceil(rows / BM), ceil(nc / BN), slices): forward 1 slice of n*ho*wo rows; dgrad
// stride*stride slices, rows the largest class's n*hc*wc (see conv_slice). 32 * WARPS_M * WARPS_N
// threads, conv_smem_bytes(..) of dynamic shared memory (over 48 KiB needs the opt-in attribute).
#define CONV_PARAMS                                                                                    \
    const __half *__restrict__ src, const __half *__restrict__ wgt, __half *__restrict__ out, int n, int hs, \
        int ws, int cs, int ho, int wo, int nc, int kh, int kw, int stride, int pad,                \
        const float *__restrict__ scale, const float *__restrict__ shift, int relu, int accumulate, int vec_out
#define CONV_ARGS src, wgt, out, n, hs, ws, cs, ho, wo, nc, kh, kw, stride, pad, scale, shift, relu, accumulate, vec_out

extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x128(CONV_PARAMS) {
    conv_igemm<128, 128, 32, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x64(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_64x64(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_64x32(CONV_PARAMS) {
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
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x128(CONV_PARAMS) {
    conv_igemm<128, 128, 32, 2, 2, 3, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x64(CONV_PARAMS) {
    conv_igemm<128, 64, 32, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_128x32(CONV_PARAMS) {
    conv_igemm<128, 32, 32, 4, 1, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_64x64(CONV_PARAMS) {
    conv_igemm<64, 64, 32, 2, 2, 4, true, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_dgrad_vec_64x32(CONV_PARAMS) {
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
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x128k64(CONV_PARAMS) {
    conv_igemm<128, 128, 64, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x128s4(CONV_PARAMS) {
    conv_igemm<128, 128, 32, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) conv_fwd_vec_256x128(CONV_PARAMS) {
    conv_igemm<256, 128, 32, 4, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x64k64(CONV_PARAMS) {
    conv_igemm<128, 64, 64, 2, 2, 3, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_64x64k64(CONV_PARAMS) {
    conv_igemm<64, 64, 64, 2, 2, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) conv_fwd_vec_128x32k64(CONV_PARAMS) {
    conv_igemm<128, 32, 64, 4, 1, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) conv_fwd_vec_256x32(CONV_PARAMS) {
    conv_igemm<256, 32, 32, 8, 1, 4, false, true>(CONV_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) conv_fwd_vec_256x64(CONV_PARAMS) {
    conv_igemm<256, 64, 32, 4, 2, 4, false, true>(CONV_ARGS);
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
