// Concatenation along channels of fp16 NHWC activations, and its backward. CPU twin:
// src/backend/cpu/concat.rs. Wrappers: src/backend/cuda/concat.rs.
//
// Both directions are the same strided copy of a channel range, once per input: forward copies
// input i into channels [at, at + width) of every pixel of y; backward copies (or adds) those
// channels of dy into input i's gradient. Pure data movement: bitwise exact, no atomics.
#include "common.cuh"
#include "half8_io.cuh"

// dst[p * dst_c + dst_at + k] (+)= src[p * src_c + src_at + k] for k < width, p < pixels.
// `vec` (wrapper-checked): width, both strides and both offsets are multiples of 8 and both
// pointers 16-byte aligned, so each thread moves 8 channels with one 16-byte load and store.
extern "C" __global__ void concat_copy_channels_f16(const __half* __restrict__ src, int src_c,
                                                    int src_at, __half* __restrict__ dst,
                                                    int dst_c, int dst_at, int width,
                                                    long long pixels, int accumulate, int vec) {
    if (vec) {
        const int groups = width / 8;
        const long long items = pixels * groups;
        for (long long it = global_thread_index(); it < items; it += grid_stride()) {
            const long long p = it / groups;
            const int k = (int)(it % groups) * 8;
            const long long s = (p * src_c + src_at + k) / 8, d = (p * dst_c + dst_at + k) / 8;
            if (accumulate) {
                float v[8], old[8];
                load8(src, s, v);
                load8(dst, d, old);
#pragma unroll
                for (int j = 0; j < 8; ++j) old[j] += v[j];
                store8(dst, d, old);
            } else {
                reinterpret_cast<half8*>(dst)[d] = reinterpret_cast<const half8*>(src)[s];
            }
        }
        return;
    }
    const long long items = pixels * width;
    for (long long it = global_thread_index(); it < items; it += grid_stride()) {
        const long long p = it / width;
        const int k = (int)(it % width);
        const __half v = src[p * src_c + src_at + k];
        __half* d = dst + p * dst_c + dst_at + k;
        *d = accumulate ? __float2half_rn(__half2float(*d) + __half2float(v)) : v;
    }
}
