// Matrix-vector products y[rows] = W[rows, cols] · x[cols] over ferry's weight formats, the CPU
// twins of the CUDA GEMV kernels to come. W is row-major; INT4 layout as in kernels/dequant.hpp.
#pragma once
#include <cstdint>

namespace ferry {

// bf16 weights: w [rows, cols] bf16 bits.
void matvec_bf16_cpu(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x, float* y);
// INT4 weights: q [rows, B*64], scales/mins [rows, B] f16 bits (mins nullptr: sym layout).
// Each block's codes are dotted with x first and scaled once: sum(c*x)*s + min*sum(x) (asym) or
// (sum(c*x) - 8*sum(x))*s (sym), so the inner loop is integer codes times floats.
void matvec_int4_cpu(const uint8_t* q, const uint16_t* scales, const uint16_t* mins, uint64_t rows,
                     uint64_t cols, const float* x, float* y);

}  // namespace ferry
