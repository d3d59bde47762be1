// Elementwise kernels: precision conversion, fill, scaled add (benches/gpu_bandwidth.rs), ReLU and
// the residual add.
// CPU twins: src/backend/cpu/elementwise.rs. Launch wrappers: src/backend/cuda/elementwise.rs.
//
// All are memory-bound: they take a 1-D grid-stride launch sized to the GPU (not to n), and move
// 16 bytes per access on the vector path. The vector path needs every pointer 16-byte aligned;
// the wrapper checks that and passes `vec` = 1, else the scalar loop does all the work.
#include "common.cuh"

// dst[i] = half(src[i]), round to nearest even (the CPU twin uses the same rule).
extern "C" __global__ void elementwise_convert_f32_to_f16(const float* __restrict__ src,
                                                          __half* __restrict__ dst, long long n,
                                                          int vec) {
    long long start = 0;
    if (vec) {
        const long long n8 = n / 8;
        for (long long i = global_thread_index(); i < n8; i += grid_stride()) {
            const float4 a = reinterpret_cast<const float4*>(src)[2 * i];
            const float4 b = reinterpret_cast<const float4*>(src)[2 * i + 1];
            half8 out;
            out.h[0] = __floats2half2_rn(a.x, a.y);
            out.h[1] = __floats2half2_rn(a.z, a.w);
            out.h[2] = __floats2half2_rn(b.x, b.y);
            out.h[3] = __floats2half2_rn(b.z, b.w);
            reinterpret_cast<half8*>(dst)[i] = out;
        }
        start = n8 * 8;
    }
    for (long long i = start + global_thread_index(); i < n; i += grid_stride()) {
        dst[i] = __float2half_rn(src[i]);
    }
}

// dst[i] = value. The fp16 value arrives as its 16-bit pattern so the host needs no half type.
extern "C" __global__ void elementwise_fill_f16(__half* __restrict__ dst, unsigned short bits,
                                                long long n, int vec) {
    const __half value = __ushort_as_half(bits);
    long long start = 0;
    if (vec) {
        const long long n8 = n / 8;
        half8 v;
        v.h[0] = v.h[1] = v.h[2] = v.h[3] = __halves2half2(value, value);
        for (long long i = global_thread_index(); i < n8; i += grid_stride()) {
            reinterpret_cast<half8*>(dst)[i] = v;
        }
        start = n8 * 8;
    }
    for (long long i = start + global_thread_index(); i < n; i += grid_stride()) {
        dst[i] = value;
    }
}

// y[i] = half(a * float(x[i]) + float(y[i])): fp16 storage, fp32 arithmetic, one rounding.
extern "C" __global__ void elementwise_axpy_f16(float a, const __half* __restrict__ x,
                                                __half* __restrict__ y, long long n, int vec) {
    long long start = 0;
    if (vec) {
        const long long n8 = n / 8;
        for (long long i = global_thread_index(); i < n8; i += grid_stride()) {
            const half8 xv = reinterpret_cast<const half8*>(x)[i];
            half8 yv = reinterpret_cast<half8*>(y)[i];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 xf = __half22float2(xv.h[j]);
                const float2 yf = __half22float2(yv.h[j]);
                yv.h[j] = __floats2half2_rn(fmaf(a, xf.x, yf.x), fmaf(a, xf.y, yf.y));
            }
            reinterpret_cast<half8*>(y)[i] = yv;
        }
        start = n8 * 8;
    }
    for (long long i = start + global_thread_index(); i < n; i += grid_stride()) {
        y[i] = __float2half_rn(fmaf(a, __half2float(x[i]), __half2float(y[i])));
    }
}

// ---- Activations and residual joins: relu, add, add+relu and their backward ----------------------
// CPU twins: relu_fwd, relu_bwd, add_fwd, add_bwd, add_relu_fwd (add_relu_bwd is relu_bwd, as on the
// CPU). Gradients are written or, with `accumulate`, added in fp32 to what the buffer holds.
#include "half8_io.cuh"

// One template for all of them: out = op(a, b) (+ out when accumulating), with `b` unused by the
// unary ops. Vector path: 8 elements per 16-byte access; the scalar loop takes the tail.
template <class Op>
__device__ __forceinline__ void map_f16(const __half* __restrict__ a, const __half* __restrict__ b,
                                        __half* __restrict__ out, long long n, int accumulate,
                                        int vec, Op op) {
    long long start = 0;
    if (vec) {
        const long long n8 = n / 8;
        for (long long i = global_thread_index(); i < n8; i += grid_stride()) {
            float av[8], bv[8], ov[8];
            load8(a, i, av);
            if (b != nullptr) load8(b, i, bv);
            if (accumulate) load8(out, i, ov);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                ov[j] = accumulate_or_set(ov[j], op(av[j], b != nullptr ? bv[j] : 0.0f), accumulate);
            }
            store8(out, i, ov);
        }
        start = n8 * 8;
    }
    for (long long i = start + global_thread_index(); i < n; i += grid_stride()) {
        const float bv = b != nullptr ? __half2float(b[i]) : 0.0f;
        const float old = accumulate ? __half2float(out[i]) : 0.0f;
        out[i] = __float2half_rn(accumulate_or_set(old, op(__half2float(a[i]), bv), accumulate));
    }
}

struct Relu {
    __device__ float operator()(float x, float) const { return fmaxf(x, 0.0f); }
};
// Gradient through a ReLU given its output: positive exactly where its input was.
struct ReluGrad {
    __device__ float operator()(float y, float dy) const { return y > 0.0f ? dy : 0.0f; }
};
struct Add {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct AddRelu {
    __device__ float operator()(float a, float b) const { return fmaxf(a + b, 0.0f); }
};
struct Identity {
    __device__ float operator()(float g, float) const { return g; }
};

// y = max(x, 0).
extern "C" __global__ void elementwise_relu_fwd_f16(const __half* __restrict__ x,
                                                    __half* __restrict__ y, long long n, int vec) {
    map_f16(x, nullptr, y, n, 0, vec, Relu());
}

// dx (+)= dy * [y > 0].
extern "C" __global__ void elementwise_relu_bwd_f16(const __half* __restrict__ y,
                                                    const __half* __restrict__ dy,
                                                    __half* __restrict__ dx, long long n,
                                                    int accumulate, int vec) {
    map_f16(y, dy, dx, n, accumulate, vec, ReluGrad());
}

// y = a + b.
extern "C" __global__ void elementwise_add_fwd_f16(const __half* __restrict__ a,
                                                   const __half* __restrict__ b,
                                                   __half* __restrict__ y, long long n, int vec) {
    map_f16(a, b, y, n, 0, vec, Add());
}

// dx (+)= dy: the gradient of either operand of a sum.
extern "C" __global__ void elementwise_add_bwd_f16(const __half* __restrict__ dy,
                                                   __half* __restrict__ dx, long long n,
                                                   int accumulate, int vec) {
    map_f16(dy, nullptr, dx, n, accumulate, vec, Identity());
}

// y = max(a + b, 0).
extern "C" __global__ void elementwise_add_relu_fwd_f16(const __half* __restrict__ a,
                                                        const __half* __restrict__ b,
                                                        __half* __restrict__ y, long long n,
                                                        int vec) {
    map_f16(a, b, y, n, 0, vec, AddRelu());
}
