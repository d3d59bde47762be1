// Batch normalisation over N*H*W per channel of fp16 NHWC activations, with fused ReLU and fused
// residual add + ReLU. CPU twin: src/backend/cpu/batchnorm.rs. Wrappers: src/backend/cuda/batchnorm.rs.
//
// Deterministic by construction: no atomics. Reductions over the M = N*H*W rows run in a fixed
// grid of (channel tile, row chunk) blocks that each write one partial per channel to a workspace,
// then one block per channel merges the partials in a fixed order (batchnorm_stats_finalize_f32).
//
// Two reduction layouts, chosen by the wrapper: the vector one (c % 8 == 0, aligned tensors) has
// each thread sum 8 channels read with 16-byte loads (see vec_layout); the scalar one has 32 x 8
// threads, threadIdx.x the channel inside a tile of 32 and threadIdx.y one of 8 row lanes, so a
// warp reads one row's 32 consecutive channels (64 bytes) at a time. The row chunks of a launch
// depend on the shape (and path) only, so results are the same on every GPU and every run. (The
// statistics a convolution's epilogue summarises are merged here too, but in row tiles of the
// convolution's tile, which depends on the GPU's SM count: those are the same on every run, and
// may differ in the last bits from one GPU model to another.)
//
// Workspace layout (f32), shared by forward and backward:
//   partials[chunk][c][3]  forward: (count, mean, M2); backward: (sum g, sum g*xhat, unused)
//   coeffs[2][c]           backward: (mean of g, mean of g*xhat) per channel
#include "common.cuh"
#include "half8_io.cuh"
#include "bn_summary.cuh"

#define TILE_C 32
#define ROW_LANES 8

// Rows [row0, row1) of chunk `chunk` when m rows are split into `chunks` near-equal chunks.
__device__ __forceinline__ void chunk_rows(long long m, int chunks, int chunk, long long* row0,
                                           long long* row1) {
    *row0 = m * chunk / chunks;
    *row1 = m * (chunk + 1) / chunks;
}

// Pass 1 of the training statistics, scalar path: a (count, mean, M2) summary per (chunk,
// channel). Grid (ceil(c / 32), chunks), block (32, 8).
extern "C" __global__ void batchnorm_stats_partial_f16(const __half* __restrict__ x, long long m,
                                                       int c, int chunks,
                                                       float* __restrict__ partials) {
    __shared__ float sh[2][ROW_LANES][TILE_C];
    const int ch = blockIdx.x * TILE_C + threadIdx.x;
    long long row0, row1;
    chunk_rows(m, chunks, blockIdx.y, &row0, &row1);
    float shift = 0.0f, s = 0.0f, q = 0.0f;
    if (ch < c) {
        shift = __half2float(x[row0 * c + ch]);
#pragma unroll 4
        for (long long r = row0 + threadIdx.y; r < row1; r += ROW_LANES) {
            const float d = __half2float(x[r * c + ch]) - shift;
            s += d;
            q = fmaf(d, d, q);
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = s;
    sh[1][threadIdx.y][threadIdx.x] = q;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int lane = 1; lane < ROW_LANES; ++lane) {
            s += sh[0][lane][threadIdx.x];
            q += sh[1][lane][threadIdx.x];
        }
        shifted_summary(shift, s, q, row1 - row0, partials + ((long long)blockIdx.y * c + ch) * 3);
    }
}

// The vector path's block layout: 256 threads, `tile` groups of 8 channels side by side (at most
// 32, so 256 channels) times `lanes` rows in parallel. A warp reads whole 16-byte channel groups
// of consecutive rows: for c = 32 that is 512 contiguous bytes per load instruction.
#define VEC_THREADS 256
__device__ __forceinline__ void vec_layout(int c, int* tile, int* lanes) {
    *tile = min(c / 8, 32);
    *lanes = VEC_THREADS / *tile;
}

// Sums the `width` floats per lane of `sh` (lanes x width) into lane 0's row, in a fixed tree
// order (deterministic). Every thread of the block must call it.
__device__ __forceinline__ void tree_sum_lanes(float* sh, int lanes, int width, int lane,
                                               int offset_in_lane, int count) {
    int pow2 = 1;
    while (pow2 < lanes) pow2 <<= 1;
    for (int off = pow2 / 2; off > 0; off >>= 1) {
        __syncthreads();
        if (lane < off && lane + off < lanes) {
            for (int j = 0; j < count; ++j) {
                sh[lane * width + offset_in_lane + j] += sh[(lane + off) * width + offset_in_lane + j];
            }
        }
    }
    __syncthreads();
}

// Pass 1, vector path (c % 8 == 0, x 16-byte aligned): each thread sums 8 channels with 16-byte
// loads. Grid (ceil(c / 8 / tile), chunks), block 256; 2 x 2048 floats of shared memory.
extern "C" __global__ void batchnorm_stats_partial_vec_f16(const __half* __restrict__ x,
                                                           long long m, int c, int chunks,
                                                           float* __restrict__ partials) {
    __shared__ float sh_s[VEC_THREADS * 8], sh_q[VEC_THREADS * 8];
    int tile, lanes;
    vec_layout(c, &tile, &lanes);
    const int grp = threadIdx.x % tile, lane = threadIdx.x / tile, width = tile * 8;
    const int g = blockIdx.x * tile + grp;
    const bool active = lane < lanes && g < c / 8;
    long long row0, row1;
    chunk_rows(m, chunks, blockIdx.y, &row0, &row1);
    float shift[8], s[8], q[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = q[j] = shift[j] = 0.0f;
    if (active) {
        load8(x, (row0 * c) / 8 + g, shift);
#pragma unroll 2
        for (long long r = row0 + lane; r < row1; r += lanes) {
            float v[8];
            load8(x, (r * c) / 8 + g, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float d = v[j] - shift[j];
                s[j] += d;
                q[j] = fmaf(d, d, q[j]);
            }
        }
    }
    if (lane < lanes) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            sh_s[lane * width + grp * 8 + j] = s[j];
            sh_q[lane * width + grp * 8 + j] = q[j];
        }
    }
    tree_sum_lanes(sh_s, lanes, width, lane < lanes ? lane : lanes, grp * 8, 8);
    tree_sum_lanes(sh_q, lanes, width, lane < lanes ? lane : lanes, grp * 8, 8);
    if (lane == 0 && active) {
        for (int j = 0; j < 8; ++j) {
            shifted_summary(shift[j], sh_s[grp * 8 + j], sh_q[grp * 8 + j], row1 - row0,
                            partials + ((long long)blockIdx.y * c + g * 8 + j) * 3);
        }
    }
}

// Pass 2: merges the chunk summaries, writes saved = [mean; invstd] from the biased variance and
// moves the running statistics towards the batch mean and the unbiased variance. One block of
// FINALIZE_THREADS per channel: thread t merges chunks t, t + FINALIZE_THREADS, ... in order, then
// a fixed tree merges the threads' summaries (Chan et al.'s pairwise formula), so the order, and
// every bit, depends on the shape only. (One thread per channel walking up to 1024 chunks serially
// was latency-bound: 0.13 ms for 4x192x192x32.)
//
// Why the threads' serial merges are in f32 and only the tree in f64: a convolution's epilogue
// gives one summary per 64-row tile, 9216 of them for the stem of a 768x768 batch-4 network, 72
// merges per thread, each with a division; in f64 that is slow on the GeForce cards users train
// on (f64 at 1/64 of the f32 rate). Chan's merge is stable in f32 and the summaries are f32
// already: the worst channel's invstd error went from 7e-8 to 1.5e-7 relative in the 9216-chunk
// checks of tests/kernel_sim, against fp16 activations' 5e-4. The tree's 7 merges stay in f64.
#define FINALIZE_THREADS 128

// Merges summary (nb, mb, qb) into (n, mean, m2): Chan et al.'s pairwise update, in T.
template <typename T>
__device__ __forceinline__ void chan_merge(T* n, T* mean, T* m2, T nb, T mb, T qb) {
    if (nb == T(0)) return;
    const T total = *n + nb, delta = mb - *mean, share = nb / total;
    *mean += delta * share;
    *m2 += qb + delta * delta * *n * share;
    *n = total;
}

extern "C" __global__ void batchnorm_stats_finalize_f32(const float* __restrict__ partials,
                                                        long long m, int c, int chunks, float eps,
                                                        float momentum, float* __restrict__ saved,
                                                        float* __restrict__ running_mean,
                                                        float* __restrict__ running_var) {
    __shared__ double sh[3][FINALIZE_THREADS];
    const int ch = blockIdx.x, t = threadIdx.x;
    float nf = 0.0f, mean_f = 0.0f, m2f = 0.0f;
    for (int k = t; k < chunks; k += FINALIZE_THREADS) {
        const float* p = partials + ((long long)k * c + ch) * 3;
        chan_merge(&nf, &mean_f, &m2f, p[0], p[1], p[2]);
    }
    double n = nf, mean = mean_f, m2 = m2f;
    sh[0][t] = n;
    sh[1][t] = mean;
    sh[2][t] = m2;
    for (int off = FINALIZE_THREADS / 2; off > 0; off >>= 1) {
        __syncthreads();
        if (t < off) {
            chan_merge(&n, &mean, &m2, sh[0][t + off], sh[1][t + off], sh[2][t + off]);
            sh[0][t] = n;
            sh[1][t] = mean;
            sh[2][t] = m2;
        }
    }
    if (t != 0) return;
    const double var = m2 / (double)m;
    saved[ch] = (float)mean;
    saved[c + ch] = (float)(1.0 / sqrt(var + (double)eps));
    const double unbiased = m > 1 ? var * (double)m / (double)(m - 1) : var;
    const double mo = momentum;
    running_mean[ch] = (float)((1.0 - mo) * (double)running_mean[ch] + mo * mean);
    running_var[ch] = (float)((1.0 - mo) * (double)running_var[ch] + mo * unbiased);
}

// The channel of element i in a grid-stride loop, kept up to date by addition: a 64-bit modulo
// per element would cost more than the memory access it serves.
struct ChannelCursor {
    int ch, step, c;
    __device__ ChannelCursor(long long first, long long stride, int c_)
        : ch((int)(first % c_)), step((int)(stride % c_)), c(c_) {}
    __device__ void advance() {
        ch += step;
        if (ch >= c) ch -= c;
    }
};

// Per-channel scale and shift of the normalisation, staged in shared memory by every block of the
// elementwise kernels: scale = gamma * invstd, shift = beta - mean * scale, rounded as the CPU
// twin rounds them (no contraction into an fma). `second` is invstd, or the running variance when
// `second_is_var` (eval), whose invstd is 1 / sqrt(var + eps).
__device__ __forceinline__ void stage_scale_shift(const float* __restrict__ gamma,
                                                  const float* __restrict__ beta,
                                                  const float* __restrict__ mean,
                                                  const float* __restrict__ second,
                                                  int second_is_var, float eps, int c,
                                                  float* scale, float* shift) {
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        const float invstd = second_is_var ? 1.0f / sqrtf(second[i] + eps) : second[i];
        const float s = __fmul_rn(gamma[i], invstd);
        scale[i] = s;
        shift[i] = __fsub_rn(beta[i], __fmul_rn(mean[i], s));
    }
    __syncthreads();
}

// y = x * scale + shift per channel, then optionally + residual, then optionally ReLU:
// BN, BN+ReLU and BN+add+ReLU in one pass. Used by training forward (saved statistics), its
// recomputation in backward, and eval (running statistics). 1-D grid-stride launch with
// 2 * c floats of dynamic shared memory; `residual` may be null.
extern "C" __global__ void batchnorm_fwd_apply_f16(const __half* __restrict__ x,
                                                   const float* __restrict__ gamma,
                                                   const float* __restrict__ beta,
                                                   const float* __restrict__ mean,
                                                   const float* __restrict__ second,
                                                   int second_is_var, float eps,
                                                   const __half* __restrict__ residual, int relu,
                                                   __half* __restrict__ y, long long n, int c,
                                                   int vec) {
    extern __shared__ float staged[];
    float* scale = staged;
    float* shift = staged + c;
    stage_scale_shift(gamma, beta, mean, second, second_is_var, eps, c, scale, shift);
    long long start = 0;
    if (vec) {
        // c % 8 == 0, so 8 consecutive elements are 8 consecutive channels of one pixel.
        const long long n8 = n / 8;
        ChannelCursor cur(global_thread_index() * 8, grid_stride() * 8, c);
        for (long long i = global_thread_index(); i < n8; i += grid_stride(), cur.advance()) {
            const int c0 = cur.ch;
            float v[8], r[8];
            load8(x, i, v);
            if (residual != nullptr) load8(residual, i, r);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float o = fmaf(v[j], scale[c0 + j], shift[c0 + j]);
                if (residual != nullptr) o += r[j];
                v[j] = relu ? fmaxf(o, 0.0f) : o;
            }
            store8(y, i, v);
        }
        start = n8 * 8;
    }
    ChannelCursor cur(start + global_thread_index(), grid_stride(), c);
    for (long long i = start + global_thread_index(); i < n; i += grid_stride(), cur.advance()) {
        const int ch = cur.ch;
        float o = fmaf(__half2float(x[i]), scale[ch], shift[ch]);
        if (residual != nullptr) o += __half2float(residual[i]);
        y[i] = __float2half_rn(relu ? fmaxf(o, 0.0f) : o);
    }
}

// The gradient reaching the normalised value: dy, zeroed where a fused ReLU was off. With a fused
// residual add the ReLU mask comes from the stored output `y_out` (y > 0); with a plain fused ReLU
// it is recomputed from x like the CPU twin (gamma * xhat + beta <= 0 means off).
__device__ __forceinline__ float masked_grad(float g, float xhat, float gamma, float beta, int relu,
                                             const __half* __restrict__ y_out, long long idx) {
    if (y_out != nullptr) return __half2float(y_out[idx]) > 0.0f ? g : 0.0f;
    if (relu && fmaf(gamma, xhat, beta) <= 0.0f) return 0.0f;
    return g;
}

// Backward pass 1: per (chunk, channel) sums of g and g * xhat, in the stats kernel's grid.
// With a fused residual (`y_out` non-null), also writes the residual's gradient d_res (+)= g,
// since every element is visited exactly once here.
extern "C" __global__ void batchnorm_bwd_partial_f16(
    const __half* __restrict__ dy, const __half* __restrict__ x, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ saved, int relu,
    const __half* __restrict__ y_out, __half* __restrict__ d_res, int accumulate_res, long long m,
    int c, int chunks, float* __restrict__ partials) {
    __shared__ float sh[2][ROW_LANES][TILE_C];
    const int ch = blockIdx.x * TILE_C + threadIdx.x;
    long long row0, row1;
    chunk_rows(m, chunks, blockIdx.y, &row0, &row1);
    float sum_g = 0.0f, sum_gx = 0.0f;
    if (ch < c) {
        const float mu = saved[ch], invstd = saved[c + ch], ga = gamma[ch], be = beta[ch];
        for (long long r = row0 + threadIdx.y; r < row1; r += ROW_LANES) {
            const long long idx = r * c + ch;
            const float xhat = (__half2float(x[idx]) - mu) * invstd;
            const float g = masked_grad(__half2float(dy[idx]), xhat, ga, be, relu, y_out, idx);
            if (d_res != nullptr) {
                const float old = accumulate_res ? __half2float(d_res[idx]) : 0.0f;
                d_res[idx] = __float2half_rn(accumulate_or_set(old, g, accumulate_res));
            }
            sum_g += g;
            sum_gx = fmaf(g, xhat, sum_gx);
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = sum_g;
    sh[1][threadIdx.y][threadIdx.x] = sum_gx;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int lane = 1; lane < ROW_LANES; ++lane) {
            sum_g += sh[0][lane][threadIdx.x];
            sum_gx += sh[1][lane][threadIdx.x];
        }
        float* p = partials + ((long long)blockIdx.y * c + ch) * 3;
        p[0] = sum_g;
        p[1] = sum_gx;
        p[2] = 0.0f;
    }
}

// Backward pass 1, vector path (c % 8 == 0 and dy, x, y_out, d_res 16-byte aligned): 8 channels
// per thread, the stats kernel's vector layout, lane sums in a fixed tree.
extern "C" __global__ void batchnorm_bwd_partial_vec_f16(
    const __half* __restrict__ dy, const __half* __restrict__ x, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ saved, int relu,
    const __half* __restrict__ y_out, __half* __restrict__ d_res, int accumulate_res, long long m,
    int c, int chunks, float* __restrict__ partials) {
    __shared__ float sh_g[VEC_THREADS * 8], sh_gx[VEC_THREADS * 8];
    int tile, lanes;
    vec_layout(c, &tile, &lanes);
    const int grp = threadIdx.x % tile, lane = threadIdx.x / tile, width = tile * 8;
    const int g = blockIdx.x * tile + grp;
    const bool active = lane < lanes && g < c / 8;
    long long row0, row1;
    chunk_rows(m, chunks, blockIdx.y, &row0, &row1);
    float sum_g[8], sum_gx[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) sum_g[j] = sum_gx[j] = 0.0f;
    if (active) {
        float mu[8], invstd[8], ga[8], be[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int ch = g * 8 + j;
            mu[j] = saved[ch];
            invstd[j] = saved[c + ch];
            ga[j] = gamma[ch];
            be[j] = beta[ch];
        }
        for (long long r = row0 + lane; r < row1; r += lanes) {
            const long long i8 = (r * c) / 8 + g;
            float gv[8], xv[8], yv[8], old[8];
            load8(dy, i8, gv);
            load8(x, i8, xv);
            if (y_out != nullptr) load8(y_out, i8, yv);
            if (d_res != nullptr && accumulate_res) load8(d_res, i8, old);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float xhat = (xv[j] - mu[j]) * invstd[j];
                float gm = gv[j];
                if (y_out != nullptr) {
                    gm = yv[j] > 0.0f ? gm : 0.0f;
                } else if (relu && fmaf(ga[j], xhat, be[j]) <= 0.0f) {
                    gm = 0.0f;
                }
                if (d_res != nullptr) old[j] = accumulate_or_set(old[j], gm, accumulate_res);
                sum_g[j] += gm;
                sum_gx[j] = fmaf(gm, xhat, sum_gx[j]);
            }
            if (d_res != nullptr) store8(d_res, i8, old);
        }
    }
    if (lane < lanes) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            sh_g[lane * width + grp * 8 + j] = sum_g[j];
            sh_gx[lane * width + grp * 8 + j] = sum_gx[j];
        }
    }
    tree_sum_lanes(sh_g, lanes, width, lane < lanes ? lane : lanes, grp * 8, 8);
    tree_sum_lanes(sh_gx, lanes, width, lane < lanes ? lane : lanes, grp * 8, 8);
    if (lane == 0 && active) {
        for (int j = 0; j < 8; ++j) {
            float* p = partials + ((long long)blockIdx.y * c + g * 8 + j) * 3;
            p[0] = sh_g[grp * 8 + j];
            p[1] = sh_gx[grp * 8 + j];
            p[2] = 0.0f;
        }
    }
}

// Backward pass 2: chunk sums (f64), dbeta = sum g, dgamma = sum g * xhat (overwritten: each
// parameter has one user), and the per-channel means pass 3 needs. One block per channel, the
// chunks split over its threads and summed in a fixed tree, as the forward finalize.
extern "C" __global__ void batchnorm_bwd_finalize_f32(const float* __restrict__ partials,
                                                      long long m, int c, int chunks,
                                                      float* __restrict__ dgamma,
                                                      float* __restrict__ dbeta,
                                                      float* __restrict__ coeffs) {
    __shared__ double sh[2][FINALIZE_THREADS];
    const int ch = blockIdx.x, t = threadIdx.x;
    double sum_g = 0.0, sum_gx = 0.0;
    for (int k = t; k < chunks; k += FINALIZE_THREADS) {
        const float* p = partials + ((long long)k * c + ch) * 3;
        sum_g += (double)p[0];
        sum_gx += (double)p[1];
    }
    sh[0][t] = sum_g;
    sh[1][t] = sum_gx;
    for (int off = FINALIZE_THREADS / 2; off > 0; off >>= 1) {
        __syncthreads();
        if (t < off) {
            sh[0][t] = sum_g = sum_g + sh[0][t + off];
            sh[1][t] = sum_gx = sum_gx + sh[1][t + off];
        }
    }
    if (t != 0) return;
    dbeta[ch] = (float)sum_g;
    dgamma[ch] = (float)sum_gx;
    coeffs[ch] = (float)(sum_g / (double)m);
    coeffs[c + ch] = (float)(sum_gx / (double)m);
}

// Backward pass 3: dx (+)= gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)).
// 1-D grid-stride launch with 6 * c floats of dynamic shared memory.
extern "C" __global__ void batchnorm_bwd_dx_f16(const __half* __restrict__ dy,
                                                const __half* __restrict__ x,
                                                const float* __restrict__ gamma,
                                                const float* __restrict__ beta,
                                                const float* __restrict__ saved, int relu,
                                                const __half* __restrict__ y_out,
                                                const float* __restrict__ coeffs,
                                                __half* __restrict__ dx, int accumulate,
                                                long long n, int c, int vec) {
    extern __shared__ float staged[];
    float* s_mean = staged;
    float* s_invstd = staged + c;
    float* s_gamma = staged + 2 * c;
    float* s_beta = staged + 3 * c;
    float* s_mg = staged + 4 * c;
    float* s_mgx = staged + 5 * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        s_mean[i] = saved[i];
        s_invstd[i] = saved[c + i];
        s_gamma[i] = gamma[i];
        s_beta[i] = beta[i];
        s_mg[i] = coeffs[i];
        s_mgx[i] = coeffs[c + i];
    }
    __syncthreads();
    auto grad = [&](float g, float xv, int ch, long long idx) {
        const float xhat = (xv - s_mean[ch]) * s_invstd[ch];
        const float gm = masked_grad(g, xhat, s_gamma[ch], s_beta[ch], relu, y_out, idx);
        return s_gamma[ch] * s_invstd[ch] * (gm - s_mg[ch] - xhat * s_mgx[ch]);
    };
    long long start = 0;
    if (vec) {
        const long long n8 = n / 8;
        ChannelCursor cur(global_thread_index() * 8, grid_stride() * 8, c);
        for (long long i = global_thread_index(); i < n8; i += grid_stride(), cur.advance()) {
            const int c0 = cur.ch;
            float g[8], xv[8], old[8];
            load8(dy, i, g);
            load8(x, i, xv);
            if (accumulate) load8(dx, i, old);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                old[j] = accumulate_or_set(old[j], grad(g[j], xv[j], c0 + j, i * 8 + j), accumulate);
            }
            store8(dx, i, old);
        }
        start = n8 * 8;
    }
    ChannelCursor cur(start + global_thread_index(), grid_stride(), c);
    for (long long i = start + global_thread_index(); i < n; i += grid_stride(), cur.advance()) {
        const float old = accumulate ? __half2float(dx[i]) : 0.0f;
        const float v = grad(__half2float(dy[i]), __half2float(x[i]), cur.ch, i);
        dx[i] = __float2half_rn(accumulate_or_set(old, v, accumulate));
    }
}

// The eval-mode batch norm as a per-channel affine map for the convolution epilogue that absorbs
// it (inference fusion): scale = gamma / sqrt(var + eps), shift = beta - mean * scale, and when the
// convolution has a bias b, shift += b * scale (the epilogue computes acc * scale + shift, which is
// (acc + b) * scale + beta - mean * scale). Twin: cpu::batchnorm::bn_eval_affine.
extern "C" __global__ void batchnorm_eval_affine_f32(const float* __restrict__ gamma,
                                                     const float* __restrict__ beta,
                                                     const float* __restrict__ running_mean,
                                                     const float* __restrict__ running_var,
                                                     const float* __restrict__ bias, float eps, int c,
                                                     float* __restrict__ scale, float* __restrict__ shift) {
    for (long long i = global_thread_index(); i < c; i += grid_stride()) {
        const float s = gamma[i] * (1.0f / sqrtf(running_var[i] + eps));
        float t = beta[i] - running_mean[i] * s;
        if (bias != nullptr) t += bias[i] * s;
        scale[i] = s;
        shift[i] = t;
    }
}
