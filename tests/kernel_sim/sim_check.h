// Shared by the simulator programs (main.cpp, train.cpp, conv.cpp, conv_wgrad.cpp): the random
// generator (each program seeds it first thing in main(), so each keeps its own reproducible
// data), fp16 test data, poisoned outputs and the relative-error check that counts failures.
// Include after cuda_sim.h.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

inline std::mt19937 gen;
inline int failures = 0;
using H = std::vector<__half>;
inline float uni(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
inline H rand_h(size_t n, float lo, float hi) { H v(n); for (auto& x : v) x = __float2half_rn(uni(lo, hi)); return v; }
inline std::vector<float> f(const H& v) { std::vector<float> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = __half2float(v[i]); return o; }
// A NaN pattern no kernel output can equal, for outputs a kernel must overwrite.
inline H poison(size_t n) { return H(n, __ushort_as_half(0x7e01)); }
// ||got - want|| / ||want|| against `tol`; any non-finite value in `got` fails.
inline void check(const std::string& what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
    double num = 0, den = 0; size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) { if (!std::isfinite(got[i])) bad++; num += (got[i] - want[i]) * (got[i] - want[i]); den += want[i] * want[i]; }
    double e = std::sqrt(num / std::max(den, 1e-300));
    bool ok = bad == 0 && e < tol;
    if (!ok) failures++;
    printf("%-84s rel %.2e nonfinite %zu %s\n", what.c_str(), e, bad, ok ? "ok" : "FAIL");
}
