// Max pooling of fp16 NHWC activations, forward and backward, 8 channels per thread where c % 8 == 0. CPU twin: src/backend/cpu/pool.rs.
// Wrappers: src/backend/cuda/pool.rs.
//
// Padded positions never win; ties go to the first position in window order (row-major), the
// CPU twin's rule. Backward stores no indices: it recomputes each window's winner from x, and is a
// gather (each input element sums dy over the windows it won, in ascending window order), so it
// needs no atomics and gives identical results run to run.
#include "common.cuh"
#include "half8_io.cuh"

struct PoolGeometry {
    int n, h, w, c, oh, ow, k, stride, pad;
};

// LANES consecutive channels starting at element `base`: 8 with one 16-byte load, or 1.
template <int LANES>
__device__ __forceinline__ void load_lanes(const __half* __restrict__ p, long long base,
                                           float v[LANES]) {
    if (LANES == 8) {
        load8(p, base / 8, v);
    } else {
        v[0] = __half2float(p[base]);
    }
}

// For each of LANES channels from c0: the maximum of the window of output (b, oy, ox) and the
// input row and column it came from (first in window order on ties).
template <int LANES>
__device__ __forceinline__ void window_argmax(const __half* __restrict__ x, const PoolGeometry& g,
                                              int b, int oy, int ox, int c0, float best[LANES],
                                              int best_h[LANES], int best_w[LANES]) {
#pragma unroll
    for (int j = 0; j < LANES; ++j) {
        best[j] = __uint_as_float(0xff800000u);  // -inf; NVRTC has no INFINITY macro
        best_h[j] = -1;
        best_w[j] = -1;
    }
    for (int r = 0; r < g.k; ++r) {
        const int ih = oy * g.stride + r - g.pad;
        if (ih < 0 || ih >= g.h) continue;
        for (int s = 0; s < g.k; ++s) {
            const int iw = ox * g.stride + s - g.pad;
            if (iw < 0 || iw >= g.w) continue;
            float v[LANES];
            load_lanes<LANES>(x, (((long long)b * g.h + ih) * g.w + iw) * g.c + c0, v);
#pragma unroll
            for (int j = 0; j < LANES; ++j) {
                if (v[j] > best[j] || best_h[j] < 0) {
                    best[j] = v[j];
                    best_h[j] = ih;
                    best_w[j] = iw;
                }
            }
        }
    }
}

// One work item = LANES channels of one output pixel. y copies the winning fp16 values (exactly:
// fp16 -> fp32 -> fp16 is the identity), so forward is bitwise exact.
template <int LANES>
__device__ void maxpool_fwd(const __half* __restrict__ x, __half* __restrict__ y,
                            const PoolGeometry& g) {
    const int groups = g.c / LANES;
    const long long items = (long long)g.n * g.oh * g.ow * groups;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const int c0 = (int)(it % groups) * LANES;
        long long pix = it / groups;
        const int ox = (int)(pix % g.ow);
        pix /= g.ow;
        const int oy = (int)(pix % g.oh);
        const int b = (int)(pix / g.oh);
        float best[LANES];
        int bh[LANES], bw[LANES];
        window_argmax<LANES>(x, g, b, oy, ox, c0, best, bh, bw);
        if (LANES == 8) {
            store8(y, it, best);
        } else {
            y[it] = __float2half_rn(best[0]);
        }
    }
}

// Backward, one work item = LANES channels of a cell of S x S input pixels: each pixel gets the sum
// of dy over the windows whose maximum it is, in ascending window order. S = 1 is the per-pixel
// form (any stride); S = 2 serves stride 2 (ResNet's 3/2/1 stem pool): the windows that touch a
// cell are the same for all its pixels, so each window's winner is found once per cell instead of
// once per pixel it covers (2.25 times per pixel for 3/2/1). Both add the same values in the same
// order, so they give the same bits.
template <int LANES, int S>
__device__ void maxpool_bwd_cells(const __half* __restrict__ x, const __half* __restrict__ dy,
                                  __half* __restrict__ dx, const PoolGeometry& g, int accumulate) {
    const int groups = g.c / LANES;
    const int ch = (g.h + S - 1) / S, cw = (g.w + S - 1) / S;
    const long long items = (long long)g.n * ch * cw * groups;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const int c0 = (int)(it % groups) * LANES;
        long long cell = it / groups;
        const int w0 = (int)(cell % cw) * S;  // the cell's first input column and row
        cell /= cw;
        const int r0 = (int)(cell % ch) * S;
        const int b = (int)(cell / ch);
        const int rows = min(S, g.h - r0), cols = min(S, g.w - w0);
        float acc[S * S][LANES];
#pragma unroll
        for (int p = 0; p < S * S; ++p) {
            const int ih = r0 + p / S, iw = w0 + p % S;
            const bool in = p / S < rows && p % S < cols;
            if (accumulate && in) {
                load_lanes<LANES>(dx, (((long long)b * g.h + ih) * g.w + iw) * g.c + c0, acc[p]);
            } else {
#pragma unroll
                for (int j = 0; j < LANES; ++j) acc[p][j] = 0.0f;
            }
        }
        // Windows containing a row of the cell: from the first row's lowest to the last row's highest.
        const int oy0 = max(0, (r0 + g.pad - g.k + g.stride) / g.stride);
        const int oy1 = min(g.oh - 1, (r0 + rows - 1 + g.pad) / g.stride);
        const int ox0 = max(0, (w0 + g.pad - g.k + g.stride) / g.stride);
        const int ox1 = min(g.ow - 1, (w0 + cols - 1 + g.pad) / g.stride);
        for (int oy = oy0; oy <= oy1; ++oy) {
            for (int ox = ox0; ox <= ox1; ++ox) {
                float best[LANES], grad[LANES];
                int bh[LANES], bw[LANES];
                window_argmax<LANES>(x, g, b, oy, ox, c0, best, bh, bw);
                load_lanes<LANES>(dy, (((long long)b * g.oh + oy) * g.ow + ox) * g.c + c0, grad);
#pragma unroll
                for (int p = 0; p < S * S; ++p) {
#pragma unroll
                    for (int j = 0; j < LANES; ++j) {
                        if (bh[j] == r0 + p / S && bw[j] == w0 + p % S) acc[p][j] += grad[j];
                    }
                }
            }
        }
#pragma unroll
        for (int p = 0; p < S * S; ++p) {
            if (p / S >= rows || p % S >= cols) continue;
            const long long at = (((long long)b * g.h + r0 + p / S) * g.w + w0 + p % S) * g.c + c0;
            if (LANES == 8) {
                store8(dx, at / 8, acc[p]);
            } else {
                dx[at] = __float2half_rn(acc[p][0]);
            }
        }
    }
}

// y = maxpool(x); y is (n, oh, ow, c). `vec` (wrapper-checked): c % 8 == 0 and both pointers
// 16-byte aligned, so each thread handles 8 channels with 16-byte accesses.
extern "C" __global__ void pool_maxpool_fwd_f16(const __half* __restrict__ x,
                                                __half* __restrict__ y, int n, int h, int w, int c,
                                                int oh, int ow, int k, int stride, int pad,
                                                int vec) {
    const PoolGeometry g{n, h, w, c, oh, ow, k, stride, pad};
    if (vec) {
        maxpool_fwd<8>(x, y, g);
    } else {
        maxpool_fwd<1>(x, y, g);
    }
}

// dx (+)= sum of dy over the windows whose maximum is this element. `vec` as for forward, for x,
// dy and dx.
extern "C" __global__ void pool_maxpool_bwd_f16(const __half* __restrict__ x,
                                                const __half* __restrict__ dy,
                                                __half* __restrict__ dx, int n, int h, int w,
                                                int c, int oh, int ow, int k, int stride, int pad,
                                                int accumulate, int vec) {
    const PoolGeometry g{n, h, w, c, oh, ow, k, stride, pad};
    if (stride == 2) {
        if (vec) {
            maxpool_bwd_cells<8, 2>(x, dy, dx, g, accumulate);
        } else {
            maxpool_bwd_cells<1, 2>(x, dy, dx, g, accumulate);
        }
    } else if (vec) {
        maxpool_bwd_cells<8, 1>(x, dy, dx, g, accumulate);
    } else {
        maxpool_bwd_cells<1, 1>(x, dy, dx, g, accumulate);
    }
}
