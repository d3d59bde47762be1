// Heatmap losses: loss value and gradient in one pass (docs/maths.md#adaptive-wing-loss,
// docs/maths.md#loss-reduction-and-gradient-scaling).
// CPU twins: src/backend/cpu/loss.rs (same names without the `loss_` prefix and `_f16` suffix, same
// argument order).
//
// Layout: NHWC with the K landmark channels last; element i = ((img*h + y)*w + x)*k + c.
// Predictions are fp16, targets and per-channel weights fp32, all arithmetic fp32. Each element's
// loss is channel_weights[c] * (W*M + 1) * l(p, y) with M the optional Adaptive Wing weight map
// (3x3 grey dilation of the target > threshold). The loss is the mean over all elements; the
// gradient written is d(mean loss)/d pred * grad_scale, multiplied BEFORE the fp16 cast: the
// unscaled per-element gradients of a mean over millions of elements are below fp16's normal range.
//
// Deterministic reduction, no float atomics: every thread accumulates its grid-stride elements in
// double, each block reduces its threads in a fixed tree and writes one partial; then
// loss_sum_partials_f64 (one block) adds the partials in a fixed order. The value is bitwise
// reproducible for a given grid size, so launchers must derive the grid from the shape only.
//
// Launch geometry of the *_fwd_bwd_f16 kernels: blockDim.x = LOSS_BLOCK (256), any gridDim.x
// >= 1 (e.g. min(ceil(total / 256), 1024)); `partials` holds gridDim.x doubles.
#include "common.cuh"

#define LOSS_BLOCK 256

// Adaptive Wing loss and its derivative for one pixel.
__device__ __forceinline__ void awing_pixel(float p, float y, float alpha, float omega, float eps,
                                            float theta, float* loss, float* dloss) {
    const float diff = p - y;
    const float d = fabsf(diff);
    const float sign = diff < 0.0f ? -1.0f : 1.0f;
    const float a = alpha - y;
    if (d < theta) {
        const float u = d / eps;
        const float u_a = powf(u, a);
        *loss = omega * log1pf(u_a);
        // u^(a-1) as u^a / u saves a second powf (as the CPU twin does). The derivative's limit
        // at d = 0 is 0 for a > 1.
        *dloss = d == 0.0f ? 0.0f : sign * omega * a * (u_a / u) / (eps * (1.0f + u_a));
    } else {
        // Linear branch A*d - C: A is the log branch's slope at theta, C joins the branches.
        const float r = theta / eps;
        const float r_a = powf(r, a);
        const float big_a = omega * (1.0f / (1.0f + r_a)) * a * powf(r, a - 1.0f) / eps;
        const float big_c = theta * big_a - omega * log1pf(r_a);
        *loss = big_a * d - big_c;
        *dloss = sign * big_a;
    }
}

struct AWingPixel {
    float alpha, omega, eps, theta;
    __device__ __forceinline__ void operator()(float p, float y, float* loss, float* dloss) const {
        awing_pixel(p, y, alpha, omega, eps, theta, loss, dloss);
    }
};

struct MsePixel {
    __device__ __forceinline__ void operator()(float p, float y, float* loss, float* dloss) const {
        const float d = p - y;
        *loss = d * d;
        *dloss = 2.0f * d;
    }
};

// W*M + 1 for the element at (img, y, x, c): max of the target over the 3x3 window clipped to
// the heatmap (scipy's grey_dilation with reflect mode gives the same maximum).
__device__ __forceinline__ float map_weight(const float* __restrict__ target, int h, int w, int k,
                                            long long img, int y, int x, int c, float map_w,
                                            float map_threshold) {
    float max_t = target[((img * h + y) * w + x) * k + c];  // the window's centre
    const int y0 = max(y - 1, 0), y1 = min(y + 1, h - 1);
    const int x0 = max(x - 1, 0), x1 = min(x + 1, w - 1);
    for (int yy = y0; yy <= y1; ++yy) {
        for (int xx = x0; xx <= x1; ++xx) {
            max_t = fmaxf(max_t, target[((img * h + yy) * w + xx) * k + c]);
        }
    }
    return max_t > map_threshold ? map_w + 1.0f : 1.0f;
}

// Fixed-order tree reduction of one double per thread; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double value, double* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = LOSS_BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

template <typename Pixel>
__device__ __forceinline__ void weighted_mean_fwd_bwd(
    const __half* __restrict__ pred, const float* __restrict__ target,
    const float* __restrict__ channel_weights, int n, int h, int w, int k, Pixel pixel,
    int use_weight_map, float map_w, float map_threshold, float grad_scale,
    __half* __restrict__ grad, double* __restrict__ partials) {
    __shared__ double shared[LOSS_BLOCK];
    const long long total = (long long)n * h * w * k;
    // Same factor as the CPU twin: computed in double, rounded once to float.
    const float grad_mul = (float)((double)grad_scale / (double)total);
    double sum = 0.0;
    for (long long i = global_thread_index(); i < total; i += grid_stride()) {
        const auto [img, y, x, c] = nhwc_index(i, h, w, k);
        float loss, dloss;
        pixel(__half2float(pred[i]), target[i], &loss, &dloss);
        float weight = channel_weights[c];
        if (use_weight_map) {
            weight *= map_weight(target, h, w, k, img, y, x, c, map_w, map_threshold);
        }
        sum += (double)(weight * loss);
        grad[i] = __float2half_rn(dloss * weight * grad_mul);
    }
    const double block_total = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

// Adaptive Wing loss. CPU twin: awing_fwd_bwd(pred, target, channel_weights, shape,
// AWingParams{alpha, omega, eps, theta}, weight_map (use_weight_map, map_w, map_threshold),
// grad_scale, grad); the loss value comes from loss_sum_partials_f64.
extern "C" __global__ void loss_awing_fwd_bwd_f16(
    const __half* __restrict__ pred, const float* __restrict__ target,
    const float* __restrict__ channel_weights, int n, int h, int w, int k, float alpha,
    float omega, float eps, float theta, int use_weight_map, float map_w, float map_threshold,
    float grad_scale, __half* __restrict__ grad, double* __restrict__ partials) {
    const AWingPixel pixel = {alpha, omega, eps, theta};
    weighted_mean_fwd_bwd(pred, target, channel_weights, n, h, w, k, pixel, use_weight_map, map_w,
                          map_threshold, grad_scale, grad, partials);
}

// Heatmap MSE. CPU twin: mse_fwd_bwd(pred, target, channel_weights, shape, weight_map,
// grad_scale, grad).
extern "C" __global__ void loss_mse_fwd_bwd_f16(
    const __half* __restrict__ pred, const float* __restrict__ target,
    const float* __restrict__ channel_weights, int n, int h, int w, int k, int use_weight_map,
    float map_w, float map_threshold, float grad_scale, __half* __restrict__ grad,
    double* __restrict__ partials) {
    weighted_mean_fwd_bwd(pred, target, channel_weights, n, h, w, k, MsePixel{}, use_weight_map,
                          map_w, map_threshold, grad_scale, grad, partials);
}

// out[0] = (sum of the `count` partials in a fixed order) / total: the mean loss.
// Launch: one block of LOSS_BLOCK threads.
extern "C" __global__ void loss_sum_partials_f64(const double* __restrict__ partials, int count,
                                                 long long total, double* __restrict__ out) {
    __shared__ double shared[LOSS_BLOCK];
    double sum = 0.0;
    for (int i = threadIdx.x; i < count; i += LOSS_BLOCK) sum += partials[i];
    const double all = block_sum(sum, shared);
    if (threadIdx.x == 0) out[0] = all / (double)total;
}
