// Warp-level tensor-core primitives shared by the convolution kernels: asynchronous global ->
// shared copies, ldmatrix fragment loads and the m16n8k16 fp16 MMA with fp32 accumulation. These
// are Ampere (sm_80) instructions, so the same code runs on RTX 30xx (sm_86), RTX 40xx (sm_89)
// and H100 (sm_90). Device code only.
//
// Fragment layouts of mma.m16n8k16.row.col (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4; each 32-bit register holds two fp16 values, the lower index in
// the low half:
//   A (16x16, row-major):  a0 = A[g][2t..2t+1]      a1 = A[g+8][2t..2t+1]
//                          a2 = A[g][2t+8..2t+9]    a3 = A[g+8][2t+8..2t+9]
//   B (16x8, k-major):     b0 = B[2t..2t+1][g]      b1 = B[2t+8..2t+9][g]
//   C, D (16x8, fp32):     d0, d1 = D[g][2t..2t+1]  d2, d3 = D[g+8][2t..2t+1]
// ldmatrix .x4 loads four 8x8 fp16 matrices: lanes 8i..8i+7 give the addresses of the eight rows
// (16 bytes each) of matrix i, and register i of lane L receives row L/4, columns 2(L%4)..+1 of
// matrix i (.trans: column L/4, rows 2(L%4)..+1, i.e. of the transposed matrix). .x2 uses lanes
// 0..15 and returns two registers.
//
// Under tests/kernel_sim (CEPHALO_KERNEL_SIM) the same functions are emulated in host C++ by
// cuda_sim.h, so the convolution kernels' indexing is checked on machines without a GPU.
//
// Include it after common.cuh, and include nothing from here: build.rs inlines one level of local
// includes for NVRTC, which has no include path.
#pragma once

#ifndef CEPHALO_KERNEL_SIM

// The 32-bit shared-memory address the PTX shared-state-space instructions take.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global to shared memory without passing through registers; when `valid`
// is false nothing is read and the 16 bytes are zero-filled (the padding of an implicit GEMM).
// `gmem` must be a mapped, 16-byte-aligned address even when invalid.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(src_bytes));
}

// Closes the group of cp.async issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Waits until at most `Pending` committed groups are still in flight (this thread's copies only:
// follow with __syncthreads before reading what other threads copied).
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(smem)));
}

// d += A * B for one 16x8x16 tile held in fragments (layouts above).
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#endif  // CEPHALO_KERNEL_SIM
