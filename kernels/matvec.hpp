// Scalar reference matrix-vector products y[rows] = W[rows, cols] · x[cols], the plainest
// reading of each weight format: tests hold the vectorized, multithreaded CPU kernels of
// kernels/matmul.hpp (and through them the CUDA ones) against these.
#pragma once
#include <cstdint>

#include "format/int4.hpp"
#include "format/int8.hpp"

namespace ferry {

// bf16 weights: w [rows, cols] bf16 bits.
void matvec_bf16_cpu(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x, float* y);
// INT4 weights (format/int4.hpp). Each block's codes are dotted with x first and scaled once:
// sum(c*x)*s + min*sum(x) (asym) or (sum(c*x) - 8*sum(x))*s (sym), so the inner loop is integer
// codes times floats.
void matvec_int4_cpu(const Int4View& w, const float* x, float* y);
// INT8 weights (format/int8.hpp): per block dot = sum(code * x), acc += dot * scale.
void matvec_int8_cpu(const Int8View& w, const float* x, float* y);

}  // namespace ferry
