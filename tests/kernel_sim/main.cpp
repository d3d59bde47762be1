// Runs the non-convolution kernels under cuda_sim.h against naive double-precision references
// written independently of both the kernels and the CPU twins (scatter where the kernels gather).
// Build and run with tests/kernel_sim/run.sh. It covers the vector and scalar paths, accumulate
// and overwrite, odd channel counts, and prints one line per check.
#include "cuda_sim.h"
#include "k/elementwise.cu"
#include "k/batchnorm.cu"
#include "k/resample.cu"
#include "k/concat.cu"
#include "k/pool.cu"
#include <cstdio>
#include <random>
#include <cstring>
#include <string>

#include "sim_check.h"
static std::vector<double> d(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
static SimDim grid1(unsigned b) { return SimDim{b, 1, 1}; }

// ---------- elementwise ----------
static void test_elementwise() {
    for (long long n : {1LL, 7LL, 8LL, 1003LL}) for (int vec : {0, 1}) {
        H a = rand_h(n, -3, 3), b = rand_h(n, -3, 3), o0 = rand_h(n, -3, 3);
        auto af = f(a), bf = f(b), of0 = f(o0);
        char w[128];
        H y = poison(n);
        sim_launch(grid1(3), SimDim{32}, 0, [&] { elementwise_relu_fwd_f16(a.data(), y.data(), n, vec); });
        std::vector<double> r(n); for (long long i = 0; i < n; ++i) r[i] = std::max(af[i], 0.f);
        snprintf(w, 128, "relu_fwd n=%lld vec=%d", n, vec); check(w, f(y), r, 1e-3);
        y = poison(n);
        sim_launch(grid1(3), SimDim{32}, 0, [&] { elementwise_add_relu_fwd_f16(a.data(), b.data(), y.data(), n, vec); });
        for (long long i = 0; i < n; ++i) r[i] = std::max(af[i] + bf[i], 0.f);
        snprintf(w, 128, "add_relu_fwd n=%lld vec=%d", n, vec); check(w, f(y), r, 1e-3);
        for (int acc : {0, 1}) {
            y = acc ? o0 : poison(n);
            sim_launch(grid1(3), SimDim{32}, 0, [&] { elementwise_relu_bwd_f16(a.data(), b.data(), y.data(), n, acc, vec); });
            for (long long i = 0; i < n; ++i) r[i] = (acc ? of0[i] : 0) + (af[i] > 0 ? bf[i] : 0);
            snprintf(w, 128, "relu_bwd n=%lld vec=%d acc=%d", n, vec, acc); check(w, f(y), r, 1e-3);
            y = acc ? o0 : poison(n);
            sim_launch(grid1(3), SimDim{32}, 0, [&] { elementwise_add_bwd_f16(b.data(), y.data(), n, acc, vec); });
            for (long long i = 0; i < n; ++i) r[i] = (acc ? of0[i] : 0) + bf[i];
            snprintf(w, 128, "add_bwd n=%lld vec=%d acc=%d", n, vec, acc); check(w, f(y), r, 1e-3);
        }
    }
}

// ---------- batchnorm (mirrors the Rust wrapper's launches) ----------
static int chunks_of(long long m) { long long c = (m + 127) / 128; return (int)std::clamp(c, 1LL, 1024LL); }
// The reduction grid the wrapper picks: scalar (32 x 8 threads) or vector (256 threads).
struct Red { int ch; SimDim grid, block; };
static Red reduction(long long m, int C, int rvec) {
    if (!rvec) return {chunks_of(m), SimDim{(unsigned)((C + 31) / 32), (unsigned)chunks_of(m), 1}, SimDim{32, 8, 1}};
    int tile = std::min(C / 8, 32), lanes = 256 / tile;
    int ch = (int)std::clamp((m + lanes * 8 - 1) / (lanes * 8), 1LL, 1024LL);
    return {ch, SimDim{(unsigned)((C / 8 + tile - 1) / tile), (unsigned)ch, 1}, SimDim{256, 1, 1}};
}
// The statistics finalize alone, over as many row chunks as a convolution's epilogue gives the
// stem of a 768x768 batch-4 network (9216 tiles of 64 rows): each of the 128 threads of a channel
// merges dozens of chunk summaries before the tree. Summaries are exact (from double) and rounded
// once to float, so this measures the merge; an empty chunk and a short last chunk are included,
// and channels whose mean is far from 0 relative to their spread (as after a conv bias).
static void test_stats_finalize_many_chunks(int C, int chunks, int rows) {
    std::vector<float> ws((size_t)chunks * C * 3);
    std::vector<double> sum(C, 0), sq(C, 0);
    std::vector<double> off(C), spr(C);
    for (int c = 0; c < C; ++c) { off[c] = c % 3 == 0 ? 0.0 : uni(-60, 60); spr[c] = uni(0.05f, 2); }
    long long m = 0;
    std::vector<std::vector<double>> vals(C);
    for (int k = 0; k < chunks; ++k) {
        int r = k == 5 ? 0 : k == chunks - 1 ? rows / 3 : rows;
        m += r;
        for (int c = 0; c < C; ++c) {
            double s = 0, q = 0, mean = 0;
            std::vector<double> v(r);
            for (auto& x : v) { x = (double)(float)(off[c] + spr[c] * uni(-1, 1)); s += x; }
            if (r) mean = s / r;
            for (double x : v) { q += (x - mean) * (x - mean); sum[c] += x; }
            vals[c].insert(vals[c].end(), v.begin(), v.end());
            float* p = &ws[((size_t)k * C + c) * 3];
            p[0] = (float)r; p[1] = (float)mean; p[2] = (float)q;
        }
    }
    std::vector<double> want_mean(C), want_inv(C);
    float eps = 1e-5f, mom = 0.1f;
    for (int c = 0; c < C; ++c) {
        want_mean[c] = sum[c] / m;
        for (double x : vals[c]) sq[c] += (x - want_mean[c]) * (x - want_mean[c]);
        want_inv[c] = 1 / std::sqrt(sq[c] / m + eps);
    }
    std::vector<float> saved(2 * C, NAN), rm(C, 0), rv(C, 1);
    sim_launch(SimDim{(unsigned)C}, SimDim{128}, 0, [&] {
        batchnorm_stats_finalize_f32(ws.data(), m, C, chunks, eps, mom, saved.data(), rm.data(), rv.data());
    });
    char w[160];
    snprintf(w, 160, "bn stats finalize %d chunks x %d rows, C=%d: mean", chunks, rows, C);
    check(w, std::vector<float>(saved.begin(), saved.begin() + C), want_mean, 1e-6);
    snprintf(w, 160, "bn stats finalize %d chunks x %d rows, C=%d: invstd", chunks, rows, C);
    check(w, std::vector<float>(saved.begin() + C, saved.end()), want_inv, 1e-6);
    // Per channel too: the relative error of the worst-conditioned channel, not the vector's.
    double worst = 0;
    for (int c = 0; c < C; ++c) worst = std::max(worst, std::fabs(saved[C + c] - want_inv[c]) / want_inv[c]);
    bool ok = worst < 2e-6;
    if (!ok) failures++;
    printf("%-60s rel %.2e %s\n", "  worst channel's invstd", worst, ok ? "ok" : "FAIL");
}

static void test_batchnorm(int N, int Hh, int W, int C) {
  for (int rvec : {0, 1}) {
    if (rvec && C % 8) continue;
    long long m = (long long)N * Hh * W, n = m * C;
    Red red = reduction(m, C, rvec);
    int ch = red.ch;
    std::vector<float> off(C), spr(C);
    for (int c = 0; c < C; ++c) { off[c] = uni(-3, 3); spr[c] = uni(0.2f, 2); }
    H x(n); for (long long i = 0; i < n; ++i) x[i] = __float2half_rn(off[i % C] + spr[i % C] * uni(-1, 1));
    auto xf = f(x);
    std::vector<float> gamma(C), beta(C), rm(C), rv(C);
    for (int c = 0; c < C; ++c) { gamma[c] = uni(0.5, 1.5); beta[c] = uni(-0.5, 0.5); rm[c] = uni(-1, 1); rv[c] = uni(0.5, 2); }
    auto rm0 = rm, rv0 = rv;
    float eps = 1e-5f, mom = 0.2f;
    std::vector<float> ws(ch * C * 3 + 2 * C, NAN), saved(2 * C, NAN);
    H res = rand_h(n, -1, 1); auto resf = f(res);
    int vec = C % 8 == 0;
    for (int mode = 0; mode < 3; ++mode) {  // 0: bn, 1: bn+relu, 2: bn+add+relu
        rm = rm0; rv = rv0;
        int relu = mode >= 1;
        const __half* r = mode == 2 ? res.data() : nullptr;
        H y = poison(n);
        sim_launch(red.grid, red.block, 0, [&] {
            if (rvec) batchnorm_stats_partial_vec_f16(x.data(), m, C, ch, ws.data());
            else batchnorm_stats_partial_f16(x.data(), m, C, ch, ws.data());
        });
        sim_launch(SimDim{(unsigned)C}, SimDim{128}, 0, [&] {
            batchnorm_stats_finalize_f32(ws.data(), m, C, ch, eps, mom, saved.data(), rm.data(), rv.data());
        });
        sim_launch(grid1(3), SimDim{64}, 2 * C, [&] {
            batchnorm_fwd_apply_f16(x.data(), gamma.data(), beta.data(), saved.data(), saved.data() + C, 0, 0.f, r, relu, y.data(), n, C, vec);
        });
        // Reference in double.
        std::vector<double> mean(C, 0), var(C, 0), inv(C), ry(n), rsm(2 * C), rrm(C), rrv(C);
        for (long long i = 0; i < n; ++i) mean[i % C] += xf[i];
        for (int c = 0; c < C; ++c) mean[c] /= m;
        for (long long i = 0; i < n; ++i) var[i % C] += (xf[i] - mean[i % C]) * (xf[i] - mean[i % C]);
        for (int c = 0; c < C; ++c) {
            var[c] /= m; inv[c] = 1 / std::sqrt(var[c] + eps); rsm[c] = mean[c]; rsm[C + c] = inv[c];
            double unb = m > 1 ? var[c] * m / (m - 1) : var[c];
            rrm[c] = (1 - mom) * rm0[c] + mom * mean[c]; rrv[c] = (1 - mom) * rv0[c] + mom * unb;
        }
        for (long long i = 0; i < n; ++i) {
            int c = i % C; double v = gamma[c] * (xf[i] - mean[c]) * inv[c] + beta[c];
            if (mode == 2) v += resf[i];
            ry[i] = relu ? std::max(v, 0.0) : v;
        }
        char w[160];
        snprintf(w, 160, "bn fwd_train %dx%dx%dx%d rvec=%d mode=%d: saved", N, Hh, W, C, rvec, mode); check(w, saved, rsm, 1e-6);
        snprintf(w, 160, "bn fwd_train %dx%dx%dx%d rvec=%d mode=%d: running", N, Hh, W, C, rvec, mode);
        std::vector<float> run = rm; run.insert(run.end(), rv.begin(), rv.end());
        std::vector<double> rrun = rrm; rrun.insert(rrun.end(), rrv.begin(), rrv.end()); check(w, run, rrun, 1e-6);
        snprintf(w, 160, "bn fwd_train %dx%dx%dx%d rvec=%d mode=%d: y", N, Hh, W, C, rvec, mode); check(w, f(y), ry, 1e-3);
        // Eval forward.
        H ye = poison(n);
        sim_launch(grid1(2), SimDim{64}, 2 * C, [&] {
            batchnorm_fwd_apply_f16(x.data(), gamma.data(), beta.data(), rm0.data(), rv0.data(), 1, eps, r, relu, ye.data(), n, C, vec);
        });
        for (long long i = 0; i < n; ++i) {
            int c = i % C; double v = gamma[c] * (xf[i] - rm0[c]) / std::sqrt((double)rv0[c] + eps) + beta[c];
            if (mode == 2) v += resf[i];
            ry[i] = relu ? std::max(v, 0.0) : v;
        }
        snprintf(w, 160, "bn fwd_eval %dx%dx%dx%d mode=%d: y", N, Hh, W, C, mode); check(w, f(ye), ry, 1e-3);
        // Backward.
        H dy = rand_h(n, -1, 1); auto dyf = f(dy);
        auto yf = f(y);
        for (int acc : {0, 1}) {
            H dx0 = rand_h(n, -1, 1); auto dx0f = f(dx0);
            H dx = acc ? dx0 : poison(n), dres = acc ? dx0 : poison(n);
            std::vector<float> dg(C, NAN), db(C, NAN);
            const __half* yo = mode == 2 ? y.data() : nullptr;
            __half* dr = mode == 2 ? dres.data() : nullptr;
            int brelu = mode == 1;
            sim_launch(red.grid, red.block, 0, [&] {
                if (rvec) batchnorm_bwd_partial_vec_f16(dy.data(), x.data(), gamma.data(), beta.data(), saved.data(), brelu, yo, dr, acc, m, C, ch, ws.data());
                else batchnorm_bwd_partial_f16(dy.data(), x.data(), gamma.data(), beta.data(), saved.data(), brelu, yo, dr, acc, m, C, ch, ws.data());
            });
            float* coeffs = ws.data() + (size_t)ch * C * 3;
            sim_launch(SimDim{(unsigned)C}, SimDim{128}, 0, [&] {
                batchnorm_bwd_finalize_f32(ws.data(), m, C, ch, dg.data(), db.data(), coeffs);
            });
            sim_launch(grid1(3), SimDim{64}, 6 * C, [&] {
                batchnorm_bwd_dx_f16(dy.data(), x.data(), gamma.data(), beta.data(), saved.data(), brelu, yo, coeffs, dx.data(), acc, n, C, vec);
            });
            // Reference with the kernel's saved statistics.
            std::vector<double> g(n), xh(n), sg(C, 0), sgx(C, 0), rdx(n), rdres(n);
            for (long long i = 0; i < n; ++i) {
                int c = i % C; xh[i] = (xf[i] - saved[c]) * (double)saved[C + c];
                double gg = dyf[i];
                if (mode == 1 && gamma[c] * xh[i] + beta[c] <= 0) gg = 0;
                if (mode == 2 && !(yf[i] > 0)) gg = 0;
                g[i] = gg; sg[c] += gg; sgx[c] += gg * xh[i];
                rdres[i] = (acc ? dx0f[i] : 0) + gg;
            }
            for (long long i = 0; i < n; ++i) {
                int c = i % C;
                rdx[i] = (acc ? dx0f[i] : 0) + gamma[c] * saved[C + c] * (g[i] - sg[c] / m - xh[i] * sgx[c] / m);
            }
            snprintf(w, 160, "bn bwd %dx%dx%dx%d rvec=%d mode=%d acc=%d: dx", N, Hh, W, C, rvec, mode, acc); check(w, f(dx), rdx, 2e-3);
            snprintf(w, 160, "bn bwd %dx%dx%dx%d rvec=%d mode=%d acc=%d: dgamma", N, Hh, W, C, rvec, mode, acc); check(w, dg, sgx, 1e-5);
            snprintf(w, 160, "bn bwd %dx%dx%dx%d rvec=%d mode=%d acc=%d: dbeta", N, Hh, W, C, rvec, mode, acc); check(w, db, sg, 1e-5);
            if (mode == 2) { snprintf(w, 160, "bn bwd %dx%dx%dx%d rvec=%d mode=%d acc=%d: dres", N, Hh, W, C, rvec, mode, acc); check(w, f(dres), rdres, 1e-3); }
        }
    }
  }
}

// ---------- resample ----------
static void ref_taps(int o, int fct, int nin, int mode, int* i0, double* w0, int* i1, double* w1, int* cnt) {
    if (mode == 0) { *i0 = o / fct; *w0 = 1; *cnt = 1; return; }
    float src = std::max(((float)o + 0.5f) / (float)fct - 0.5f, 0.f);
    *i0 = std::min((int)std::floor(src), nin - 1); *i1 = std::min(*i0 + 1, nin - 1);
    float l1 = src - *i0;
    if (*i0 == *i1) { *w0 = 1; *cnt = 1; } else { *w0 = 1 - l1; *w1 = l1; *cnt = 2; }
}
static void test_resample(int N, int Hh, int W, int C, int fct) {
    int OH = Hh * fct, OW = W * fct;
    long long nx = (long long)N * Hh * W * C, ny = (long long)N * OH * OW * C;
    H x = rand_h(nx, -2, 2), dy = rand_h(ny, -2, 2), dx0 = rand_h(nx, -1, 1);
    auto xf = f(x), dyf = f(dy), dx0f = f(dx0);
    for (int mode : {0, 1}) for (int vec : {0, 1}) {
        if (vec && C % 8) continue;
        std::vector<double> ry(ny, 0), rdx(nx, 0);
        for (int b = 0; b < N; ++b) for (int oh = 0; oh < OH; ++oh) for (int ow = 0; ow < OW; ++ow) {
            int a0, a1, ac, b0, b1, bc; double wa0, wa1, wb0, wb1;
            ref_taps(oh, fct, Hh, mode, &a0, &wa0, &a1, &wa1, &ac);
            ref_taps(ow, fct, W, mode, &b0, &wb0, &b1, &wb1, &bc);
            for (int ia = 0; ia < ac; ++ia) for (int ib = 0; ib < bc; ++ib) {
                int ih = ia ? a1 : a0, iw = ib ? b1 : b0; double wt = (ia ? wa1 : wa0) * (ib ? wb1 : wb0);
                for (int c = 0; c < C; ++c) {
                    long long yi = (((long long)b * OH + oh) * OW + ow) * C + c, xi = (((long long)b * Hh + ih) * W + iw) * C + c;
                    ry[yi] += wt * xf[xi];
                    rdx[xi] += wt * dyf[yi];  // scatter: independent of the kernel's gather
                }
            }
        }
        H y = poison(ny);
        sim_launch(grid1(3), SimDim{64}, 0, [&] { resample_upsample_fwd_f16(x.data(), y.data(), N, Hh, W, C, fct, mode, vec); });
        char w[160];
        snprintf(w, 160, "upsample fwd %dx%dx%dx%d f=%d mode=%d vec=%d", N, Hh, W, C, fct, mode, vec); check(w, f(y), ry, 1e-3);
        for (int acc : {0, 1}) {
            H dx = acc ? dx0 : poison(nx);
            sim_launch(grid1(3), SimDim{64}, 0, [&] { resample_upsample_bwd_f16(dy.data(), dx.data(), N, Hh, W, C, fct, mode, acc, vec); });
            std::vector<double> want = rdx; if (acc) for (long long i = 0; i < nx; ++i) want[i] += dx0f[i];
            snprintf(w, 160, "upsample bwd %dx%dx%dx%d f=%d mode=%d vec=%d acc=%d", N, Hh, W, C, fct, mode, vec, acc); check(w, f(dx), want, 1e-3);
            // The compile-time-factor form must give the general form's bits.
            H dx_any = acc ? dx0 : poison(nx);
            sim_launch(grid1(3), SimDim{64}, 0, [&] {
                if (vec) upsample_bwd<8>(dy.data(), dx_any.data(), N, Hh, W, C, fct, mode, acc);
                else upsample_bwd<1>(dy.data(), dx_any.data(), N, Hh, W, C, fct, mode, acc);
            });
            const bool same = std::memcmp(dx.data(), dx_any.data(), nx * sizeof(__half)) == 0;
            if (!same) failures++;
            printf("%-60s %s\n", (std::string(w) + " == general").c_str(), same ? "ok" : "FAIL");
        }
    }
}

// ---------- concat ----------
static void test_concat(std::vector<int> widths, long long P) {
    int C = 0; for (int w : widths) C += w;
    std::vector<H> xs; for (int w : widths) xs.push_back(rand_h(P * w, -2, 2));
    for (int vecok : {0, 1}) {
        H y = poison(P * C);
        int at = 0;
        for (size_t i = 0; i < widths.size(); ++i) {
            int w = widths[i]; int vec = vecok && w % 8 == 0 && C % 8 == 0 && at % 8 == 0;
            sim_launch(grid1(2), SimDim{64}, 0, [&] { concat_copy_channels_f16(xs[i].data(), w, 0, y.data(), C, at, w, P, 0, vec); });
            at += w;
        }
        std::vector<double> ry(P * C); at = 0;
        for (size_t i = 0; i < widths.size(); ++i) { auto xf = f(xs[i]); for (long long p = 0; p < P; ++p) for (int k = 0; k < widths[i]; ++k) ry[p * C + at + k] = xf[p * widths[i] + k]; at += widths[i]; }
        char w[160]; snprintf(w, 160, "concat fwd C=%d P=%lld vec=%d", C, P, vecok); check(w, f(y), ry, 1e-7);
        auto yf = f(y); at = 0;
        for (size_t i = 0; i < widths.size(); ++i) {
            int wd = widths[i]; int vec = vecok && wd % 8 == 0 && C % 8 == 0 && at % 8 == 0;
            for (int acc : {0, 1}) {
                H d0 = rand_h(P * wd, -1, 1); auto d0f = f(d0); H dx = acc ? d0 : poison(P * wd);
                sim_launch(grid1(2), SimDim{64}, 0, [&] { concat_copy_channels_f16(y.data(), C, at, dx.data(), wd, 0, wd, P, acc, vec); });
                std::vector<double> r(P * wd); for (long long p = 0; p < P; ++p) for (int k = 0; k < wd; ++k) r[p * wd + k] = (acc ? d0f[p * wd + k] : 0) + yf[p * C + at + k];
                snprintf(w, 160, "concat bwd C=%d input %zu vec=%d acc=%d", C, i, vec, acc); check(w, f(dx), r, 1e-3);
            }
            at += wd;
        }
    }
}

// ---------- pool ----------
static void test_pool(int N, int Hh, int W, int C, int k, int s, int pad) {
    int OH = (Hh + 2 * pad - k) / s + 1, OW = (W + 2 * pad - k) / s + 1;
    long long nx = (long long)N * Hh * W * C, ny = (long long)N * OH * OW * C;
    H x(nx); for (auto& v : x) v = __float2half_rn((float)(std::uniform_int_distribution<int>(-4, 4)(gen)) * 0.5f);
    auto xf = f(x);
    H dy = rand_h(ny, -2, 2); auto dyf = f(dy);
    std::vector<double> ry(ny), rdx(nx, 0);
    for (int b = 0; b < N; ++b) for (int oy = 0; oy < OH; ++oy) for (int ox = 0; ox < OW; ++ox) for (int c = 0; c < C; ++c) {
        float best = -INFINITY; long long bi = -1;
        for (int r = 0; r < k; ++r) for (int q = 0; q < k; ++q) {
            int ih = oy * s + r - pad, iw = ox * s + q - pad;
            if (ih < 0 || ih >= Hh || iw < 0 || iw >= W) continue;
            long long xi = (((long long)b * Hh + ih) * W + iw) * C + c;
            if (xf[xi] > best || bi < 0) { best = xf[xi]; bi = xi; }
        }
        long long yi = (((long long)b * OH + oy) * OW + ox) * C + c;
        ry[yi] = xf[bi]; rdx[bi] += dyf[yi];
    }
    for (int vec : {0, 1}) {
    if (vec && C % 8) continue;
    H y = poison(ny);
    sim_launch(grid1(3), SimDim{64}, 0, [&] { pool_maxpool_fwd_f16(x.data(), y.data(), N, Hh, W, C, OH, OW, k, s, pad, vec); });
    char w[160]; snprintf(w, 160, "maxpool fwd %dx%dx%dx%d k%d s%d p%d vec=%d", N, Hh, W, C, k, s, pad, vec); check(w, f(y), ry, 1e-7);
    for (int acc : {0, 1}) {
        H d0 = rand_h(nx, -1, 1); auto d0f = f(d0); H dx = acc ? d0 : poison(nx);
        sim_launch(grid1(3), SimDim{64}, 0, [&] { pool_maxpool_bwd_f16(x.data(), dy.data(), dx.data(), N, Hh, W, C, OH, OW, k, s, pad, acc, vec); });
        std::vector<double> want = rdx; if (acc) for (long long i = 0; i < nx; ++i) want[i] += d0f[i];
        snprintf(w, 160, "maxpool bwd %dx%dx%dx%d k%d s%d p%d vec=%d acc=%d", N, Hh, W, C, k, s, pad, vec, acc); check(w, f(dx), want, 1e-3);
        // The kernel's per-cell form (stride 2) must give the per-pixel form's bits.
        H dx_any = acc ? d0 : poison(nx);
        const PoolGeometry g{N, Hh, W, C, OH, OW, k, s, pad};
        sim_launch(grid1(3), SimDim{64}, 0, [&] {
            if (vec) maxpool_bwd_cells<8, 1>(x.data(), dy.data(), dx_any.data(), g, acc);
            else maxpool_bwd_cells<1, 1>(x.data(), dy.data(), dx_any.data(), g, acc);
        });
        const bool same = std::memcmp(dx.data(), dx_any.data(), nx * sizeof(__half)) == 0;
        if (!same) failures++;
        printf("%-60s %s\n", (std::string(w) + " == per pixel").c_str(), same ? "ok" : "FAIL");
    }
    }
}

int main() {
    gen.seed(12345);
    test_elementwise();
    test_batchnorm(1, 7, 9, 18);
    test_batchnorm(4, 13, 17, 32);
    test_batchnorm(2, 5, 3, 29);
    test_batchnorm(4, 12, 12, 64);
    test_batchnorm(2, 9, 13, 72);
    test_batchnorm(1, 3, 3, 256);
    test_batchnorm(1, 1, 1, 8);
    test_stats_finalize_many_chunks(6, 9216, 64);
    test_stats_finalize_many_chunks(5, 2304, 128);
    test_resample(1, 5, 7, 18, 2);
    test_resample(2, 3, 5, 16, 4);
    test_resample(1, 2, 3, 8, 8);
    test_resample(2, 4, 3, 5, 3);
    test_concat({18, 36, 72}, 35);
    test_concat({32, 64, 16}, 21);
    test_concat({29, 3, 8}, 11);
    test_pool(1, 7, 9, 18, 3, 2, 1);
    test_pool(2, 8, 6, 16, 2, 2, 0);
    test_pool(1, 5, 5, 8, 3, 1, 1);
    test_pool(2, 9, 7, 5, 3, 2, 1);
    test_pool(1, 11, 9, 16, 3, 2, 0);
    test_pool(2, 7, 8, 8, 1, 2, 0);
    test_pool(1, 13, 12, 24, 3, 2, 1);
    printf("%d failures\n", failures);
    return failures != 0;
}
