// Max pooling of fp16 NHWC activations, forward and backward. CPU twin: src/backend/cpu/pool.rs.
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

// Input (ih, iw) of the maximum of channel `ch` in the window of output (b, oy, ox).
__device__ __forceinline__ void window_argmax(const __half* __restrict__ x, const PoolGeometry& g,
                                              int b, int oy, int ox, int ch, int* best_h,
                                              int* best_w) {
    float best = __uint_as_float(0xff800000u);  // -inf; NVRTC has no INFINITY macro
    *best_h = -1;
    *best_w = -1;
    for (int r = 0; r < g.k; ++r) {
        const int ih = oy * g.stride + r - g.pad;
        if (ih < 0 || ih >= g.h) continue;
        for (int s = 0; s < g.k; ++s) {
            const int iw = ox * g.stride + s - g.pad;
            if (iw < 0 || iw >= g.w) continue;
            const float v = __half2float(x[(((long long)b * g.h + ih) * g.w + iw) * g.c + ch]);
            if (v > best || *best_h < 0) {
                best = v;
                *best_h = ih;
                *best_w = iw;
            }
        }
    }
}

// y = maxpool(x); y is (n, oh, ow, c). One thread per output element; y copies the winning fp16
// value, so forward is bitwise exact.
extern "C" __global__ void pool_maxpool_fwd_f16(const __half* __restrict__ x,
                                                __half* __restrict__ y, int n, int h, int w, int c,
                                                int oh, int ow, int k, int stride, int pad) {
    const PoolGeometry g{n, h, w, c, oh, ow, k, stride, pad};
    const long long items = (long long)n * oh * ow * c;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const int ch = (int)(it % c);
        long long pix = it / c;
        const int ox = (int)(pix % ow);
        pix /= ow;
        const int oy = (int)(pix % oh);
        const int b = (int)(pix / oh);
        int bh, bw;
        window_argmax(x, g, b, oy, ox, ch, &bh, &bw);
        y[it] = x[(((long long)b * h + bh) * w + bw) * c + ch];
    }
}

// dx (+)= sum of dy over the windows whose maximum is this element. One thread per input element.
extern "C" __global__ void pool_maxpool_bwd_f16(const __half* __restrict__ x,
                                                const __half* __restrict__ dy,
                                                __half* __restrict__ dx, int n, int h, int w,
                                                int c, int oh, int ow, int k, int stride, int pad,
                                                int accumulate) {
    const PoolGeometry g{n, h, w, c, oh, ow, k, stride, pad};
    const long long items = (long long)n * h * w * c;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const int ch = (int)(it % c);
        long long pix = it / c;
        const int iw = (int)(pix % w);
        pix /= w;
        const int ih = (int)(pix % h);
        const int b = (int)(pix / h);
        float acc = accumulate ? __half2float(dx[it]) : 0.0f;
        // Windows containing row ih: oy * stride - pad <= ih < oy * stride - pad + k.
        const int oy0 = max(0, (ih + pad - k + stride) / stride);
        const int oy1 = min(oh - 1, (ih + pad) / stride);
        const int ox0 = max(0, (iw + pad - k + stride) / stride);
        const int ox1 = min(ow - 1, (iw + pad) / stride);
        for (int oy = oy0; oy <= oy1; ++oy) {
            for (int ox = ox0; ox <= ox1; ++ox) {
                int bh, bw;
                window_argmax(x, g, b, oy, ox, ch, &bh, &bw);
                if (bh == ih && bw == iw) {
                    acc += __half2float(dy[(((long long)b * oh + oy) * ow + ox) * c + ch]);
                }
            }
        }
        dx[it] = __float2half_rn(acc);
    }
}
