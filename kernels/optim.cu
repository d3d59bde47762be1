// Mixed-precision optimizer step (REFERENCE §5): gradient unscale with a finite check, global
// gradient norm, AdamW on fp32 master weights writing the fp16 weight copy.
// CPU twins: src/backend/cpu/optim.rs; each kernel's comment names its twin. Arguments come in the
// twin's order; values the host computes once per step (bias corrections) arrive ready-made.
//
// Launch geometry: every kernel here takes blockDim.x = OPTIM_BLOCK (256) and walks its elements
// with a grid-stride loop, so any gridDim.x >= 1 is correct; min(ceil(n / 256), 1024) is a good
// default. optim_grad_norm_sq_f32 writes one partial per block, and its grid must depend on n only
// (never on the device) for the norm to be bitwise reproducible. No float atomics anywhere.
#include <cuda_fp16.h>

#define OPTIM_BLOCK 256

// grad32[i] = float(grad16[i]) * inv_scale; sets *nonfinite = 1 if any result is inf/NaN.
// The host zeroes *nonfinite before the first unscale of a step; every offending thread stores
// the same value 1, so the unsynchronised stores are benign. CPU twin: unscale_and_check_f16
// (which returns "all finite", i.e. !*nonfinite).
extern "C" __global__ void optim_unscale_check_f16(const __half* __restrict__ grad16,
                                                   float* __restrict__ grad32, long long n,
                                                   float inv_scale, int* __restrict__ nonfinite) {
    bool bad = false;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = __half2float(grad16[i]) * inv_scale;
        grad32[i] = g;
        bad |= !isfinite(g);
    }
    if (bad) *nonfinite = 1;
}

// In place: grads[i] *= inv_scale, for gradients already accumulated in fp32 (weight gradients).
// CPU twin: unscale_and_check.
extern "C" __global__ void optim_unscale_check_f32(float* __restrict__ grads, long long n,
                                                   float inv_scale, int* __restrict__ nonfinite) {
    bool bad = false;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grads[i] * inv_scale;
        grads[i] = g;
        bad |= !isfinite(g);
    }
    if (bad) *nonfinite = 1;
}

// Fixed-order tree reduction of one double per thread; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double value, double* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = OPTIM_BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

// partials[blockIdx.x] = this block's share of sum(grads[i]^2), accumulated in double.
// Follow with optim_sum_partials_f64. CPU twin: grad_norm_sq (its chunking differs, so the two
// agree to rounding, each being deterministic).
extern "C" __global__ void optim_grad_norm_sq_f32(const float* __restrict__ grads, long long n,
                                                  double* __restrict__ partials) {
    __shared__ double shared[OPTIM_BLOCK];
    double sum = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const double g = (double)grads[i];
        sum += g * g;
    }
    const double block_total = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

// out[0] += sum of the `count` partials in a fixed order. Accumulating into out lets the norm of
// many parameter tensors be summed on the device (zero out[0] first). Launch: one block of
// OPTIM_BLOCK threads; launches on one stream run in order, so the accumulation is deterministic.
extern "C" __global__ void optim_sum_partials_f64(const double* __restrict__ partials, int count,
                                                  double* __restrict__ out) {
    __shared__ double shared[OPTIM_BLOCK];
    double sum = 0.0;
    for (int i = threadIdx.x; i < count; i += OPTIM_BLOCK) sum += partials[i];
    const double all = block_sum(sum, shared);
    if (threadIdx.x == 0) out[0] += all;
}

// One AdamW step on one parameter tensor. CPU twin: adamw_step(master, grad, m, v, half_copy,
// hp, t, decay, grad_mul), where the host turns t into bias_corr1 = 1 - beta1^t and
// bias_corr2 = 1 - beta2^t (AdamWParams::bias_corrections) and `decay == false` into
// weight_decay = 0 (BN parameters and biases). half_copy may be null (no fp16 copy kept).
// grad_mul folds gradient clipping into the read of the gradient.
extern "C" __global__ void optim_adamw_f32(float* __restrict__ master,
                                           const float* __restrict__ grad, float* __restrict__ m,
                                           float* __restrict__ v, __half* __restrict__ half_copy,
                                           long long n, float lr, float beta1, float beta2,
                                           float eps, float weight_decay, float bias_corr1,
                                           float bias_corr2, float grad_mul) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i] * grad_mul;
        const float m_i = beta1 * m[i] + (1.0f - beta1) * g;
        const float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = m_i;
        v[i] = v_i;
        const float m_hat = m_i / bias_corr1;
        const float v_hat = v_i / bias_corr2;
        float w = master[i];
        w -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * w);
        master[i] = w;
        if (half_copy != nullptr) half_copy[i] = __float2half_rn(w);
    }
}
