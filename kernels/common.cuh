// Helpers shared by every kernel file. Device code only.
//
// Conventions (build.rs relies on the first one to list kernels):
// - entry points are written `extern "C" __global__ void <family>_<op>[_<variant>](...)`;
// - element counts are 64-bit (`long long`): HRNet activations at 768x768 batch 4 exceed 2^31 bytes
//   in total, and one wrong narrowing is a silent corruption;
// - fp16 in memory, fp32 arithmetic.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// Index of this thread in a 1-D launch, and the stride of a grid-stride loop over it.
__device__ __forceinline__ long long global_thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() {
    return (long long)gridDim.x * blockDim.x;
}

// Element i of an NHWC tensor with h x w pixels of c channels per image, as coordinates.
struct NhwcIndex {
    long long img;
    int y, x, c;
};
__device__ __forceinline__ NhwcIndex nhwc_index(long long i, int h, int w, int c) {
    const long long pix = i / c;
    const long long row = pix / w;
    return NhwcIndex{row / h, (int)(row % h), (int)(pix % w), (int)(i % c)};
}

// 16 bytes: the widest single load/store. Eight fp16 or four fp32 values.
struct __align__(16) half8 {
    __half2 h[4];
};

__device__ __forceinline__ bool is_aligned_16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}
