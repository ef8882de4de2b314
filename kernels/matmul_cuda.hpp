// CUDA twins of kernels/matmul.hpp, same contract (y[n, rows] = x[n, cols] · W^T, INT4 layout of
// kernels/dequant.hpp), device pointers, enqueued on `stream` without synchronization.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>

struct CUstream_st;

namespace ferry {

// Fused INT4 GEMV (kernels/gemv_int4.cu): reads each packed block once per 8 activations.
void matmul_int4_cuda(const uint8_t* q, const uint16_t* scales, const uint16_t* mins, uint64_t rows,
                      uint64_t cols, const float* x, uint64_t n, float* y, CUstream_st* stream);

// cuBLASLt bf16 GEMM (kernels/gemm_bf16.cu). Owns the handle, a workspace and a bf16 copy of the
// activations, all allocated once at load for at most `max_activations` (n x cols) values.
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
  std::unique_ptr<Api> api_;
  std::map<std::array<uint64_t, 3>, std::unique_ptr<Plan>> plans_;  // by {rows, cols, n}
  static constexpr uint64_t kWorkspaceBytes = 32ull << 20;  // NVIDIA's advice for Hopper: 32 MB
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  void* x_bf16_ = nullptr;  // [max_activations] bf16
  uint64_t max_activations_;
};

}  // namespace ferry
