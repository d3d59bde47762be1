// The per-chunk summary of batch-norm training statistics, shared by the two producers of chunk
// partials: batchnorm.cu's statistics pass and conv.cu's BN-statistics epilogue. Both write
// partials[chunk][channel][3] = (count, mean, M2), which batchnorm_stats_finalize_f32 merges.
#pragma once

// Summary of `rows` values of one channel from sums of (v - shift) and (v - shift)^2, where the
// shift is one of the values (the chunk's first): as stable as Welford while the shift is within
// a few standard deviations of the mean (one sample of the channel is), yet per-lane partial sums
// merge by plain addition and the inner loop has no division.
__device__ __forceinline__ void shifted_summary(float shift, float s, float q, long long rows,
                                                float* __restrict__ out) {
    const float n = (float)rows;
    const float s_over_n = s / n;
    out[0] = n;
    out[1] = shift + s_over_n;
    out[2] = fmaxf(fmaf(-s, s_over_n, q), 0.0f);
}
