// Mixed-precision optimizer step (docs/maths.md#adamw): gradient unscale with a finite check, then
// AdamW on fp32 master weights writing the fp16 weight copy.
// CPU twins: src/backend/cpu/optim.rs; each kernel's comment names its twin. Arguments come in the
// twin's order; values the host computes once per step (bias corrections) arrive ready-made.
//
// Launch geometry: every kernel here takes blockDim.x = OPTIM_BLOCK (256) and walks its elements
// with a grid-stride loop, so any gridDim.x >= 1 is correct; min(ceil(n / 256), 1024) is a good
// default. No float atomics anywhere.
#include <cuda_fp16.h>

#define OPTIM_BLOCK 256

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

// The AdamW update of one element: master/m/v/half_copy at `wi`, the gradient at `gi`. The host
// turns the step number t into bias_corr1 = 1 - beta1^t and bias_corr2 = 1 - beta2^t
// (AdamWParams::bias_corrections); weight_decay is 0 for tensors that do not decay (BN parameters,
// biases); grad_mul folds gradient clipping into the read of the gradient; half_copy may be null
// (no fp16 copy kept).
__device__ __forceinline__ void adamw_element(float* __restrict__ master,
                                              const float* __restrict__ grad,
                                              float* __restrict__ m, float* __restrict__ v,
                                              __half* __restrict__ half_copy, long long wi,
                                              long long gi, float lr, float beta1, float beta2,
                                              float eps, float weight_decay, float bias_corr1,
                                              float bias_corr2, float grad_mul) {
    const float g = grad[gi] * grad_mul;
    const float m_i = beta1 * m[wi] + (1.0f - beta1) * g;
    const float v_i = beta2 * v[wi] + (1.0f - beta2) * g * g;
    m[wi] = m_i;
    v[wi] = v_i;
    const float m_hat = m_i / bias_corr1;
    const float v_hat = v_i / bias_corr2;
    float w = master[wi];
    w -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * w);
    master[wi] = w;
    if (half_copy != nullptr) half_copy[wi] = __float2half_rn(w);
}

// One block's share of an AdamW step: `len` elements of one tensor, at `value_at` in the master /
// fp16-copy / moment regions and at `grad_at` in the gradient region; `decay` 0 or 1.
// Layout shared with the host's AdamWChunk (src/backend/params.rs): 24 bytes, no padding.
struct AdamWChunk {
    unsigned long long value_at, grad_at;
    unsigned int len, decay;
};

// AdamW on every trainable tensor of a model in one launch, instead of one launch per tensor (over
// 900 for HRNet-W32, most of them BN vectors of 18-256 elements, so a per-tensor step was bound by
// the launch rate, not by memory). The arguments index whole regions; `chunks` (count entries,
// each at most a few thousand elements of one tensor) say which elements to update and whether to
// decay them. Each block walks chunks blockIdx.x, blockIdx.x + gridDim.x, ..., so any 1-D grid is
// correct. CPU twin: adamw_step_chunks(master, grad, m, v, half_copy, chunks, hp, t, grad_mul);
// weight_decay applies where a chunk's decay is 1. (One tensor alone is a table of its chunks:
// the wrappers' adamw_step.)
extern "C" __global__ void optim_adamw_chunks_f32(
    float* __restrict__ master, const float* __restrict__ grad, float* __restrict__ m,
    float* __restrict__ v, __half* __restrict__ half_copy, const AdamWChunk* __restrict__ chunks,
    int count, float lr, float beta1, float beta2, float eps, float weight_decay,
    float bias_corr1, float bias_corr2, float grad_mul) {
    for (int c = blockIdx.x; c < count; c += gridDim.x) {
        const AdamWChunk chunk = chunks[c];
        const float decay = chunk.decay ? weight_decay : 0.0f;
        for (unsigned int j = threadIdx.x; j < chunk.len; j += blockDim.x) {
            adamw_element(master, grad, m, v, half_copy, (long long)(chunk.value_at + j),
                          (long long)(chunk.grad_at + j), lr, beta1, beta2, eps, decay,
                          bias_corr1, bias_corr2, grad_mul);
        }
    }
}
