// CUDA twins of kernels/matmul.hpp, same contract (y[n, rows] = x[n, cols] · W^T, INT4 layout of
// kernels/dequant.hpp), device pointers, enqueued on `stream` without synchronization.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace ferry {

// Fused INT4 GEMV (kernels/gemv_int4.cu): reads each packed block once per 8 activations.
void matmul_int4_cuda(const uint8_t* q, const uint16_t* scales, const uint16_t* mins, uint64_t rows,
                      uint64_t cols, const float* x, uint64_t n, float* y, CUstream_st* stream);

}  // namespace ferry
