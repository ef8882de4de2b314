// Matrix products y[n, rows] = x[n, cols] · W[rows, cols]^T over ferry's weight formats: n = 1 is
// the decode matrix-vector product, n > 1 a prefill batch. Declared as twins with the same
// arguments: the CPU ones (kernels/matmul_cpu.cpp) split the output rows over a CpuPool, each
// output element computed by one thread in a fixed order, so results do not depend on the thread
// count; the CUDA ones take device pointers and enqueue on `stream` without synchronization:
// the fused INT4 GEMV (kernels/gemv_int4.cu) and cuBLASLt's bf16 GEMM (kernels/gemm_bf16.cu).
// tests/test_gpu_kernels.cpp compares each pair.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>

#include "base/cpu_isa.hpp"
#include "format/int4.hpp"
#include "format/int8.hpp"
#include "kernels/cpu_pool.hpp"

struct CUstream_st;

namespace ferry {

// INT4 weights (format/int4.hpp).
void matmul_int4_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y);
void matmul_int4_cuda(const Int4View& w, const float* x, uint64_t n, float* y, CUstream_st* stream);

// INT4 weights times activations quantized to INT8 per block of 128 (kernels/matmul_cpu.cpp: the
// integer-SIMD path, its error bound); rows over 32,768 columns take matmul_int4_cpu.
void matmul_int4_q8_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y);
void matmul_int4_q8_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y,
                        KernelIsa isa);
// The INT4 GEMV on activations quantized the same way (GemvX::q8, kernels/gemv_fused.hpp), n <= 8
// a launch, at every width: its twin is gemv_int4_fused_cpu with GemvX::q8, which equals
// matmul_int4_q8_cpu's portable path up to 32,768 columns (where the latter turns to fp32).
void matmul_int4_q8_cuda(const Int4View& w, const float* x, uint64_t n, float* y,
                         CUstream_st* stream);
// One block of len <= 128 activations as matmul_int4_q8_cpu quantizes it: q [128] (zeros past
// len) = round(x * 127 / max|x|) clamped to [-127, 127], all zero where max|x| <= kQ8MinBlockMax
// (kernels/gemv_fused.hpp); NaNs count as 0 in the max and leave a 0 low byte; returns max|x|. The
// paths give the same bits (tests compare them).
float quantize_q8_block_cpu(const float* x, uint64_t len, int32_t* q, KernelIsa isa);

// Fused products on INT8 activations over one input x [n, cols], each in ONE parallel region
// instead of one per weight (decode of a small model is bound by the regions: SmolLM2 makes 7 per
// layer). Every output element is bit-identical to matmul_int4_q8_cpu's (or, for an INT8 part,
// matmul_int8_q8_cpu's) on its weight alone (the same per-row code on the same quantized x; each
// task quantizes its token tile once for all INT4 parts), for every thread count; weights over
// their 32,768 columns run the fp32 path, as there.
struct FusedPart {
  Int4View q4;  // [rows, cols] unless int8; every part of a call has the same cols
  Int8View q8;  // [rows, cols] when int8 (the default v_proj beside INT4 q and k)
  float* y;     // [n, rows]
  bool int8 = false;
  uint64_t rows() const { return int8 ? q8.rows : q4.rows; }
  uint64_t cols() const { return int8 ? q8.cols : q4.cols; }
};
// The rows of all `count` parts are one range split over the pool (q/k/v of a layer). (A pointer
// and a count, not a std::span: nvcc compiles this header as C++17.)
void matmul_q8_fused_cpu(CpuPool& pool, const FusedPart* parts, size_t count, const float* x,
                         uint64_t n, KernelIsa isa);
// gate and up (the same shape) and the SwiGLU epilogue: gate_y = x gate^T, up_y = x up^T and
// h = silu(gate_y) * up_y (silu_mul_cpu), each task on the same rows of both weights; all
// [n, rows], h may be gate_y.
void matmul_int4_q8_gate_up_cpu(CpuPool& pool, const Int4View& gate, const Int4View& up,
                                const float* x, uint64_t n, float* gate_y, float* up_y, float* h,
                                KernelIsa isa);

// bf16 weights: w [rows, cols] bf16 bits. The CUDA twin is CublasLt::matmul_bf16 below.
void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y);

// With the instruction set chosen (base/cpu_isa.hpp), so that tests compare the paths.
void matmul_int4_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y,
                     KernelIsa isa);
void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y, KernelIsa isa);

// cuBLASLt bf16 GEMM (kernels/gemm_bf16.cu). Owns a workspace and a bf16 copy of the activations,
// allocated once at load for at most `max_activations` (n x cols) values, and the handle, made
// with the library's loading at the first matmul_bf16 (INT4 decode never calls it).
class CublasLt {
 public:
  explicit CublasLt(uint64_t max_activations);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;
  // y[n, rows] = x[n, cols] · W^T; w bf16 [rows, cols], x and y fp32, all on the device.
  void matmul_bf16(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x, uint64_t n,
                   float* y, CUstream_st* stream);

  struct Api;   // cuBLASLt's entry points, loaded with dlopen (kernels/gemm_bf16.cu says why)
  struct Plan;  // descriptors and algorithm of one shape

 private:
  void load();  // dlopen, entry points, handle
  std::unique_ptr<Api> api_;
  std::map<std::array<uint64_t, 3>, std::unique_ptr<Plan>> plans_;  // by {rows, cols, n}
  static constexpr uint64_t kWorkspaceBytes = 32ull << 20;  // NVIDIA's advice for Hopper: 32 MB
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  void* x_bf16_ = nullptr;  // [max_activations] bf16
  uint64_t max_activations_;
};

}  // namespace ferry
