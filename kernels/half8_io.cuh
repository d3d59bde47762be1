// Moving eight fp16 values (16 bytes) between memory and eight fp32 registers, and the
// accumulate-or-overwrite store every gradient kernel ends with. Device code only.
//
// Include it after common.cuh (for half8), and include nothing from here: build.rs inlines one
// level of local includes for NVRTC, which has no include path.
#pragma once

// f[0..8] = float(p[8 * i .. 8 * i + 8]); p must be 16-byte aligned.
__device__ __forceinline__ void load8(const __half* p, long long i, float f[8]) {
    const half8 v = reinterpret_cast<const half8*>(p)[i];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 t = __half22float2(v.h[j]);
        f[2 * j] = t.x;
        f[2 * j + 1] = t.y;
    }
}

// p[8 * i .. 8 * i + 8] = half(f[0..8]), round to nearest even.
__device__ __forceinline__ void store8(__half* p, long long i, const float f[8]) {
    half8 v;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        v.h[j] = __floats2half2_rn(f[2 * j], f[2 * j + 1]);
    }
    reinterpret_cast<half8*>(p)[i] = v;
}

// `old + v` when accumulating into a gradient another reader already wrote, else `v`; the sum is
// in fp32 and rounded once by the caller's store.
__device__ __forceinline__ float accumulate_or_set(float old, float v, int accumulate) {
    return accumulate ? old + v : v;
}
