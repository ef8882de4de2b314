// Matrix products y[n, rows] = x[n, cols] · W[rows, cols]^T over INT8 weights (format/int8.hpp),
// with the contract of kernels/matmul.hpp: the CPU one (kernels/matmul_int8_cpu.cpp) splits the
// output rows over a CpuPool, each output element computed by one thread in a fixed order, so
// results do not depend on the thread count; the CUDA one (kernels/gemv_int8.cu) takes device
// pointers and enqueues on `stream`. Their reference is matvec_int8_cpu (kernels/matvec.hpp).
#pragma once
#include <cstdint>

#include "base/cpu_isa.hpp"
#include "format/int8.hpp"
#include "kernels/cpu_pool.hpp"

struct CUstream_st;

namespace ferry {

void matmul_int8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y);
void matmul_int8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y,
                     KernelIsa isa);
// The same product on activations quantized to INT8 per block of 128 (integer SIMD; the error
// bound in kernels/matmul_int8_cpu.cpp); rows over 32,768 columns take matmul_int8_cpu.
void matmul_int8_q8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y);
void matmul_int8_q8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y,
                        KernelIsa isa);
// Rows [r0, r1) of matmul_int8_q8_cpu's y on the calling thread, the same bits (each row is
// computed alone, in a fixed order): the fused regions of kernels/matmul.hpp run the default
// INT8 v_proj beside INT4 q and k this way. Only where matmul_int8_q8_fits(w).
void matmul_int8_q8_rows_cpu(const Int8View& w, const float* x, uint64_t n, float* y, uint64_t r0,
                             uint64_t r1, KernelIsa isa);
// Whether w's rows take the INT8-activation path (up to 32,768 columns) rather than the fp32 one.
bool matmul_int8_q8_fits(const Int8View& w);
// Any n: one pass over the weights per 8 tokens (the forward pass dequantizes to bf16 and runs
// the GEMM instead above kGemvMaxBatch tokens, as for INT4).
void matmul_int8_cuda(const Int8View& w, const float* x, uint64_t n, float* y, CUstream_st* stream);

}  // namespace ferry
