// Runs kernels/conv_wgrad.cu under cuda_sim.h (mma, ldmatrix and cp.async emulated lane by lane)
// against a naive double-precision weight gradient written from the definition of the
// convolution: dW[m][r][s][c] = sum over output pixels of dy[pixel][m] * x[tap of the pixel][c].
// Every tile configuration runs with its vector and scalar loaders, with one split and with
// several (then conv_wgrad_reduce_f32 adds them), on small shapes that cover partial M and N
// tiles, padding, strides 1 and 2, 1x1, 3x3, 4x4 (the transposed convolution's adjoint) and 7x7
// kernels, one input channel, odd channel counts, and splits whose pixels wrap several image rows
// per stage. Also the bias gradient. Built and run by run.sh.
#include "cuda_sim.h"
#define __launch_bounds__(...)
#include "k/conv_wgrad.cu"
#include <cstdio>
#include <random>
#include <string>

#include "sim_check.h"

// The tile configurations of the entry points, as the Rust wrapper (Tile) describes them, and
// their loader variants: [0] both scalar, [1] both vector, [2] vector dy only, [3] vector x only
// (null where the tile has no such entry point).
using Kernel = void (*)(const __half*, const __half*, float*, int, int, int, int, int, int, int, int, int, int, int, int);
struct Tile { const char* name; int bm, bn, threads, stages, warps_k; Kernel k[4]; };
static const Tile TILES[] = {
    {"t128x128", 128, 128, 256, 3, 1, {conv_wgrad_t128x128_f16, conv_wgrad_t128x128_vec_f16, nullptr, nullptr}},
    {"t64x128", 64, 128, 256, 3, 2, {conv_wgrad_t64x128_f16, conv_wgrad_t64x128_vec_f16, nullptr, nullptr}},
    {"t32x128", 32, 128, 128, 3, 2,
     {conv_wgrad_t32x128_f16, conv_wgrad_t32x128_vec_f16, conv_wgrad_t32x128_veca_f16, conv_wgrad_t32x128_vecb_f16}},
    {"t64x64", 64, 64, 128, 3, 1,
     {conv_wgrad_t64x64_f16, conv_wgrad_t64x64_vec_f16, conv_wgrad_t64x64_veca_f16, conv_wgrad_t64x64_vecb_f16}},
    {"t64x16", 64, 16, 128, 3, 2,
     {conv_wgrad_t64x16_f16, conv_wgrad_t64x16_vec_f16, conv_wgrad_t64x16_veca_f16, conv_wgrad_t64x16_vecb_f16}},
};
static const char* VARIANT[4] = {"", " vec", " veca", " vecb"};

struct Conv { int n, h, w, c, k, r, s, stride, pad; };

static void launch_tile(int ti, int variant, const __half* x, const __half* dy, float* out, const Conv& cv, int p, int q,
                        int splits, int steps_per_split) {
    const Tile& t = TILES[ti];
    const int ncols = cv.r * cv.s * cv.c, npix = cv.n * p * q;
    SimDim grid{(unsigned)((ncols + t.bn - 1) / t.bn), (unsigned)((cv.k + t.bm - 1) / t.bm), (unsigned)splits};
    const int bytes = wgrad_smem_bytes(t.bm, t.bn, t.stages, t.warps_k);
    sim_launch(grid, SimDim{(unsigned)t.threads}, bytes / 4, [&] {
        t.k[variant](x, dy, out, cv.h, cv.w, cv.c, p, q, cv.k, cv.r, cv.s, cv.stride, cv.pad, npix, steps_per_split);
    });
}

static void reduce(const std::vector<float>& partials, int splits, long long len, std::vector<float>& out, int vec) {
    // Two blocks of 32 x 8, fewer than the elements need: the grid-stride loop runs too.
    sim_launch(SimDim{2}, SimDim{32, 8}, 0, [&] { conv_wgrad_reduce_f32(partials.data(), splits, len, out.data(), vec); });
}

// Runs one convolution's weight gradient through tile `ti` with `splits` splits (1: straight into
// dW) and checks it against the double reference.
static void test_conv(const Conv& cv, int ti, int variant, int want_splits) {
    const int p = (cv.h + 2 * cv.pad - cv.r) / cv.stride + 1, q = (cv.w + 2 * cv.pad - cv.s) / cv.stride + 1;
    const int npix = cv.n * p * q, ncols = cv.r * cv.s * cv.c;
    H x = rand_h((size_t)cv.n * cv.h * cv.w * cv.c, -1, 1), dy = rand_h((size_t)npix * cv.k, -1, 1);
    // Reference by scatter over pixels and taps, in double.
    std::vector<double> ref((size_t)cv.k * ncols, 0.0);
    for (int img = 0; img < cv.n; ++img)
        for (int oh = 0; oh < p; ++oh)
            for (int ow = 0; ow < q; ++ow)
                for (int r = 0; r < cv.r; ++r)
                    for (int s = 0; s < cv.s; ++s) {
                        const int ih = oh * cv.stride + r - cv.pad, iw = ow * cv.stride + s - cv.pad;
                        if (ih < 0 || ih >= cv.h || iw < 0 || iw >= cv.w) continue;
                        const __half* xr = &x[(((size_t)img * cv.h + ih) * cv.w + iw) * cv.c];
                        const __half* dr = &dy[(((size_t)img * p + oh) * q + ow) * cv.k];
                        for (int m = 0; m < cv.k; ++m)
                            for (int c = 0; c < cv.c; ++c)
                                ref[(size_t)m * ncols + (r * cv.s + s) * cv.c + c] +=
                                    (double)__half2float(dr[m]) * __half2float(xr[c]);
                    }
    const int steps = (npix + WG_BK - 1) / WG_BK;
    const int per = (steps + want_splits - 1) / want_splits;
    const int splits = (steps + per - 1) / per;
    const size_t len = (size_t)cv.k * ncols;
    std::vector<float> dw(len, NAN);
    if (splits == 1) {
        launch_tile(ti, variant, x.data(), dy.data(), dw.data(), cv, p, q, 1, per);
    } else {
        std::vector<float> ws(len * splits, NAN);
        launch_tile(ti, variant, x.data(), dy.data(), ws.data(), cv, p, q, splits, per);
        reduce(ws, splits, (long long)len, dw, len % 4 == 0);
    }
    char what[200];
    snprintf(what, sizeof what, "wgrad %s%s %dx%dx%dx%d k%d %dx%d s%d p%d splits %d", TILES[ti].name, VARIANT[variant],
             cv.n, cv.h, cv.w, cv.c, cv.k, cv.r, cv.s, cv.stride, cv.pad, splits);
    check(what, dw, ref, 1e-5);
}

// Every loader variant of tile `ti` gives the same bits (they fill the same shared tiles).
static void test_variants_agree(const Conv& cv, int ti, int splits_wanted) {
    const int p = (cv.h + 2 * cv.pad - cv.r) / cv.stride + 1, q = (cv.w + 2 * cv.pad - cv.s) / cv.stride + 1;
    const int npix = cv.n * p * q, ncols = cv.r * cv.s * cv.c;
    H x = rand_h((size_t)cv.n * cv.h * cv.w * cv.c, -1, 1), dy = rand_h((size_t)npix * cv.k, -1, 1);
    const int steps = (npix + WG_BK - 1) / WG_BK, per = (steps + splits_wanted - 1) / splits_wanted;
    const int splits = (steps + per - 1) / per;
    const size_t len = (size_t)cv.k * ncols * splits;
    std::vector<float> first;
    bool same = true;
    for (int v = 0; v < 4; ++v) {
        if (!TILES[ti].k[v]) continue;
        std::vector<float> out(len, NAN);
        launch_tile(ti, v, x.data(), dy.data(), out.data(), cv, p, q, splits, per);
        if (first.empty()) first = out;
        else same = same && std::memcmp(first.data(), out.data(), len * sizeof(float)) == 0;
    }
    if (!same) failures++;
    printf("%-78s %s\n", (std::string("loader variants of ") + TILES[ti].name + " give identical bits").c_str(),
           same ? "ok" : "FAIL");
}

static void test_bias(long long pixels, int k, int chunks) {
    H dy = rand_h((size_t)pixels * k, -1, 1);
    std::vector<double> ref(k, 0.0);
    for (long long i = 0; i < pixels; ++i)
        for (int c = 0; c < k; ++c) ref[c] += __half2float(dy[i * k + c]);
    std::vector<float> partials((size_t)chunks * k, NAN), db(k, NAN);
    sim_launch(SimDim{(unsigned)((k + 31) / 32), (unsigned)chunks}, SimDim{32, 8}, 0,
               [&] { conv_wgrad_bias_partial_f16(dy.data(), pixels, k, chunks, partials.data()); });
    reduce(partials, chunks, k, db, k % 4 == 0);
    char what[120];
    snprintf(what, sizeof what, "bias grad pixels %lld k %d chunks %d", pixels, k, chunks);
    check(what, db, ref, 1e-5);
}

int main() {
    gen.seed(777);
    // Vector loaders (c_in, c_out multiples of 8).
    test_conv({2, 9, 11, 16, 136, 3, 3, 1, 1}, 0, 1, 1);   // 2 x 2 tiles, both partial
    test_conv({2, 9, 11, 16, 136, 3, 3, 1, 1}, 0, 1, 3);   // 198 pixels: 7 stages over 3 splits
    test_conv({2, 9, 7, 24, 64, 3, 3, 2, 1}, 1, 1, 1);
    test_conv({2, 9, 7, 24, 64, 3, 3, 2, 1}, 1, 1, 2);
    test_conv({1, 3, 5, 8, 32, 3, 3, 1, 1}, 2, 1, 1);      // q = 5 < 32: one stage wraps rows and images
    test_conv({3, 5, 6, 40, 32, 1, 1, 1, 0}, 2, 1, 2);     // 1x1
    test_conv({1, 8, 8, 16, 24, 4, 4, 2, 1}, 2, 1, 1);     // 4x4 s2 p1: the transposed conv's adjoint
    test_conv({1, 11, 13, 8, 16, 7, 7, 2, 3}, 3, 1, 2);    // 7x7 s2 p3
    test_conv({2, 6, 5, 8, 72, 3, 3, 1, 1}, 4, 1, 1);      // n tiles of 16
    test_conv({2, 6, 5, 8, 72, 3, 3, 1, 1}, 4, 1, 2);
    // Scalar loaders (any channel counts).
    test_conv({2, 9, 11, 16, 136, 3, 3, 1, 1}, 0, 0, 3);  // same bits path as vec, scalar loads
    test_conv({1, 9, 7, 18, 29, 3, 3, 1, 1}, 0, 0, 1);
    test_conv({2, 7, 5, 36, 72, 3, 3, 2, 1}, 1, 0, 2);
    test_conv({2, 9, 9, 18, 36, 3, 3, 2, 1}, 1, 0, 1);
    test_conv({2, 5, 7, 32, 29, 1, 1, 1, 0}, 2, 0, 2);    // the head: c_out 29
    test_conv({1, 11, 13, 1, 64, 7, 7, 2, 3}, 3, 0, 1);   // 7x7 stem on one channel
    test_conv({1, 11, 13, 1, 64, 7, 7, 2, 3}, 3, 0, 2);
    test_conv({2, 13, 11, 1, 64, 3, 3, 2, 1}, 4, 0, 1);   // 3x3 s2 stem on one channel: N = 9
    test_conv({2, 13, 11, 1, 64, 3, 3, 2, 1}, 4, 0, 3);
    test_conv({1, 4, 5, 3, 5, 3, 3, 1, 1}, 4, 0, 1);      // everything odd and tiny
    // One operand by 16-byte copies, the other element by element.
    test_conv({1, 11, 13, 1, 64, 7, 7, 2, 3}, 3, 2, 2);       // stem: dy vector, x scalar
    test_conv({2, 13, 11, 1, 64, 3, 3, 2, 1}, 4, 2, 3);
    test_conv({2, 5, 7, 1, 32, 3, 3, 1, 1}, 2, 2, 1);
    test_conv({2, 5, 7, 32, 29, 1, 1, 1, 0}, 2, 3, 2);        // head: x vector, dy scalar
    test_conv({2, 5, 7, 40, 29, 3, 3, 1, 1}, 3, 3, 1);
    test_conv({2, 6, 5, 8, 29, 3, 3, 1, 1}, 4, 3, 2);
    test_variants_agree({2, 7, 6, 16, 32, 3, 3, 1, 1}, 2, 2);
    test_variants_agree({1, 9, 7, 8, 64, 3, 3, 2, 1}, 3, 3);
    test_bias(37, 29, 1);
    test_bias(1000, 64, 3);
    test_bias(257, 40, 5);
    test_bias(20000, 8, 45);  // 45 chunks: the reduction's unrolled loads and its remainder
    printf("%s\n", failures ? "conv_wgrad: FAILURES" : "conv_wgrad: all ok");
    return failures ? 1 : 0;
}
