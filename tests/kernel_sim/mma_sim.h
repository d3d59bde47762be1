// Host emulation of kernels/mma.cuh for cuda_sim.h: cp.async becomes a plain copy, and the
// warp-wide ldmatrix and mma.sync exchange their operands through one slot per lane between two
// __syncwarp barriers, then each lane computes exactly the fragment the hardware would give it
// (layouts in kernels/mma.cuh). Accumulation order differs from the tensor cores (fp32 either way).
#pragma once

inline uint32_t smem_u32(const void* p) { return (uint32_t)(uintptr_t)p; }

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
    if (valid) std::memcpy(smem, gmem, 16);
    else std::memset(smem, 0, 16);
}
inline void cp_async_commit() {}
template <int Pending>
inline void cp_async_wait() {}

struct SimLaneSlot {
    const __half* row;
    uint32_t a[4];
    uint32_t b[2];
};
// One exchange area per warp, sized at first use (blocks run one after another).
inline std::vector<std::array<SimLaneSlot, 32>> sim_warp_slots;
inline SimLaneSlot& sim_my_slot() {
    static std::mutex grow;
    {
        std::lock_guard<std::mutex> lock(grow);
        if (sim_warp_slots.size() < sim_warp_barriers.size()) sim_warp_slots.resize(sim_warp_barriers.size());
    }
    return sim_warp_slots[sim_warp][sim_lane];
}
inline uint32_t sim_pack(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}
inline float sim_lo(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r & 0xffff))); }
inline float sim_hi(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r >> 16))); }

// `count` 8x8 matrices; lane L's register i gets row L/4, columns 2(L%4)..+1 of matrix i (or the
// transposed pair when `trans`).
inline void sim_ldmatrix(uint32_t* r, const void* smem, int count, bool trans) {
    SimLaneSlot& mine = sim_my_slot();
    mine.row = static_cast<const __half*>(smem);
    __syncwarp();
    const unsigned g = sim_lane / 4, t = sim_lane % 4;
    for (int i = 0; i < count; ++i) {
        const auto& rows = sim_warp_slots[sim_warp];
        if (!trans) {
            const __half* row = rows[8 * i + g].row;
            r[i] = sim_pack(row[2 * t], row[2 * t + 1]);
        } else {
            r[i] = sim_pack(rows[8 * i + 2 * t].row[g], rows[8 * i + 2 * t + 1].row[g]);
        }
    }
    __syncwarp();
}
inline void ldmatrix_x4(uint32_t r[4], const void* smem) { sim_ldmatrix(r, smem, 4, false); }
inline void ldmatrix_x4_trans(uint32_t r[4], const void* smem) { sim_ldmatrix(r, smem, 4, true); }
inline void ldmatrix_x2(uint32_t r[2], const void* smem) { sim_ldmatrix(r, smem, 2, false); }
inline void ldmatrix_x2_trans(uint32_t r[2], const void* smem) { sim_ldmatrix(r, smem, 2, true); }

inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    SimLaneSlot& mine = sim_my_slot();
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    __syncwarp();
    // Rebuild the whole 16x16 A and 16x8 B from the 32 lanes' fragments.
    float A[16][16], B[16][8];
    const auto& s = sim_warp_slots[sim_warp];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l / 4, t = l % 4;
        A[g][2 * t] = sim_lo(s[l].a[0]);
        A[g][2 * t + 1] = sim_hi(s[l].a[0]);
        A[g + 8][2 * t] = sim_lo(s[l].a[1]);
        A[g + 8][2 * t + 1] = sim_hi(s[l].a[1]);
        A[g][2 * t + 8] = sim_lo(s[l].a[2]);
        A[g][2 * t + 9] = sim_hi(s[l].a[2]);
        A[g + 8][2 * t + 8] = sim_lo(s[l].a[3]);
        A[g + 8][2 * t + 9] = sim_hi(s[l].a[3]);
        B[2 * t][g] = sim_lo(s[l].b[0]);
        B[2 * t + 1][g] = sim_hi(s[l].b[0]);
        B[2 * t + 8][g] = sim_lo(s[l].b[1]);
        B[2 * t + 9][g] = sim_hi(s[l].b[1]);
    }
    __syncwarp();
    const unsigned g = sim_lane / 4, t = sim_lane % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int j = 0; j < 4; ++j) {
        float acc = d[j];
        for (int k = 0; k < 16; ++k) acc += A[rows[j]][k] * B[k][cols[j]];
        d[j] = acc;
    }
}
