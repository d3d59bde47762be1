// Nearest and bilinear upsampling of fp16 NHWC activations by an integer factor, forward and
// backward. CPU twin: src/backend/cpu/resample.rs. Wrappers: src/backend/cuda/resample.rs.
//
// Both directions are gathers: every output element sums its own taps in a fixed order, so there
// are no atomics and results are identical run to run. Backward gathers too: each input-gradient
// element finds the output rows and columns that read it (the transposed taps) and sums them in
// ascending order, as the CPU twin's transposed tap tables do.
//
// Tap arithmetic matches the CPU twin operation for operation (half-pixel centres, clamped at the
// low border), and weights are combined with explicit roundings so nvcc cannot contract them.
#include "common.cuh"
#include "half8_io.cuh"

#define MODE_NEAREST 0
#define MODE_BILINEAR 1

// The (at most two) input indices output index `o` reads along one axis, with their weights.
struct Taps {
    int i0, i1, count;
    float w0, w1;
};

__device__ __forceinline__ Taps forward_taps(int o, int factor, int n_in, int mode) {
    Taps t;
    if (mode == MODE_NEAREST) {
        t.i0 = o / factor;
        t.w0 = 1.0f;
        t.i1 = t.i0;
        t.w1 = 0.0f;
        t.count = 1;
        return t;
    }
    const float src = fmaxf(__fsub_rn(__fdiv_rn((float)o + 0.5f, (float)factor), 0.5f), 0.0f);
    t.i0 = min((int)floorf(src), n_in - 1);
    t.i1 = min(t.i0 + 1, n_in - 1);
    const float l1 = src - (float)t.i0;
    if (t.i1 == t.i0) {
        t.w0 = 1.0f;
        t.w1 = 0.0f;
        t.count = 1;
    } else {
        t.w0 = 1.0f - l1;
        t.w1 = l1;
        t.count = 2;
    }
    return t;
}

// The weight with which output index `o` reads input index `i` (0 when it does not).
__device__ __forceinline__ float tap_weight(int o, int i, int factor, int n_in, int mode,
                                            bool* reads) {
    const Taps t = forward_taps(o, factor, n_in, mode);
    *reads = true;
    if (t.i0 == i) return t.w0;
    if (t.count == 2 && t.i1 == i) return t.w1;
    *reads = false;
    return 0.0f;
}

// Adds w * src[pixel, c0 .. c0 + lanes] to acc, lanes = 8 on the vector path, else 1.
template <int LANES>
__device__ __forceinline__ void fma_pixel(const __half* __restrict__ src, long long base, float w,
                                          float acc[LANES]) {
    if (LANES == 8) {
        float v[8];
        load8(src, base / 8, v);
#pragma unroll
        for (int j = 0; j < LANES; ++j) acc[j] = fmaf(w, v[j], acc[j]);
    } else {
        acc[0] = fmaf(w, __half2float(src[base]), acc[0]);
    }
}

template <int LANES>
__device__ __forceinline__ void store_pixel(__half* __restrict__ dst, long long base,
                                            float acc[LANES]) {
    if (LANES == 8) {
        store8(dst, base / 8, acc);
    } else {
        dst[base] = __float2half_rn(acc[0]);
    }
}

// One work item = LANES channels of one output pixel (forward).
template <int LANES>
__device__ void upsample_fwd(const __half* __restrict__ x, __half* __restrict__ y, int n, int h,
                             int w, int c, int factor, int mode) {
    const int oh_total = h * factor, ow_total = w * factor, groups = c / LANES;
    const long long items = (long long)n * oh_total * ow_total * groups;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const int g = (int)(it % groups);
        long long pix = it / groups;
        const int ow = (int)(pix % ow_total);
        pix /= ow_total;
        const int oh = (int)(pix % oh_total);
        const int b = (int)(pix / oh_total);
        const Taps rows = forward_taps(oh, factor, h, mode);
        const Taps cols = forward_taps(ow, factor, w, mode);
        float acc[LANES];
#pragma unroll
        for (int j = 0; j < LANES; ++j) acc[j] = 0.0f;
        for (int a = 0; a < rows.count; ++a) {
            const int ih = a == 0 ? rows.i0 : rows.i1;
            const float wa = a == 0 ? rows.w0 : rows.w1;
            for (int s = 0; s < cols.count; ++s) {
                const int iw = s == 0 ? cols.i0 : cols.i1;
                const float wb = s == 0 ? cols.w0 : cols.w1;
                const long long base = (((long long)b * h + ih) * w + iw) * c + (long long)g * LANES;
                fma_pixel<LANES>(x, base, __fmul_rn(wa, wb), acc);
            }
        }
        store_pixel<LANES>(y, it * LANES, acc);
    }
}

// The item decoding and initial value of both backward forms: LANES channels (group g) of input
// pixel (b, ih, iw), acc = old dx or 0.
template <int LANES>
__device__ __forceinline__ void bwd_item(const __half* __restrict__ dx, long long it, int h, int w, int groups,
                                         int accumulate, int* b, int* ih, int* iw, int* g, float acc[LANES]) {
    *g = (int)(it % groups);
    long long pix = it / groups;
    *iw = (int)(pix % w);
    pix /= w;
    *ih = (int)(pix % h);
    *b = (int)(pix / h);
    if (accumulate) {
        if (LANES == 8) {
            load8(dx, it, acc);
        } else {
            acc[0] = __half2float(dx[it]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < LANES; ++j) acc[j] = 0.0f;
    }
}

// Backward for a factor F known at compile time (HRNet's 2, 4 and 8): the same taps summed in the
// same order as upsample_bwd (so the same bits), but the weights of the 3F candidate output
// columns are computed once per item, in registers, instead of once per candidate output row
// (each is an IEEE division): at F = 8 that is 24 divisions per item instead of about 600.
template <int LANES, int F>
__device__ void upsample_bwd_fixed(const __half* __restrict__ dy, __half* __restrict__ dx, int n, int h,
                                   int w, int c, int mode, int accumulate) {
    const int oh_total = h * F, ow_total = w * F, groups = c / LANES;
    const long long items = (long long)n * h * w * groups;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        int b, ih, iw, g;
        float acc[LANES];
        bwd_item<LANES>(dx, it, h, w, groups, accumulate, &b, &ih, &iw, &g, acc);
        // Candidate output columns (iw - 1) F + j, j < 3F: those inside the image that read iw.
        const int ow_first = (iw - 1) * F;
        float wcol[3 * F];
        uint32_t reads = 0;
#pragma unroll
        for (int j = 0; j < 3 * F; ++j) {
            const int ow = ow_first + j;
            bool r = false;
            wcol[j] = ow >= 0 && ow < ow_total ? tap_weight(ow, iw, F, w, mode, &r) : 0.0f;
            reads |= (uint32_t)r << j;
        }
        const int oh0 = max(0, (ih - 1) * F), oh1 = min(oh_total, (ih + 2) * F);
        for (int oh = oh0; oh < oh1; ++oh) {
            bool reads_row;
            const float wa = tap_weight(oh, ih, F, h, mode, &reads_row);
            if (!reads_row) continue;
            const long long row = (((long long)b * oh_total + oh) * ow_total + ow_first) * c + (long long)g * LANES;
#pragma unroll
            for (int j = 0; j < 3 * F; ++j) {
                if ((reads >> j) & 1u) fma_pixel<LANES>(dy, row + (long long)j * c, __fmul_rn(wa, wcol[j]), acc);
            }
        }
        store_pixel<LANES>(dx, it * LANES, acc);
    }
}

// One work item = LANES channels of one input pixel (backward, gather over the outputs reading it).
template <int LANES>
__device__ void upsample_bwd(const __half* __restrict__ dy, __half* __restrict__ dx, int n, int h,
                             int w, int c, int factor, int mode, int accumulate) {
    const int oh_total = h * factor, ow_total = w * factor, groups = c / LANES;
    const long long items = (long long)n * h * w * groups;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        int b, ih, iw, g;
        float acc[LANES];
        bwd_item<LANES>(dx, it, h, w, groups, accumulate, &b, &ih, &iw, &g, acc);
        // Only outputs within one input pixel of this one can read it: [(i-1)f, (i+2)f).
        const int oh0 = max(0, (ih - 1) * factor), oh1 = min(oh_total, (ih + 2) * factor);
        const int ow0 = max(0, (iw - 1) * factor), ow1 = min(ow_total, (iw + 2) * factor);
        for (int oh = oh0; oh < oh1; ++oh) {
            bool reads_row;
            const float wa = tap_weight(oh, ih, factor, h, mode, &reads_row);
            if (!reads_row) continue;
            for (int ow = ow0; ow < ow1; ++ow) {
                bool reads_col;
                const float wb = tap_weight(ow, iw, factor, w, mode, &reads_col);
                if (!reads_col) continue;
                const long long base =
                    (((long long)b * oh_total + oh) * ow_total + ow) * c + (long long)g * LANES;
                fma_pixel<LANES>(dy, base, __fmul_rn(wa, wb), acc);
            }
        }
        store_pixel<LANES>(dx, it * LANES, acc);
    }
}

// y (n, h*factor, w*factor, c) = upsample(x (n, h, w, c)). `vec` needs c % 8 == 0 and aligned pointers.
extern "C" __global__ void resample_upsample_fwd_f16(const __half* __restrict__ x,
                                                     __half* __restrict__ y, int n, int h, int w,
                                                     int c, int factor, int mode, int vec) {
    if (vec) {
        upsample_fwd<8>(x, y, n, h, w, c, factor, mode);
    } else {
        upsample_fwd<1>(x, y, n, h, w, c, factor, mode);
    }
}

template <int LANES>
__device__ void upsample_bwd_dispatch(const __half* __restrict__ dy, __half* __restrict__ dx, int n, int h,
                                      int w, int c, int factor, int mode, int accumulate) {
    switch (factor) {
        case 2: return upsample_bwd_fixed<LANES, 2>(dy, dx, n, h, w, c, mode, accumulate);
        case 4: return upsample_bwd_fixed<LANES, 4>(dy, dx, n, h, w, c, mode, accumulate);
        case 8: return upsample_bwd_fixed<LANES, 8>(dy, dx, n, h, w, c, mode, accumulate);
        default: return upsample_bwd<LANES>(dy, dx, n, h, w, c, factor, mode, accumulate);
    }
}

// dx (n, h, w, c) (+)= upsample^T(dy (n, h*factor, w*factor, c)).
extern "C" __global__ void resample_upsample_bwd_f16(const __half* __restrict__ dy,
                                                     __half* __restrict__ dx, int n, int h, int w,
                                                     int c, int factor, int mode, int accumulate,
                                                     int vec) {
    if (vec) {
        upsample_bwd_dispatch<8>(dy, dx, n, h, w, c, factor, mode, accumulate);
    } else {
        upsample_bwd_dispatch<1>(dy, dx, n, h, w, c, factor, mode, accumulate);
    }
}
