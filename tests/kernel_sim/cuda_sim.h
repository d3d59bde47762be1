// A host-side stand-in for the CUDA execution model, just enough to run the kernels of
// kernels/*.cu on the CPU without a GPU: blocks run one after another, the threads of a block as
// OS threads meeting at a std::barrier for __syncthreads, `__shared__` arrays become statics (one
// block at a time) and the fp16 type comes from cuda_fp16.h, which works in host code. Slow and
// only for small shapes; it checks indexing and logic, not timing or memory-model corner cases.
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
struct SimDim { unsigned x = 1, y = 1, z = 1; };
inline thread_local SimDim threadIdx, blockIdx;
inline SimDim blockDim, gridDim;
inline std::barrier<>* sim_barrier;
inline std::vector<float> sim_shared_store;
inline float* sim_dynamic_shared;
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
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::max;
using std::min;
inline void sim_launch(SimDim grid, SimDim block, size_t shared_floats, const std::function<void()>& k) {
    gridDim = grid;
    blockDim = block;
    sim_shared_store.assign(shared_floats + 1, NAN);
    sim_dynamic_shared = sim_shared_store.data();
    const unsigned nt = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(nt);
                sim_barrier = &bar;
                std::vector<std::thread> ts;
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx)
                            ts.emplace_back([&, bx, by, bz, tx, ty, tz] {
                                blockIdx = {bx, by, bz};
                                threadIdx = {tx, ty, tz};
                                k();
                            });
                for (auto& t : ts) t.join();
            }
}
