// Gaussian target heatmaps from landmark positions (docs/maths.md#heatmap-targets), made on the GPU
// so that a training step uploads n*k coordinate pairs (under 2 KB) instead of n*h*w*k target
// floats (17 MB for HRNet at 768x768, batch 4).
// CPU twin: src/backend/cpu/heatmap.rs `encode` (the name without the `heatmap_` prefix and the
// `_f32` suffix, the same argument order), which runs the loader's `data::heatmap::encode_into`.
//
// points: n*k (x, y) pairs in heatmap pixels, image-major; a non-finite pair (a missing landmark)
// gives an all-zero channel. out: n*h*w*k floats, NHWC with the landmark last, every element
// written (nothing needs zeroing first). Each channel is exp(-d^2 / (2 sigma^2)) within 3 sigma of
// its point, 0 beyond.
//
// The arithmetic is the twin's, step for step, in double: the same window bounds, d^2 as two
// rounded products and a rounded sum (__dmul_rn/__dadd_rn, so nvcc cannot contract them into a fused
// multiply-add the CPU does not do), one exp rounded once to float. Only exp's last bit in double
// may differ from the host's libm, which the rounding to float hides.
//
// Launch: any 1-D grid (grid-stride loop).
#include "common.cuh"

// Values beyond this many sigmas are exactly 0 (docs/maths.md#heatmap-targets; TRUNCATE_SIGMAS in
// heatmap.rs).
#define HEATMAP_TRUNCATE_SIGMAS 3.0

extern "C" __global__ void heatmap_encode_f32(const double* __restrict__ points, int n, int h,
                                              int w, int k, double sigma,
                                              float* __restrict__ out) {
    const double reach = __dmul_rn(HEATMAP_TRUNCATE_SIGMAS, sigma);
    const double reach2 = __dmul_rn(reach, reach);
    const double inv = 1.0 / __dmul_rn(__dmul_rn(2.0, sigma), sigma);
    const long long total = (long long)n * h * w * k;
    for (long long i = global_thread_index(); i < total; i += grid_stride()) {
        const auto [img, y, x, c] = nhwc_index(i, h, w, k);
        const double px = points[2 * (img * k + c)];
        const double py = points[2 * (img * k + c) + 1];
        float value = 0.0f;
        // Almost every element lies far from its landmark: a float test with a one-pixel margin
        // (float's error here is below 1e-3 pixels) settles those without double arithmetic, which
        // consumer GPUs run at 1/64 of the float rate. Only elements it cannot rule out take the
        // exact path, so the result is the twin's either way. (A NaN passes the test, and the
        // exact path gives it 0.)
        const float margin = (float)reach + 1.0f;
        const bool far = fabsf((float)x - (float)px) > margin || fabsf((float)y - (float)py) > margin;
        if (!far && isfinite(px) && isfinite(py)) {
            // The window the twin visits: integer pixels within `reach` of the point on each axis.
            const double x0 = fmax(ceil(__dadd_rn(px, -reach)), 0.0);
            const double y0 = fmax(ceil(__dadd_rn(py, -reach)), 0.0);
            const double x1 = fmin(floor(__dadd_rn(px, reach)), (double)(w - 1));
            const double y1 = fmin(floor(__dadd_rn(py, reach)), (double)(h - 1));
            const double fx = (double)x, fy = (double)y;
            if (fx >= x0 && fx <= x1 && fy >= y0 && fy <= y1) {
                const double dx = __dadd_rn(fx, -px);
                const double dy = __dadd_rn(fy, -py);
                const double d2 = __dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy));
                if (d2 <= reach2) value = (float)exp(__dmul_rn(-d2, inv));
            }
        }
        out[i] = value;
    }
}
