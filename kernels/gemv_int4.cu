// The entry points of the fused INT4 GEMV on the GPU for decode (n = 1) and small batches
// (n <= 8), declared in kernels/gemv_fused.hpp and kernels/matmul.hpp: their checks, the grid,
// and the split of a batch into launches of up to 8 tokens. The kernel, its design and its
// launchers are in kernels/gemv_int4_kernel.cuh.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "base/error.hpp"
#include "format/int4.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/gemv_int4_kernel.cuh"
#include "kernels/matmul.hpp"

namespace ferry {
namespace {

// 32-bit offsets: codes (and the scale index times 64) below 2^31 bytes, a 4B-parameter
// matrix; the largest weight of a 32B model is a 152064 x 5120 lm_head, 0.4 GB of codes.
void check_offsets(const Int4View& w, const char* what) {
  if (int4_code_bytes(w.rows, w.cols) >= (1ull << 31) || w.cols >= (1ull << 31))
    throw Error(std::string(what) + ": a " + std::to_string(w.rows) + " x " +
                std::to_string(w.cols) +
                " weight exceeds the kernel's 32-bit offsets (2 GB of codes)");
}

// Batches above 8 go through dequantization and the bf16 GEMM in the forward pass (prefill),
// where reading W once per 8 tokens would waste the tensor cores; here they are split into
// launches of 8 tokens.
template <bool PAIRED>
void launch_groups(gemv_int4::GemvLaunch a, const float* x, uint64_t n, GemvX xq,
                   cudaStream_t stream) {
  const uint64_t cols = a.w[0].cols;
  float* y0[kGemvMaxParts] = {a.y[0], a.y[1], a.y[2]};
  for (uint64_t t0 = 0; t0 < n; t0 += 8) {
    for (uint32_t p = 0; p < (PAIRED ? 1 : a.grid.parts); ++p) a.y[p] = y0[p] + t0 * a.w[p].rows;
    const uint64_t k = n - t0 < 8 ? n - t0 : 8;
    if (xq == GemvX::q8)
      gemv_int4::launch_q8(a, x + t0 * cols, k, PAIRED, stream);
    else
      gemv_int4::launch_f32(a, x + t0 * cols, k, PAIRED, stream);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void gemv_int4_fused_cuda(const GemvOut* outs, size_t parts, const float* x, uint64_t n,
                          GemvStore store, GemvX xq, CUstream_st* stream, uint32_t max_ctas) {
  if (parts == 0 || parts > kGemvMaxParts)
    throw Error("gemv_int4_fused_cuda: " + std::to_string(parts) + " outputs, expected 1 to " +
                std::to_string(kGemvMaxParts));
  gemv_int4::GemvLaunch a{};
  uint64_t rows[kGemvMaxParts] = {};
  for (size_t p = 0; p < parts; ++p) {
    if (outs[p].w.cols != outs[0].w.cols)
      throw Error("gemv_int4_fused_cuda: weights of " + std::to_string(outs[p].w.cols) + " and " +
                  std::to_string(outs[0].w.cols) + " columns cannot share one x");
    check_offsets(outs[p].w, "gemv_int4_fused_cuda");
    a.w[p] = outs[p].w;
    a.y[p] = outs[p].y;
    a.bias[p] = outs[p].bias;
    rows[p] = outs[p].w.rows;
  }
  if (n == 0 || outs[0].w.cols == 0) return;
  for (size_t p = 1; p < kGemvMaxParts; ++p)  // unused slots repeat part 0 (never selected)
    if (p >= parts) a.w[p] = a.w[0];
  a.grid = gemv_grid(rows, uint32_t(parts), false);
  a.add = store == GemvStore::add;
  a.max_ctas = max_ctas;
  if (a.grid.ctas() > 0) launch_groups<false>(a, x, n, xq, stream);
}

void gemv_int4_silu_mul_cuda(const Int4View& gate, const Int4View& up, const float* x, uint64_t n,
                             float* out, GemvX xq, CUstream_st* stream, uint32_t max_ctas) {
  if (gate.rows != up.rows || gate.cols != up.cols)
    throw Error("gemv_int4_silu_mul_cuda: gate and up differ in shape");
  check_offsets(gate, "gemv_int4_silu_mul_cuda");
  if (n == 0 || gate.rows == 0 || gate.cols == 0) return;
  gemv_int4::GemvLaunch a{};
  a.w[0] = gate;
  a.w[1] = a.w[2] = up;
  a.y[0] = out;
  const uint64_t rows[2] = {gate.rows, up.rows};
  a.grid = gemv_grid(rows, 2, true);
  a.max_ctas = max_ctas;
  launch_groups<true>(a, x, n, xq, stream);
}

void matmul_int4_cuda(const Int4View& w, const float* x, uint64_t n, float* y,
                      CUstream_st* stream) {
  const GemvOut out{w, y, nullptr};
  gemv_int4_fused_cuda(&out, 1, x, n, GemvStore::set, GemvX::f32, stream);
}

void matmul_int4_q8_cuda(const Int4View& w, const float* x, uint64_t n, float* y,
                         CUstream_st* stream) {
  const GemvOut out{w, y, nullptr};
  gemv_int4_fused_cuda(&out, 1, x, n, GemvStore::set, GemvX::q8, stream);
}

}  // namespace ferry
