// bf16 GEMM through cuBLASLt for prefill and for the bf16 cache format: y[n, rows] = x[n, cols] ·
// W^T, W bf16 [rows, cols] row-major as stored. The CPU twin is matmul_bf16_cpu.
//
// In cuBLAS's column-major terms W is a [cols, rows] matrix and x a [cols, n] one, so the
// product is the "TN" GEMM C[rows, n] = op_T(W) · x with fp32 output and fp32 accumulation.
// The activations are rounded to bf16 first (tensor cores take bf16 pairs): the twin keeps them
// fp32, so the two differ by that rounding (relative 2^-9 per element, NMSE ~1e-6).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda_check.hpp"
#include "kernels/matmul_cuda.hpp"
#include "quantizer/error.hpp"

namespace ferry {
namespace {

void lt_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt: ") + what + " failed (status " + std::to_string(int(s)) +
                ")");
}

__global__ void to_bf16_kernel(const float* x, uint64_t count, __nv_bfloat16* out) {
  const uint64_t i = uint64_t(blockIdx.x) * 256 + threadIdx.x;
  if (i < count) out[i] = __float2bfloat16_rn(x[i]);
}

// A matrix layout of `rows` x `cols`, column-major, bf16 or fp32; destroyed with the scope.
struct Layout {
  cublasLtMatrixLayout_t h = nullptr;
  Layout(cudaDataType t, uint64_t rows, uint64_t cols, uint64_t ld) {
    lt_check(cublasLtMatrixLayoutCreate(&h, t, rows, cols, int64_t(ld)), "layout");
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(h); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

}  // namespace

CublasLt::CublasLt(uint64_t max_activations) : max_activations_(max_activations) {
  cublasLtHandle_t h = nullptr;
  lt_check(cublasLtCreate(&h), "cublasLtCreate");
  handle_ = h;
  CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  CUDA_CHECK(cudaMalloc(&x_bf16_, max_activations * sizeof(__nv_bfloat16)));
}

CublasLt::~CublasLt() {
  cudaFree(x_bf16_);
  cudaFree(workspace_);
  cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

void CublasLt::matmul_bf16(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                           uint64_t n, float* y, CUstream_st* stream) {
  if (rows == 0 || n == 0) return;
  if (n * cols > max_activations_)
    throw Error("matmul_bf16_cuda: " + std::to_string(n) + " x " + std::to_string(cols) +
                " activations exceed the " + std::to_string(max_activations_) +
                " allocated at load");
  const uint64_t count = n * cols;
  auto* xb = static_cast<__nv_bfloat16*>(x_bf16_);
  to_bf16_kernel<<<uint32_t((count + 255) / 256), 256, 0, stream>>>(x, count, xb);
  CUDA_CHECK(cudaGetLastError());

  cublasLtMatmulDesc_t op = nullptr;
  lt_check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
  const cublasOperation_t transpose = CUBLAS_OP_T;
  lt_check(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose),
      "transpose attribute");
  Layout a(CUDA_R_16BF, cols, rows, cols), b(CUDA_R_16BF, cols, n, cols),
      c(CUDA_R_32F, rows, n, rows);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t s =
      cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), op, &one, w, a.h, xb, b.h, &zero, y,
                     c.h, y, c.h, nullptr, workspace_, kWorkspaceBytes, stream);
  cublasLtMatmulDescDestroy(op);
  lt_check(s, "cublasLtMatmul");
}

}  // namespace ferry
