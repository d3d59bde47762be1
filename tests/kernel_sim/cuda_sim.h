// A host-side stand-in for the CUDA execution model, just enough to run the kernels of
// kernels/*.cu on the CPU without a GPU: blocks run one after another, the threads of a block as
// OS threads (see sim_launch) meeting at a std::barrier for __syncthreads, `__shared__` arrays
// become statics (one block at a time) and the fp16 type comes from cuda_fp16.h, which works in
// host code. Slow and only for small shapes; it checks indexing and logic, not timing or
// memory-model corner cases.
#pragma once
#include <cuda_fp16.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <barrier>
#include <thread>
#include <vector>
#include <algorithm>
#include <functional>
#include <array>
#include <memory>
#include <mutex>
#define CEPHALO_KERNEL_SIM 1
struct SimDim { unsigned x = 1, y = 1, z = 1; };
inline thread_local SimDim threadIdx, blockIdx;
inline SimDim blockDim, gridDim;
inline std::barrier<>* sim_barrier;
inline std::vector<float> sim_shared_store;
inline float* sim_dynamic_shared;
// Warps: each thread knows its lane and warp, and the lanes of a warp meet at their own barrier
// (for __syncwarp and the warp-wide tensor-core primitives emulated in mma_sim.h).
inline thread_local unsigned sim_lane, sim_warp;
inline std::vector<std::unique_ptr<std::barrier<>>> sim_warp_barriers;
inline void __syncwarp(unsigned = 0xffffffffu) { sim_warp_barriers[sim_warp]->arrive_and_wait(); }
inline void __syncthreads() { sim_barrier->arrive_and_wait(); }
#ifndef __global__
#define __global__
#endif
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static
#ifndef __align__
#define __align__(n) alignas(n)
#endif
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::max;
using std::min;
// One OS thread per thread of the block, made once per launch and walking the blocks in order (a
// thread per thread per block made thread creation most of the simulator's run time, and more so
// under the sanitizers). A block starts when every thread has left the previous one: its own
// barrier, separate from __syncthreads's, so a kernel that syncs after some threads returned
// still deadlocks here as it would misbehave on a GPU, instead of pairing with this one.
inline void sim_launch(SimDim grid, SimDim block, size_t shared_floats, const std::function<void()>& k) {
    gridDim = grid;
    blockDim = block;
    sim_shared_store.assign(shared_floats + 1, NAN);
    sim_dynamic_shared = sim_shared_store.data();
    const unsigned nt = block.x * block.y * block.z;
    std::barrier<> bar(nt), block_done(nt);
    sim_barrier = &bar;
    sim_warp_barriers.clear();
    for (unsigned w = 0; w < (nt + 31) / 32; ++w)
        sim_warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, nt - 32 * w)));
    std::vector<std::thread> ts;
    for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
                ts.emplace_back([&, tx, ty, tz] {
                    threadIdx = {tx, ty, tz};
                    const unsigned linear = tx + block.x * (ty + block.y * tz);
                    sim_lane = linear % 32;
                    sim_warp = linear / 32;
                    for (unsigned bz = 0; bz < grid.z; ++bz)
                        for (unsigned by = 0; by < grid.y; ++by)
                            for (unsigned bx = 0; bx < grid.x; ++bx) {
                                blockIdx = {bx, by, bz};
                                k();
                                block_done.arrive_and_wait();
                            }
                });
    for (auto& t : ts) t.join();
}
#include "mma_sim.h"
