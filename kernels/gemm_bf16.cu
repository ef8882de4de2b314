// bf16 GEMM through cuBLASLt for prefill and for the bf16 cache format: y[n, rows] = x[n, cols] ·
// W^T, W bf16 [rows, cols] row-major as stored. The CPU twin is matmul_bf16_cpu.
//
// In cuBLAS's column-major terms W is a [cols, rows] matrix and x a [cols, n] one, so the
// product is the "TN" GEMM C[rows, n] = op_T(W) · x with fp32 output and fp32 accumulation.
// The activations are rounded to bf16 first (tensor cores take bf16 pairs): the twin keeps them
// fp32, so the two differ by that rounding (relative 2^-9 per element, NMSE ~1e-6).
//
// cuBLASLt is loaded with dlopen when the first CublasLt is made, not linked: merely loading
// libcublasLt.so.13 costs 210 MB of resident memory (measured: a program that links it and
// prints one line peaks at 211,776 kB; with only cudart, 1,652 kB), which every `ferry quantize`
// and CPU run of a CUDA build would pay for nothing.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <string>

#include "base/error.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/matmul.hpp"

namespace ferry {
namespace {

#define FERRY_STR2(x) #x
#define FERRY_STR(x) FERRY_STR2(x)
constexpr const char* kLibrary = "libcublasLt.so." FERRY_STR(CUBLAS_VER_MAJOR);

}  // namespace

// The entry points ferry calls, resolved from the library at load.
struct CublasLt::Api {
  void* lib = nullptr;
  decltype(&cublasLtCreate) create = nullptr;
  decltype(&cublasLtDestroy) destroy = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
  decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;

  Api() {
    lib = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
      throw Error(std::string("cannot load ") + kLibrary + " (" + dlerror() +
                  "): the bf16 GEMM needs cuBLASLt of the CUDA toolkit; add its lib directory to "
                  "LD_LIBRARY_PATH");
    bind(create, "cublasLtCreate");
    bind(destroy, "cublasLtDestroy");
    bind(layout_create, "cublasLtMatrixLayoutCreate");
    bind(layout_destroy, "cublasLtMatrixLayoutDestroy");
    bind(desc_create, "cublasLtMatmulDescCreate");
    bind(desc_set, "cublasLtMatmulDescSetAttribute");
    bind(desc_destroy, "cublasLtMatmulDescDestroy");
    bind(matmul, "cublasLtMatmul");
    bind(pref_create, "cublasLtMatmulPreferenceCreate");
    bind(pref_set, "cublasLtMatmulPreferenceSetAttribute");
    bind(pref_destroy, "cublasLtMatmulPreferenceDestroy");
    bind(heuristic, "cublasLtMatmulAlgoGetHeuristic");
  }
  ~Api() { dlclose(lib); }
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  template <typename F>
  void bind(F& f, const char* name) {
    f = reinterpret_cast<F>(dlsym(lib, name));
    if (!f) {
      dlclose(lib);
      throw Error(std::string(kLibrary) + " has no " + name +
                  ": a cuBLASLt older than the build's");
    }
  }
};

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

}  // namespace

// Everything cuBLASLt needs to run one shape (rows, cols, n): the operation, the three layouts
// and the algorithm its heuristic chose, made on the shape's first call and reused on every
// later one, so that the per-token path neither allocates descriptors nor asks the heuristic
// again. A model has a handful of shapes: 7 linear shapes x the batch sizes it meets.
struct CublasLt::Plan {
  const Api* api = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};

  Plan(const Api& lt, cublasLtHandle_t handle, uint64_t rows, uint64_t cols, uint64_t n,
       uint64_t workspace)
      : api(&lt) {
    try {
      lt_check(lt.desc_create(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
      const cublasOperation_t transpose = CUBLAS_OP_T;
      lt_check(lt.desc_set(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose),
               "transpose attribute");
      lt_check(lt.layout_create(&a, CUDA_R_16BF, cols, rows, int64_t(cols)), "layout");
      lt_check(lt.layout_create(&b, CUDA_R_16BF, cols, n, int64_t(cols)), "layout");
      lt_check(lt.layout_create(&c, CUDA_R_32F, rows, n, int64_t(rows)), "layout");
      cublasLtMatmulPreference_t pref = nullptr;
      lt_check(lt.pref_create(&pref), "preference");
      const cublasStatus_t s =
          lt.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace);
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t h = s != CUBLAS_STATUS_SUCCESS
                                   ? s
                                   : lt.heuristic(handle, op, a, b, c, c, pref, 1, &result, &found);
      lt.pref_destroy(pref);
      lt_check(h, "algorithm heuristic");
      if (found == 0)
        throw Error("cuBLASLt has no algorithm for a bf16 GEMM of " + std::to_string(rows) + " x " +
                    std::to_string(cols) + " by " + std::to_string(n) + " tokens");
      algo = result.algo;
    } catch (...) {
      release();
      throw;
    }
  }
  ~Plan() { release(); }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  void release() {
    for (cublasLtMatrixLayout_t* l : {&a, &b, &c})
      if (*l) api->layout_destroy(*l), *l = nullptr;
    if (op) api->desc_destroy(op), op = nullptr;
  }
};

// The memory at load (it counts against the cache's `auto` budget); the library at the first
// GEMM: INT4 decode never needs it, and a machine without libcublasLt.so runs that.
CublasLt::CublasLt(uint64_t max_activations) : max_activations_(max_activations) {
  CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  CUDA_CHECK(cudaMalloc(&x_bf16_, max_activations * sizeof(__nv_bfloat16)));
}

CublasLt::~CublasLt() {
  plans_.clear();  // before the library they call into is closed
  cudaFree(x_bf16_);
  cudaFree(workspace_);
  if (api_) api_->destroy(static_cast<cublasLtHandle_t>(handle_));
}

void CublasLt::load() {
  auto api = std::make_unique<Api>();
  cublasLtHandle_t h = nullptr;
  lt_check(api->create(&h), "cublasLtCreate");
  handle_ = h;
  api_ = std::move(api);
}

void CublasLt::matmul_bf16(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                           uint64_t n, float* y, CUstream_st* stream) {
  if (rows == 0 || n == 0) return;
  if (!api_) load();
  if (n * cols > max_activations_)
    throw Error("matmul_bf16_cuda: " + std::to_string(n) + " x " + std::to_string(cols) +
                " activations exceed the " + std::to_string(max_activations_) +
                " allocated at load");
  const uint64_t count = n * cols;
  auto* xb = static_cast<__nv_bfloat16*>(x_bf16_);
  to_bf16_kernel<<<uint32_t((count + 255) / 256), 256, 0, stream>>>(x, count, xb);
  CUDA_CHECK(cudaGetLastError());

  const auto handle = static_cast<cublasLtHandle_t>(handle_);
  std::unique_ptr<Plan>& plan = plans_[{rows, cols, n}];
  if (!plan) plan = std::make_unique<Plan>(*api_, handle, rows, cols, n, kWorkspaceBytes);
  const float one = 1.0f, zero = 0.0f;
  lt_check(api_->matmul(handle, plan->op, &one, w, plan->a, xb, plan->b, &zero, y, plan->c, y,
                        plan->c, &plan->algo, workspace_, kWorkspaceBytes, stream),
           "cublasLtMatmul");
}

}  // namespace ferry
