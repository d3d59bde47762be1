// Runs kernels/conv.cu under cuda_sim.h (tensor-core primitives emulated lane by lane by
// mma_sim.h) against naive double-precision convolutions written here from the definition: the
// forward as a direct sum over taps, the input gradient as a scatter of every dy element through
// the taps (where the kernel gathers). Covers both loaders (vec: c % 8 == 0 with cp.async; gen:
// scalar gather), every tile configuration, strides 1 and 2, 1x1 / 3x3 / 7x7 kernels, the 4x4
// stride-2 transposed convolution (dgrad of its adjoint) and its input gradient (forward of the
// adjoint, accumulating), the scale/shift/ReLU epilogue, accumulate and overwrite, vector and
// masked scalar stores, odd sizes. Launches use the grids the Rust wrapper computes
// (src/backend/cuda/conv.rs). Built and run by run.sh.
#include "cuda_sim.h"
#undef __host__
#define __host__
#define __launch_bounds__(...)
#include "k/conv.cu"
#include <cstdio>
#include <random>
#include <string>
#include <cstring>
#include <cmath>

#include "sim_check.h"

using Kernel = void (*)(const __half*, const __half*, __half*, int, int, int, int, int, int, int, int, int, int, int,
                        const float*, const float*, int, int, int, const __half*, float*);
struct Config { const char* name; int bm, bn, bk, warps_m, warps_n, stages; bool vec, dgrad; Kernel k; };
static const Config CONFIGS[] = {
    {"fwd_vec_128x128k64", 128, 128, 64, 2, 2, 3, true, false, conv_fwd_vec_128x128k64},
    {"fwd_vec_128x64k64", 128, 64, 64, 2, 2, 3, true, false, conv_fwd_vec_128x64k64},
    {"fwd_vec_64x64k64", 64, 64, 64, 2, 2, 4, true, false, conv_fwd_vec_64x64k64},
    {"fwd_vec_128x128k32", 128, 128, 32, 2, 2, 3, true, false, conv_fwd_vec_128x128k32},
    {"fwd_vec_128x64k32", 128, 64, 32, 2, 2, 4, true, false, conv_fwd_vec_128x64k32},
    {"fwd_vec_64x64k32", 64, 64, 32, 2, 2, 4, true, false, conv_fwd_vec_64x64k32},
    {"fwd_vec_128x32k32", 128, 32, 32, 4, 1, 4, true, false, conv_fwd_vec_128x32k32},
    {"fwd_vec_64x32k32", 64, 32, 32, 2, 2, 4, true, false, conv_fwd_vec_64x32k32},
    {"fwd_gen_128x64", 128, 64, 32, 2, 2, 2, false, false, conv_fwd_gen_128x64},
    {"fwd_gen_128x32", 128, 32, 32, 4, 1, 2, false, false, conv_fwd_gen_128x32},
    {"fwd_gen_64x64", 64, 64, 32, 2, 2, 2, false, false, conv_fwd_gen_64x64},
    {"fwd_gen_64x32", 64, 32, 32, 2, 2, 2, false, false, conv_fwd_gen_64x32},
    {"dgrad_vec_128x128k64", 128, 128, 64, 2, 2, 3, true, true, conv_dgrad_vec_128x128k64},
    {"dgrad_vec_128x64k64", 128, 64, 64, 2, 2, 3, true, true, conv_dgrad_vec_128x64k64},
    {"dgrad_vec_64x64k64", 64, 64, 64, 2, 2, 4, true, true, conv_dgrad_vec_64x64k64},
    {"dgrad_vec_128x128k32", 128, 128, 32, 2, 2, 3, true, true, conv_dgrad_vec_128x128k32},
    {"dgrad_vec_128x64k32", 128, 64, 32, 2, 2, 4, true, true, conv_dgrad_vec_128x64k32},
    {"dgrad_vec_64x64k32", 64, 64, 32, 2, 2, 4, true, true, conv_dgrad_vec_64x64k32},
    {"dgrad_vec_128x32k32", 128, 32, 32, 4, 1, 4, true, true, conv_dgrad_vec_128x32k32},
    {"dgrad_vec_64x32k32", 64, 32, 32, 2, 2, 4, true, true, conv_dgrad_vec_64x32k32},
    {"dgrad_gen_128x64", 128, 64, 32, 2, 2, 2, false, true, conv_dgrad_gen_128x64},
    {"dgrad_gen_128x32", 128, 32, 32, 4, 1, 2, false, true, conv_dgrad_gen_128x32},
    {"dgrad_gen_64x64", 64, 64, 32, 2, 2, 2, false, true, conv_dgrad_gen_64x64},
    {"dgrad_gen_64x32", 64, 32, 32, 2, 2, 2, false, true, conv_dgrad_gen_64x32},
};
static const Config& config(const std::string& name) {
    for (const auto& c : CONFIGS) if (name == c.name) return c;
    fprintf(stderr, "no config %s\n", name.c_str());
    std::exit(2);
}

// One GEMM launch exactly as the wrapper makes it: forward one z-slice of all output pixels;
// dgrad one z-slice per stride parity class, x covering the largest class.
static void launch(const Config& c, const __half* src, const __half* wgt, __half* out, int n, int hs, int ws, int cs,
                   int ho, int wo, int nc, int kh, int kw, int stride, int pad, const float* scale,
                   const float* shift, int relu, int acc, int vec_out, float* stats = nullptr,
                   const __half* residual = nullptr) {
    int rows = n * ho * wo, slices = 1;
    if (c.dgrad) {
        slices = stride * stride;
        rows = 0;
        for (int z = 0; z < slices; ++z) {
            ConvSlice sl = conv_slice<true>(z, ho, wo, kh, kw, stride, pad);
            rows = std::max(rows, n * sl.hc * sl.wc);
        }
    }
    const int bytes = conv_smem_bytes(c.bm, c.bn, c.bk, c.warps_m, c.stages, c.vec);
    SimDim grid{(unsigned)(std::max(1, (rows + c.bm - 1) / c.bm) * ((nc + c.bn - 1) / c.bn)), 1, (unsigned)slices};
    sim_launch(grid, SimDim{(unsigned)(32 * c.warps_m * c.warps_n)}, bytes / 4, [&] {
        c.k(src, wgt, out, n, hs, ws, cs, ho, wo, nc, kh, kw, stride, pad, scale, shift, relu, acc, vec_out, residual,
            stats);
    });
}

struct Geo { int n, h, w, cin, cout, k, stride, pad; int oh() const { return (h + 2 * pad - k) / stride + 1; } int ow() const { return (w + 2 * pad - k) / stride + 1; } };

// Naive forward: y[n][oh][ow][co] = sum over (r, s, c) of x * w (KRSC).
static std::vector<double> ref_fwd(const Geo& g, const std::vector<float>& x, const std::vector<float>& w) {
    std::vector<double> y((size_t)g.n * g.oh() * g.ow() * g.cout, 0.0);
    for (int b = 0; b < g.n; ++b) for (int oh = 0; oh < g.oh(); ++oh) for (int ow = 0; ow < g.ow(); ++ow)
        for (int co = 0; co < g.cout; ++co) {
            double s = 0;
            for (int r = 0; r < g.k; ++r) for (int q = 0; q < g.k; ++q) {
                int ih = oh * g.stride - g.pad + r, iw = ow * g.stride - g.pad + q;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                for (int c = 0; c < g.cin; ++c)
                    s += (double)x[(((size_t)b * g.h + ih) * g.w + iw) * g.cin + c] * w[(((size_t)co * g.k + r) * g.k + q) * g.cin + c];
            }
            y[(((size_t)b * g.oh() + oh) * g.ow() + ow) * g.cout + co] = s;
        }
    return y;
}

// Naive input gradient by scatter: every dy element reaches the inputs its taps read.
static std::vector<double> ref_dgrad(const Geo& g, const std::vector<float>& dy, const std::vector<float>& w) {
    std::vector<double> dx((size_t)g.n * g.h * g.w * g.cin, 0.0);
    for (int b = 0; b < g.n; ++b) for (int oh = 0; oh < g.oh(); ++oh) for (int ow = 0; ow < g.ow(); ++ow)
        for (int co = 0; co < g.cout; ++co) {
            double d = dy[(((size_t)b * g.oh() + oh) * g.ow() + ow) * g.cout + co];
            for (int r = 0; r < g.k; ++r) for (int q = 0; q < g.k; ++q) {
                int ih = oh * g.stride - g.pad + r, iw = ow * g.stride - g.pad + q;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                for (int c = 0; c < g.cin; ++c)
                    dx[(((size_t)b * g.h + ih) * g.w + iw) * g.cin + c] += d * w[(((size_t)co * g.k + r) * g.k + q) * g.cin + c];
            }
        }
    return dx;
}

static std::string describe(const char* what, const Geo& g, const Config& c) {
    char s[200];
    snprintf(s, 200, "%s %dx%dx%dx%d->%d k%d s%d p%d [%s]", what, g.n, g.h, g.w, g.cin, g.cout, g.k, g.stride, g.pad, c.name);
    return s;
}

// Forward through configuration `cname`: plain (epi 0), scale+shift+ReLU (1) or bias only (2),
// then optionally accumulating into a random y.
static void test_fwd(const Geo& g, const std::string& cname, int epi, bool accumulate) {
    const Config& c = config(cname);
    H x = rand_h((size_t)g.n * g.h * g.w * g.cin, -1, 1), w = rand_h((size_t)g.cout * g.k * g.k * g.cin, -1, 1);
    size_t ny = (size_t)g.n * g.oh() * g.ow() * g.cout;
    auto want = ref_fwd(g, f(x), f(w));
    std::vector<float> scale(g.cout), shift(g.cout);
    for (int i = 0; i < g.cout; ++i) { scale[i] = uni(0.5, 1.5); shift[i] = uni(-0.5, 0.5); }
    int vec_out = g.cout % 8 == 0;
    H y = poison(ny);
    launch(c, x.data(), w.data(), y.data(), g.n, g.h, g.w, g.cin, g.oh(), g.ow(), g.cout, g.k, g.k, g.stride, g.pad,
           epi == 1 ? scale.data() : nullptr, epi ? shift.data() : nullptr, epi == 1, 0, vec_out);
    std::vector<double> r(ny);
    for (size_t i = 0; i < ny; ++i) {
        int co = i % g.cout;
        r[i] = epi == 1 ? std::max(want[i] * scale[co] + shift[co], 0.0) : epi == 2 ? want[i] + shift[co] : want[i];
    }
    check(describe(epi == 1 ? "fwd scale+shift+relu" : epi == 2 ? "fwd bias" : "fwd", g, c), f(y), r, 2e-3);
    if (accumulate) {
        H y0 = rand_h(ny, -1, 1); auto y0f = f(y0);
        launch(c, x.data(), w.data(), y0.data(), g.n, g.h, g.w, g.cin, g.oh(), g.ow(), g.cout, g.k, g.k, g.stride,
               g.pad, nullptr, nullptr, 0, 1, vec_out);
        for (size_t i = 0; i < ny; ++i) r[i] = want[i] + y0f[i];
        check(describe("fwd accumulate", g, c), f(y0), r, 2e-3);
    }
}

// Forward with the residual join in the epilogue: y = relu(acc * scale + shift + residual), through
// the vector and the masked scalar stores.
static void test_fwd_residual(const Geo& g, const std::string& cname) {
    const Config& c = config(cname);
    H x = rand_h((size_t)g.n * g.h * g.w * g.cin, -1, 1), w = rand_h((size_t)g.cout * g.k * g.k * g.cin, -1, 1);
    size_t ny = (size_t)g.n * g.oh() * g.ow() * g.cout;
    H res = rand_h(ny, -1, 1);
    auto want = ref_fwd(g, f(x), f(w));
    auto rf = f(res);
    std::vector<float> scale(g.cout), shift(g.cout);
    for (int i = 0; i < g.cout; ++i) { scale[i] = uni(0.5, 1.5); shift[i] = uni(-0.5, 0.5); }
    H y = poison(ny);
    launch(c, x.data(), w.data(), y.data(), g.n, g.h, g.w, g.cin, g.oh(), g.ow(), g.cout, g.k, g.k, g.stride, g.pad,
           scale.data(), shift.data(), 1, 0, g.cout % 8 == 0, nullptr, res.data());
    std::vector<double> r(ny);
    for (size_t i = 0; i < ny; ++i) r[i] = std::max(want[i] * scale[i % g.cout] + shift[i % g.cout] + rf[i], 0.0);
    check(describe("fwd scale+shift+residual+relu", g, c), f(y), r, 2e-3);
}

// Forward with the BN-statistics epilogue: the output must equal the plain forward's bit for bit,
// and the per-row-tile (count, mean, M2) partials, merged here in double (Chan et al.), must give
// the mean and biased variance of the stored fp16 output per channel, computed naively.
static void test_fwd_stats(const Geo& g, const std::string& cname, bool bias) {
    const Config& c = config(cname);
    H x = rand_h((size_t)g.n * g.h * g.w * g.cin, -1, 1), w = rand_h((size_t)g.cout * g.k * g.k * g.cin, -1, 1);
    size_t ny = (size_t)g.n * g.oh() * g.ow() * g.cout;
    const int m = g.n * g.oh() * g.ow(), tiles = (m + c.bm - 1) / c.bm;
    std::vector<float> shift(g.cout);
    for (auto& v : shift) v = uni(2.0, 4.0);  // an offset mean: the shifted sums must cope with it
    int vec_out = g.cout % 8 == 0;
    H plain = poison(ny), y = poison(ny);
    launch(c, x.data(), w.data(), plain.data(), g.n, g.h, g.w, g.cin, g.oh(), g.ow(), g.cout, g.k, g.k, g.stride,
           g.pad, nullptr, bias ? shift.data() : nullptr, 0, 0, vec_out);
    std::vector<float> partials((size_t)tiles * g.cout * 3, std::nanf(""));
    launch(c, x.data(), w.data(), y.data(), g.n, g.h, g.w, g.cin, g.oh(), g.ow(), g.cout, g.k, g.k, g.stride, g.pad,
           nullptr, bias ? shift.data() : nullptr, 0, 0, vec_out, partials.data());
    const bool same = std::memcmp(plain.data(), y.data(), ny * sizeof(__half)) == 0;
    if (!same) failures++;
    printf("%-84s %s\n", describe("fwd+bn-stats output == plain fwd", g, c).c_str(), same ? "ok" : "FAIL");
    auto yf = f(y);
    std::vector<float> got_mean(g.cout), got_var(g.cout);
    std::vector<double> want_mean(g.cout), want_var(g.cout);
    bool counts_ok = true;
    for (int co = 0; co < g.cout; ++co) {
        double n = 0, mean = 0, m2 = 0;
        for (int t = 0; t < tiles; ++t) {
            const float* p = &partials[((size_t)t * g.cout + co) * 3];
            const double nb = p[0], delta = p[1] - mean, tot = n + nb;
            mean += delta * nb / tot;
            m2 += p[2] + delta * delta * n * nb / tot;
            n = tot;
        }
        counts_ok &= n == m;
        got_mean[co] = (float)mean;
        got_var[co] = (float)(m2 / m);
        double s = 0, q = 0;
        for (int r = 0; r < m; ++r) s += yf[(size_t)r * g.cout + co];
        want_mean[co] = s / m;
        for (int r = 0; r < m; ++r) q += std::pow(yf[(size_t)r * g.cout + co] - want_mean[co], 2);
        want_var[co] = q / m;
    }
    if (!counts_ok) failures++;
    check(describe("fwd+bn-stats mean", g, c) + (counts_ok ? "" : " (counts wrong)"), got_mean, want_mean, 1e-5);
    check(describe("fwd+bn-stats variance", g, c), got_var, want_var, 1e-4);
}

// The relayout launch the wrapper makes before every dgrad.
static H relayout(const Geo& g, const H& w) {
    H wt = poison(w.size());
    sim_launch(SimDim{3}, SimDim{64}, 0, [&] { conv_dgrad_weight_relayout_f16(w.data(), wt.data(), g.cout, g.k * g.k, g.cin); });
    return wt;
}

// dx (+)= dgrad(dy, w) through configuration `cname`.
static void test_dgrad(const Geo& g, const std::string& cname) {
    const Config& c = config(cname);
    H dy = rand_h((size_t)g.n * g.oh() * g.ow() * g.cout, -1, 1), w = rand_h((size_t)g.cout * g.k * g.k * g.cin, -1, 1);
    size_t nx = (size_t)g.n * g.h * g.w * g.cin;
    auto want = ref_dgrad(g, f(dy), f(w));
    H wt = relayout(g, w);
    int vec_out = g.cin % 8 == 0;
    for (int acc : {0, 1}) {
        H dx0 = rand_h(nx, -1, 1); auto dx0f = f(dx0);
        H dx = acc ? dx0 : poison(nx);
        launch(c, dy.data(), wt.data(), dx.data(), g.n, g.oh(), g.ow(), g.cout, g.h, g.w, g.cin, g.k, g.k, g.stride,
               g.pad, nullptr, nullptr, 0, acc, vec_out);
        std::vector<double> r(nx);
        for (size_t i = 0; i < nx; ++i) r[i] = want[i] + (acc ? dx0f[i] : 0.0);
        check(describe(acc ? "dgrad accumulate" : "dgrad", g, c), f(dx), r, 2e-3);
    }
}

// Transposed convolution with `g` as its adjoint convolution (g.cin = the transposed output's
// channels, g.cout = its input's; g.h x g.w = its output's size): y = dgrad of g (relayout +
// dgrad GEMM), and its input gradient dx (+)= forward of g.
static void test_transposed(const Geo& g, const std::string& dgrad_cfg, const std::string& fwd_cfg) {
    // Forward of the transposed conv: its input is g's "dy" (g.oh x g.ow x g.cout).
    test_dgrad(g, dgrad_cfg);
    test_fwd(g, fwd_cfg, 0, true);
}

int main() {
    gen.seed(777);
    // Forward, vec loader: every configuration, odd sizes, c_out both multiple of 8 and not.
    test_fwd({2, 7, 9, 16, 24, 3, 1, 1}, "fwd_vec_64x32k32", 1, true);
    test_fwd({1, 9, 7, 8, 32, 3, 2, 1}, "fwd_vec_128x32k32", 2, false);
    test_fwd({2, 5, 6, 32, 64, 1, 1, 0}, "fwd_vec_128x64k32", 0, true);
    test_fwd({1, 6, 5, 24, 20, 3, 1, 1}, "fwd_vec_64x64k32", 1, false);
    test_fwd({1, 12, 12, 8, 136, 3, 1, 1}, "fwd_vec_128x128k32", 1, true);
    test_fwd({1, 11, 13, 16, 8, 3, 2, 1}, "fwd_vec_64x32k32", 0, false);
    test_fwd({1, 9, 11, 24, 136, 3, 1, 1}, "fwd_vec_128x128k64", 1, false);
    test_fwd({1, 9, 11, 40, 72, 3, 1, 1}, "fwd_vec_128x64k64", 0, true);
    test_fwd({1, 6, 7, 8, 24, 3, 1, 1}, "fwd_vec_64x64k64", 2, false);
    test_fwd({1, 9, 8, 72, 29, 1, 1, 0}, "fwd_vec_64x64k64", 1, true);
    test_fwd({1, 8, 9, 16, 24, 5, 1, 2}, "fwd_vec_64x64k64", 0, false);
    // Forward, general loader: the 7x7 stride-2 grayscale stem, the 3x3 stride-2 HRNet stem,
    // HRNet-W18 widths, a 29-channel head, 3 input channels, and a vec-sized input whose 7x7
    // kernel has more taps than the vec loader's masks hold.
    test_fwd({1, 13, 11, 1, 16, 7, 2, 3}, "fwd_gen_128x64", 1, false);
    test_fwd({2, 9, 9, 1, 8, 3, 2, 1}, "fwd_gen_64x32", 2, true);
    test_fwd({2, 5, 7, 18, 36, 3, 1, 1}, "fwd_gen_64x64", 1, true);
    test_fwd({1, 6, 7, 36, 29, 1, 1, 0}, "fwd_gen_128x32", 1, true);
    test_fwd({1, 7, 5, 3, 40, 3, 2, 1}, "fwd_gen_128x64", 0, false);
    test_fwd({1, 9, 8, 8, 16, 7, 1, 3}, "fwd_gen_64x32", 0, false);
    // dgrad, vec loader (dy channels = c_out % 8 == 0), every configuration.
    test_dgrad({2, 7, 9, 24, 16, 3, 1, 1}, "dgrad_vec_64x32k32");
    test_dgrad({1, 9, 8, 16, 32, 3, 2, 1}, "dgrad_vec_128x32k32");
    test_dgrad({2, 5, 6, 64, 32, 1, 1, 0}, "dgrad_vec_128x64k32");
    test_dgrad({1, 10, 9, 20, 8, 3, 2, 1}, "dgrad_vec_64x64k32");
    test_dgrad({1, 12, 11, 136, 8, 3, 1, 1}, "dgrad_vec_128x128k32");
    test_dgrad({1, 9, 11, 136, 24, 3, 2, 1}, "dgrad_vec_128x128k64");
    test_dgrad({2, 7, 6, 72, 40, 3, 1, 1}, "dgrad_vec_128x64k64");
    test_dgrad({1, 9, 10, 20, 16, 3, 2, 1}, "dgrad_vec_64x64k64");
    // dgrad, general loader.
    test_dgrad({1, 6, 7, 32, 29, 1, 1, 0}, "dgrad_gen_128x32");
    test_dgrad({1, 9, 10, 8, 18, 3, 2, 1}, "dgrad_gen_64x64");
    test_dgrad({1, 13, 11, 1, 16, 7, 2, 3}, "dgrad_gen_128x64");
    test_dgrad({2, 5, 7, 36, 18, 3, 1, 1}, "dgrad_gen_64x32");
    // Parity classes without taps (1x1 stride 2: three of four classes only get zeros, or keep
    // their old value), stride 3, and input rows no output reads ((h + 2 pad - k) % stride != 0).
    test_dgrad({2, 7, 6, 16, 24, 1, 2, 0}, "dgrad_vec_64x32k32");
    test_dgrad({1, 11, 10, 8, 16, 3, 3, 1}, "dgrad_vec_64x64k64");
    test_dgrad({1, 10, 9, 5, 16, 2, 3, 0}, "dgrad_vec_64x32k32");
    test_dgrad({1, 8, 9, 3, 7, 5, 2, 2}, "dgrad_gen_64x32");
    // Transposed 4x4 stride 2 pad 1 (the ResNet head's deconvolution): input 1x4x5x16, output
    // 1x8x10x8; and with 29 <-> 16 channels on the general loaders.
    test_transposed({1, 8, 10, 8, 16, 4, 2, 1}, "dgrad_vec_64x32k32", "fwd_vec_64x32k32");
    test_transposed({1, 6, 8, 16, 29, 4, 2, 1}, "dgrad_gen_64x32", "fwd_vec_64x64k64");
    test_transposed({1, 6, 8, 29, 16, 4, 2, 1}, "dgrad_vec_64x64k64", "fwd_gen_64x32");
    // Residual join: vector stores, masked scalar stores (c_out % 8 != 0), both loaders.
    test_fwd_residual({2, 7, 9, 16, 24, 3, 1, 1}, "fwd_vec_64x32k32");
    test_fwd_residual({1, 9, 8, 32, 64, 1, 1, 0}, "fwd_vec_128x64k64");
    test_fwd_residual({1, 6, 7, 36, 29, 3, 1, 1}, "fwd_gen_128x32");
    test_fwd_residual({2, 9, 9, 18, 36, 3, 2, 1}, "fwd_gen_64x64");
    // BN-statistics epilogue: both loaders, 1 to 4 row groups per column (BN 128 / 64 / 32), a
    // partial last row tile, masked columns (c_out not a multiple of the tile or of 8), bias.
    test_fwd_stats({2, 7, 9, 16, 24, 3, 1, 1}, "fwd_vec_64x32k32", false);
    test_fwd_stats({1, 13, 12, 8, 32, 3, 2, 1}, "fwd_vec_128x32k32", true);
    test_fwd_stats({2, 9, 10, 32, 72, 1, 1, 0}, "fwd_vec_128x64k32", false);
    test_fwd_stats({1, 12, 12, 24, 136, 3, 1, 1}, "fwd_vec_128x128k64", true);
    test_fwd_stats({1, 9, 11, 40, 64, 3, 1, 1}, "fwd_vec_64x64k64", false);
    test_fwd_stats({2, 9, 9, 1, 18, 3, 2, 1}, "fwd_gen_64x32", true);
    test_fwd_stats({1, 10, 13, 18, 36, 3, 1, 1}, "fwd_gen_128x64", false);
    printf(failures ? "conv: %d FAILED\n" : "conv: all passed\n", failures);
    return failures ? 1 : 0;
}
