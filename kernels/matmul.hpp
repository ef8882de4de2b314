// Matrix products y[n, rows] = x[n, cols] · W[rows, cols]^T over ferry's weight formats on the
// CPU, split over output rows on a CpuPool; n = 1 is the decode matrix-vector product, n > 1 a
// prefill batch. The CPU twins of the CUDA GEMV/GEMM kernels. Each output element is computed by
// one thread in a fixed order, so results do not depend on the thread count.
#pragma once
#include <cstdint>

#include "kernels/cpu_isa.hpp"
#include "kernels/cpu_pool.hpp"

namespace ferry {

// bf16 weights: w [rows, cols] bf16 bits.
void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y);
// INT4 weights as in kernels/dequant.hpp; mins == nullptr for the sym layout.
void matmul_int4_cpu(CpuPool& pool, const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                     uint64_t rows, uint64_t cols, const float* x, uint64_t n, float* y);

// With the instruction set chosen (kernels/cpu_isa.hpp), so that tests compare the paths.
void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y, KernelIsa isa);
void matmul_int4_cpu(CpuPool& pool, const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                     uint64_t rows, uint64_t cols, const float* x, uint64_t n, float* y,
                     KernelIsa isa);

}  // namespace ferry
