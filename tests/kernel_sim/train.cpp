// Runs kernels/loss.cu, kernels/optim.cu and kernels/heatmap.cu under cuda_sim.h against naive double-precision
// references written from docs/maths.md (not from the kernels or the CPU twins), launched with
// the grids the Rust wrappers (src/backend/cuda/{loss,optim,heatmap}.rs) use and with other grids, so that
// the grid-stride loops and the per-block partials are exercised. Built and run by run.sh.
//
// Each file is included in its own namespace, so that file-local helpers cannot clash (their
// extern "C" kernels have distinct names).
#include "cuda_sim.h"
using std::isfinite;
// Shared by loss.cu and heatmap.cu; included once, outside their namespaces.
#include "k/common.cuh"
namespace loss_cu {
#include "k/loss.cu"
}
namespace optim_cu {
#include "k/optim.cu"
}
namespace heatmap_cu {
#include "k/heatmap.cu"
}
#include <cstdio>
#include <random>

#include "sim_check.h"
static void report(const char* what, bool ok, double e) {
    if (!ok) failures++;
    printf("%-64s rel %.2e %s\n", what, e, ok ? "ok" : "FAIL");
}
static void check_scalar(const char* what, double got, double want, double tol) {
    double e = std::abs(got - want) / std::max(std::abs(want), 1e-300);
    report(what, std::isfinite(got) && e < tol, e);
}
static unsigned blocks_for(long long n) { return (unsigned)std::clamp((n + 255) / 256, 1LL, 1024LL); }

// ---------- loss ----------
struct AW { double alpha = 2.1, omega = 14, eps = 1, theta = 0.5; };
// Adaptive Wing loss and d/dp from the paper's formulas, in double.
static void awing_ref(const AW& q, double p, double y, double* l, double* g) {
    double d = std::abs(y - p), a = q.alpha - y, s = p >= y ? 1 : -1;
    double r = q.theta / q.eps;
    double A = q.omega / (1 + std::pow(r, a)) * a * std::pow(r, a - 1) / q.eps;
    double C = q.theta * A - q.omega * std::log(1 + std::pow(r, a));
    if (d < q.theta) {
        *l = q.omega * std::log(1 + std::pow(d / q.eps, a));
        *g = d == 0 ? 0 : s * q.omega * a * std::pow(d / q.eps, a - 1) / (q.eps * (1 + std::pow(d / q.eps, a)));
    } else {
        *l = A * d - C;
        *g = s * A;
    }
}

static void test_loss(int N, int Hh, int W, int K, bool awing, bool use_map, float scale) {
    long long n = (long long)N * Hh * W * K;
    std::vector<float> target(n);
    for (int img = 0; img < N; ++img) for (int c = 0; c < K; ++c) {
        double cy = uni(0, Hh), cx = uni(0, W);
        for (int y = 0; y < Hh; ++y) for (int x = 0; x < W; ++x)
            target[(((long long)img * Hh + y) * W + x) * K + c] = (float)std::exp(-((y - cy) * (y - cy) + (x - cx) * (x - cx)) / 4.0);
    }
    H pred(n); for (long long i = 0; i < n; ++i) pred[i] = __float2half_rn(target[i] + uni(-0.8f, 0.8f));
    auto pf = f(pred);
    std::vector<float> cw(K); for (auto& w : cw) w = uni(0.5f, 3);
    AW q{uni(2.05f, 2.3f), uni(8, 20), uni(0.8f, 2), uni(0.3f, 0.6f)};
    float map_w = uni(2, 12), thr = uni(0.1f, 0.5f);
    // Reference: weight map from the 3x3 neighbourhood's maximum, scattered from every target pixel.
    std::vector<double> dil(n, -1e300);
    for (int img = 0; img < N; ++img) for (int y = 0; y < Hh; ++y) for (int x = 0; x < W; ++x) for (int c = 0; c < K; ++c) {
        double t = target[(((long long)img * Hh + y) * W + x) * K + c];
        for (int dy = -1; dy <= 1; ++dy) for (int dx = -1; dx <= 1; ++dx) {
            int yy = y + dy, xx = x + dx;
            if (yy < 0 || yy >= Hh || xx < 0 || xx >= W) continue;
            long long j = (((long long)img * Hh + yy) * W + xx) * K + c;
            dil[j] = std::max(dil[j], t);
        }
    }
    double sum = 0; std::vector<double> rg(n);
    for (long long i = 0; i < n; ++i) {
        double l, g;
        if (awing) awing_ref(q, pf[i], target[i], &l, &g);
        else { l = (pf[i] - target[i]) * (pf[i] - target[i]); g = 2.0 * (pf[i] - target[i]); }
        double wgt = cw[i % K] * (use_map && dil[i] > thr ? map_w + 1.0 : 1.0);
        sum += wgt * l;
        rg[i] = wgt * g * scale / n;
    }
    double want = sum / n;
    double first = NAN;
    // The wrapper's grid first, then one block and a few, for the grid-stride loop.
    bool wrapper_grid = true;
    for (unsigned grid : {blocks_for(n), 1u, 3u}) {
        H grad(n, __ushort_as_half(0x7e01));
        std::vector<double> partials(grid, NAN);
        double out = NAN;
        sim_launch(SimDim{grid}, SimDim{256}, 0, [&] {
            if (awing)
                loss_cu::loss_awing_fwd_bwd_f16(pred.data(), target.data(), cw.data(), N, Hh, W, K, q.alpha, q.omega, q.eps, q.theta,
                                                use_map, map_w, thr, scale, grad.data(), partials.data());
            else
                loss_cu::loss_mse_fwd_bwd_f16(pred.data(), target.data(), cw.data(), N, Hh, W, K, use_map, map_w, thr, scale,
                                              grad.data(), partials.data());
        });
        sim_launch(SimDim{1}, SimDim{256}, 0, [&] { loss_cu::loss_sum_partials_f64(partials.data(), (int)grid, n, &out); });
        char w[160];
        snprintf(w, 160, "%s %dx%dx%dx%d map=%d scale=%g grid=%u: loss", awing ? "awing" : "mse", N, Hh, W, K, use_map, scale, grid);
        check_scalar(w, out, want, 1e-5);
        snprintf(w, 160, "%s %dx%dx%dx%d map=%d scale=%g grid=%u: grad", awing ? "awing" : "mse", N, Hh, W, K, use_map, scale, grid);
        check(w, f(grad), rg, 1e-2);
        if (wrapper_grid) {
            wrapper_grid = false;
            // Same grid again: bitwise the same value.
            first = out;
            double again = NAN;
            std::vector<double> p2(grid, NAN);
            H g2(n);
            sim_launch(SimDim{grid}, SimDim{256}, 0, [&] {
                if (awing)
                    loss_cu::loss_awing_fwd_bwd_f16(pred.data(), target.data(), cw.data(), N, Hh, W, K, q.alpha, q.omega, q.eps,
                                                    q.theta, use_map, map_w, thr, scale, g2.data(), p2.data());
                else
                    loss_cu::loss_mse_fwd_bwd_f16(pred.data(), target.data(), cw.data(), N, Hh, W, K, use_map, map_w, thr, scale,
                                                  g2.data(), p2.data());
            });
            sim_launch(SimDim{1}, SimDim{256}, 0, [&] { loss_cu::loss_sum_partials_f64(p2.data(), (int)grid, n, &again); });
            snprintf(w, 160, "%s %dx%dx%dx%d map=%d: same grid, same bits", awing ? "awing" : "mse", N, Hh, W, K, use_map);
            report(w, std::memcmp(&first, &again, sizeof first) == 0, 0);
        }
    }
}

// ---------- optimizer ----------
static void test_unscale(long long n) {
    for (int plant = 0; plant < 3; ++plant) {  // none, NaN, inf
        std::vector<float> g32(n); for (auto& v : g32) v = uni(-3000, 3000);
        if (plant) g32[(long long)(uni(0, 1) * (n - 1))] = plant == 1 ? NAN : -INFINITY;
        float inv = 1.0f / 65536;
        std::vector<double> w32(n);
        for (long long i = 0; i < n; ++i) w32[i] = (double)g32[i] * inv;
        std::vector<float> in_place = g32;
        int flag32 = 0;
        sim_launch(SimDim{2}, SimDim{256}, 0, [&] { optim_cu::optim_unscale_check_f32(in_place.data(), n, inv, &flag32); });
        char w[160];
        snprintf(w, 160, "unscale n=%lld plant=%d: flag", n, plant);
        report(w, flag32 == (plant != 0), 0);
        if (!plant) { snprintf(w, 160, "unscale_f32 n=%lld", n); check(w, in_place, w32, 1e-7); }
    }
}

static void test_adamw(long long n, bool decay, bool half) {
    double lr = 3e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = decay ? 0.05 : 0.0;
    std::vector<float> w(n), m(n), v(n);
    for (long long i = 0; i < n; ++i) { w[i] = uni(-1, 1); m[i] = uni(-1e-2f, 1e-2f); v[i] = uni(1e-6f, 1e-4f); }
    std::vector<double> rw(w.begin(), w.end()), rm(m.begin(), m.end()), rv(v.begin(), v.end());
    H copy(n, __ushort_as_half(0x7e01));
    for (int t = 7; t < 10; ++t) {
        std::vector<float> g(n); for (auto& x : g) x = uni(-1e-2f, 1e-2f);
        float mul = 0.6f;
        double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
        for (long long i = 0; i < n; ++i) {
            double gi = (double)g[i] * mul;
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            rw[i] -= lr * ((rm[i] / bc1) / (std::sqrt(rv[i] / bc2) + eps) + wd * rw[i]);
        }
        // One tensor: its chunks of at most 4096 elements, as AdamWChunk::table cuts them.
        std::vector<optim_cu::AdamWChunk> chunks;
        for (long long s = 0; s < n; s += 4096)
            chunks.push_back({(unsigned long long)s, (unsigned long long)s, (unsigned)std::min(4096LL, n - s), decay ? 1u : 0u});
        sim_launch(SimDim{2}, SimDim{256}, 0, [&] {
            optim_cu::optim_adamw_chunks_f32(w.data(), g.data(), m.data(), v.data(), half ? copy.data() : nullptr, chunks.data(),
                                             (int)chunks.size(), (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)bc1,
                                             (float)bc2, mul);
        });
    }
    char s[160];
    snprintf(s, 160, "adamw n=%lld decay=%d half=%d: master", n, decay, half); check(s, w, rw, 1e-5);
    snprintf(s, 160, "adamw n=%lld decay=%d half=%d: m", n, decay, half); check(s, m, rm, 1e-5);
    snprintf(s, 160, "adamw n=%lld decay=%d half=%d: v", n, decay, half); check(s, v, rv, 1e-5);
    bool copy_ok = true;
    for (long long i = 0; i < n; ++i) {
        unsigned short want = half ? __half_as_ushort(__float2half_rn(w[i])) : 0x7e01;
        copy_ok &= __half_as_ushort(copy[i]) == want;
    }
    snprintf(s, 160, "adamw n=%lld decay=%d half=%d: fp16 copy (or untouched)", n, decay, half);
    report(s, copy_ok, 0);
}

// The whole-model AdamW (one chunk table, gaps between tensors, a gradient region without the gaps)
// must equal the same kernel run per tensor (offsets 0 on each tensor's own arrays, as the wrappers'
// adamw_step does), bit for bit, and leave the gaps alone.
static void test_adamw_chunks() {
    struct T { long long at, gat, len; int decay; };
    std::vector<T> ts;
    long long at = 3, gat = 0;
    for (long long len : {18LL, 1LL, 4096LL, 4097LL, 9000LL}) { ts.push_back({at, gat, len, (int)(len % 2)}); at += len + 5; gat += (len + 7) / 8 * 8; }
    const long long values = at, grads = gat;
    std::vector<optim_cu::AdamWChunk> chunks;
    for (auto& t : ts)
        for (long long s = 0; s < t.len; s += 4096)
            chunks.push_back({(unsigned long long)(t.at + s), (unsigned long long)(t.gat + s), (unsigned)std::min(4096LL, t.len - s), (unsigned)t.decay});
    std::vector<float> w(values), m(values), v(values), g(grads);
    for (long long i = 0; i < values; ++i) { w[i] = uni(-1, 1); m[i] = uni(-1e-2f, 1e-2f); v[i] = uni(1e-6f, 1e-4f); }
    for (auto& x : g) x = uni(-1e-2f, 1e-2f);
    auto w2 = w, m2 = m, v2 = v, w0 = w;
    H h(values, __ushort_as_half(0x7e01)), h2 = h;
    const float lr = 3e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.05f, bc1 = 0.1f, bc2 = 0.001f, mul = 0.7f;
    sim_launch(SimDim{3}, SimDim{256}, 0, [&] {
        optim_cu::optim_adamw_chunks_f32(w.data(), g.data(), m.data(), v.data(), h.data(), chunks.data(), (int)chunks.size(), lr, b1, b2, eps, wd, bc1, bc2, mul);
    });
    for (auto& t : ts) {
        std::vector<optim_cu::AdamWChunk> own;
        for (long long s = 0; s < t.len; s += 4096)
            own.push_back({(unsigned long long)s, (unsigned long long)s, (unsigned)std::min(4096LL, t.len - s), (unsigned)t.decay});
        sim_launch(SimDim{1}, SimDim{256}, 0, [&] {
            optim_cu::optim_adamw_chunks_f32(w2.data() + t.at, g.data() + t.gat, m2.data() + t.at, v2.data() + t.at, h2.data() + t.at,
                                             own.data(), (int)own.size(), lr, b1, b2, eps, wd, bc1, bc2, mul);
        });
    }
    bool same = std::memcmp(w.data(), w2.data(), values * 4) == 0 && std::memcmp(m.data(), m2.data(), values * 4) == 0 &&
                std::memcmp(v.data(), v2.data(), values * 4) == 0 && std::memcmp(h.data(), h2.data(), values * 2) == 0;
    bool gaps = w[0] == w0[0] && w[ts[1].at - 1] == w0[ts[1].at - 1] && __half_as_ushort(h[values - 1]) == 0x7e01 && w[ts[2].at] != w0[ts[2].at];
    report("adamw_chunks: per-tensor bits, gaps untouched", same && gaps, 0);
}

// ---------- target heatmaps ----------
// docs/maths.md#heatmap-targets: exp(-d^2 / (2 sigma^2)) within 3 sigma of the landmark, 0 beyond
// and for a missing one; every element written (the output starts as NaN).
static void test_heatmap(int N, int Hh, int W, int K, double sigma, unsigned grid) {
    std::vector<double> pts(2 * N * K);
    for (int i = 0; i < N * K; ++i) {
        const int kind = i % 5;
        pts[2 * i] = kind == 0 ? NAN : uni(-8, W + 8);
        pts[2 * i + 1] = kind == 1 ? (double)(i % Hh) : uni(-8, Hh + 8);
    }
    const long long n = (long long)N * Hh * W * K;
    std::vector<float> out(n, NAN);
    std::vector<double> want(n);
    for (long long i = 0; i < n; ++i) {
        const int c = i % K, x = (i / K) % W, y = (i / K / W) % Hh, img = i / K / W / Hh;
        const double px = pts[2 * (img * K + c)], py = pts[2 * (img * K + c) + 1];
        const double d2 = (x - px) * (x - px) + (y - py) * (y - py);
        want[i] = std::isfinite(px) && std::isfinite(py) && d2 <= 9 * sigma * sigma ? std::exp(-d2 / (2 * sigma * sigma)) : 0;
    }
    sim_launch(SimDim{grid}, SimDim{256}, 0, [&] { heatmap_cu::heatmap_encode_f32(pts.data(), N, Hh, W, K, sigma, out.data()); });
    char w[160];
    snprintf(w, 160, "heatmap_encode %dx%dx%dx%d sigma %.2f grid %u", N, Hh, W, K, sigma, grid);
    check(w, out, want, 1e-6);
}

int main() {
    gen.seed(2024);
    for (bool awing : {true, false}) for (bool map : {false, true}) {
        // Scales that keep |grad| inside fp16's range (weights up to 39, AWing slopes up to ~26, over
        // 315 elements); overflow to inf at larger scales is the loss scaler's business.
        test_loss(1, 7, 9, 5, awing, map, 64);
        test_loss(2, 13, 11, 3, awing, map, 1);
    }
    test_loss(1, 1, 1, 1, true, true, 1);
    for (long long n : {1LL, 1000LL, 5003LL}) test_unscale(n);
    for (long long n : {1LL, 1000LL, 9000LL}) for (bool decay : {false, true}) for (bool half : {false, true}) test_adamw(n, decay, half);
    test_adamw_chunks();
    test_heatmap(1, 7, 9, 5, 1.0, 1);
    test_heatmap(2, 13, 11, 3, 2.0, 3);
    test_heatmap(3, 17, 9, 4, 0.8, 2);
    printf("%d failures\n", failures);
    return failures != 0;
}
