// INT8 matrix-vector product on the GPU for decode (n = 1) and small batches (n <= 8):
// y[n, rows] = x[n, cols] · W^T, W laid out as in format/int8.hpp. The CPU twin is
// matmul_int8_cpu (kernels/matmul_int8.hpp); tests/test_gpu_kernels.cpp compares them.
//
// One warp owns one output row. Each lane loads 16 codes (16 bytes) at a time, so a warp reads 4
// blocks (512 contiguous bytes) per load instruction, and 2 such loads are issued before either
// is used (1 KB a warp in flight). The first version (4 bytes a lane, one block a warp per load,
// one load in flight) ran at 29 us a launch for Qwen2-7B's 512 x 3584 v_proj (1.8 MB: 63 GB/s)
// in ncu on the H200 (9% of a resident decode token's kernel time with the INT8 lm_head). x is
// read from global memory (L1-resident: 14-20 KB at Qwen2's widths) with 16-byte loads where
// aligned. Per block a lane dots its 16 codes with x and scales the dot once (s * sum(c x), the
// CPU twin's per-block scaling); the lanes' partial sums are reduced with shuffles at the end: no
// shared memory, no atomics, results independent of scheduling. The bias and the residual add
// are applied in the store, and up to three weights of one input (the default INT8 k_proj and
// v_proj) share a launch (gemv_int8_fused_cuda, kernels/gemv_fused.hpp). 1.016 bytes per
// weight: decode of an INT8 weight is twice the bytes of INT4's, which is why only lm_head,
// k_proj and v_proj are INT8 by default.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "base/error.hpp"
#include "format/int8.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul_int8.hpp"

namespace ferry {
namespace {

constexpr uint32_t kWarpsPerCta = 8;  // 8 rows per 256-thread CTA
constexpr uint32_t kLaneCodes = 16;   // codes a lane loads at once: a warp covers 4 blocks
constexpr uint32_t kBlocksPerLoad = 32 * kLaneCodes / kBlock;
constexpr uint32_t kLoadsInFlight = 2;

// Word j (0..3) of a lane's 16 codes, by selects, not an indexed local array.
__device__ __forceinline__ uint32_t code_word(const uint4& c, int j) {
  return j == 0 ? c.x : j == 1 ? c.y : j == 2 ? c.z : c.w;
}

// sum over i < 16 of code i * x[i], codes as 16 signed bytes. VEC: x[0..15] are 4 aligned float4
// (cols a multiple of 4, x 16-byte aligned) inside the row; otherwise each element is checked
// against `left`, the columns from x to the row's end (the last, partial block).
template <bool VEC>
__device__ __forceinline__ float dot16(const uint4& c, const float* x, uint32_t left) {
  float d = 0.0f;
  if (VEC && left >= kLaneCodes) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(x) + j);
      const uint32_t w = code_word(c, j);
      d = fmaf(float(int8_t(w)), v.x, d);
      d = fmaf(float(int8_t(w >> 8)), v.y, d);
      d = fmaf(float(int8_t(w >> 16)), v.z, d);
      d = fmaf(float(int8_t(w >> 24)), v.w, d);
    }
    return d;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t w = code_word(c, j);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (uint32_t(4 * j + k) < left)
        d = fmaf(float(int8_t(w >> (8 * k))), __ldg(x + 4 * j + k), d);
  }
  return d;
}

// Up to three weights of one launch (GemvOut8), field by field: part p's rows are CTAs
// cta_end[p - 1] .. cta_end[p] - 1, 8 rows a CTA, so every CTA (and warp) serves one weight.
// Passed by value; the kernel picks its part's fields with selects (pick), from the parameter
// bank. (Selecting whole Int8Views cost a stack slot in the 7-token kernel, sass_check found.)
struct Int8Parts {
  const int8_t* q[kGemvMaxParts];
  const uint16_t* scales[kGemvMaxParts];
  float* y[kGemvMaxParts];
  const uint16_t* bias[kGemvMaxParts];
  uint32_t rows[kGemvMaxParts];
  uint32_t cta_end[kGemvMaxParts];
  uint32_t cols;  // every part's
};

template <class T>
__device__ __forceinline__ T pick(const T (&a)[kGemvMaxParts], uint32_t p) {
  return p == 0 ? a[0] : p == 1 ? a[1] : a[2];
}

// y = W x (+ bias), or y += W x (+ bias) with `add`: the epilogue of kernels/gemv_fused.hpp.
// 32-bit offsets within a row (the launcher checks); rows beyond 2^32 cannot be launched anyway.
// token: the per-token launches of the element-by-element path (token t reads x + t * cols and
// writes y + t * rows of each part; 0 in the batched kernel).
template <int N, bool VEC>
__global__ void __launch_bounds__(kWarpsPerCta * 32)
    gemv_int8_kernel(const Int8Parts parts, const float* __restrict__ x, uint32_t token, bool add) {
  const uint32_t cta = blockIdx.x;
  const uint32_t p = cta < parts.cta_end[0] ? 0 : cta < parts.cta_end[1] ? 1 : 2;
  const uint32_t first = p == 0 ? 0 : p == 1 ? parts.cta_end[0] : parts.cta_end[1];
  const uint32_t rows = pick(parts.rows, p), cols = parts.cols;
  const uint32_t row = (cta - first) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= rows) return;
  const uint16_t* __restrict__ bias = pick(parts.bias, p);
  float* __restrict__ y = pick(parts.y, p) + size_t(token) * rows;
  x += size_t(token) * cols;
  const uint32_t lane = threadIdx.x % 32, blocks = uint32_t(int8_blocks_per_row(cols));
  // Lane l takes codes [16 (l % 8), +16) of block 4k + l / 8 in load k.
  const uint8_t* q = reinterpret_cast<const uint8_t*>(pick(parts.q, p)) +
                     size_t(row) * blocks * kBlock + (lane / 8) * kBlock + (lane % 8) * kLaneCodes;
  const uint16_t* scales = pick(parts.scales, p) + size_t(row) * blocks + lane / 8;
  const uint32_t col0 = (lane / 8) * kBlock + (lane % 8) * kLaneCodes;
  float acc[N];
#pragma unroll
  for (int t = 0; t < N; ++t) acc[t] = 0.0f;
  constexpr uint32_t kStep = kBlocksPerLoad * kLoadsInFlight;
  for (uint32_t b0 = 0; b0 < blocks; b0 += kStep) {
    uint4 c[kLoadsInFlight];
    float s[kLoadsInFlight];
#pragma unroll
    for (uint32_t u = 0; u < kLoadsInFlight; ++u) {
      const uint32_t b = b0 + u * kBlocksPerLoad;  // this load's first block
      const bool in_row = b + lane / 8 < blocks;
      c[u] = in_row ? __ldg(reinterpret_cast<const uint4*>(q + size_t(b) * kBlock))
                    : make_uint4(0, 0, 0, 0);
      s[u] = in_row ? cuda::f16_to_f32(__ldg(scales + b)) : 0.0f;
    }
#pragma unroll
    for (uint32_t u = 0; u < kLoadsInFlight; ++u) {
      const uint32_t col = (b0 + u * kBlocksPerLoad) * kBlock + col0;
      if (col >= cols) continue;  // past the row (or in its last block's padding)
#pragma unroll
      for (int t = 0; t < N; ++t)
        acc[t] = fmaf(s[u], dot16<VEC>(c[u], x + size_t(t) * cols + col, cols - col), acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < N; ++t) {
    float v = cuda::warp_sum(acc[t]);
    if (lane != 0) continue;
    if (bias) v += cuda::bf16_to_f32(bias[row]);
    float& out = y[size_t(t) * rows + row];
    out = add ? out + v : v;
  }
}

// The parts of tokens [t0, t0 + N): x and every y advanced to token t0.
template <int N>
void launch(const Int8Parts& parts, size_t count, uint64_t cols, const float* x, bool add,
            cudaStream_t stream) {
  const uint32_t grid = parts.cta_end[count - 1];
  if (cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    gemv_int8_kernel<N, true><<<grid, kWarpsPerCta * 32, 0, stream>>>(parts, x, 0, add);
    return;
  }
  // x read element by element (odd widths, unaligned x: no model's decode): a launch per token,
  // each token's sums the same as in a batch (the 7-token kernel spilled here, sass_check found).
  for (int t = 0; t < N; ++t)
    gemv_int8_kernel<1, false><<<grid, kWarpsPerCta * 32, 0, stream>>>(parts, x, uint32_t(t), add);
}

}  // namespace

void matmul_int8_cuda(const Int8View& w, const float* x, uint64_t n, float* y,
                      CUstream_st* stream) {
  const GemvOut8 out{w, y, nullptr};
  gemv_int8_fused_cuda(&out, 1, x, n, GemvStore::set, stream);
}

void gemv_int8_fused_cuda(const GemvOut8* outs, size_t count, const float* x, uint64_t n,
                          GemvStore store, CUstream_st* stream) {
  if (count == 0 || count > kGemvMaxParts)
    throw Error("gemv_int8_fused_cuda: 1 to 3 weights a launch, got " + std::to_string(count));
  const bool add = store == GemvStore::add;
  const uint64_t cols = outs[0].w.cols;
  Int8Parts parts{};
  uint64_t ctas = 0;
  for (size_t p = 0; p < count; ++p) {
    const Int8View& w = outs[p].w;
    if (w.cols != cols) throw Error("gemv_int8_fused_cuda: the weights differ in width");
    ctas += (w.rows + kWarpsPerCta - 1) / kWarpsPerCta;
    if (ctas >= (1ull << 31) || w.rows >= (1ull << 32) || cols >= (1ull << 31))
      throw Error("gemv_int8_fused_cuda: a " + std::to_string(w.rows) + " x " +
                  std::to_string(cols) +
                  " weight exceeds the kernel's 32-bit grid and column offsets");
    parts.q[p] = w.q;
    parts.scales[p] = w.scales;
    parts.rows[p] = uint32_t(w.rows);
    parts.bias[p] = outs[p].bias;
    parts.cta_end[p] = uint32_t(ctas);
  }
  for (size_t p = count; p < kGemvMaxParts; ++p) parts.cta_end[p] = uint32_t(ctas);
  parts.cols = uint32_t(cols);
  if (ctas == 0 || n == 0) return;
  for (uint64_t t0 = 0; t0 < n; t0 += 8) {
    const uint64_t k = n - t0 < 8 ? n - t0 : 8;
    for (size_t p = 0; p < count; ++p) parts.y[p] = outs[p].y + t0 * outs[p].w.rows;
    const float* xk = x + t0 * cols;
    switch (k) {
      case 1:
        launch<1>(parts, count, cols, xk, add, stream);
        break;
      case 2:
        launch<2>(parts, count, cols, xk, add, stream);
        break;
      case 3:
        launch<3>(parts, count, cols, xk, add, stream);
        break;
      case 4:
        launch<4>(parts, count, cols, xk, add, stream);
        break;
      case 5:
        launch<5>(parts, count, cols, xk, add, stream);
        break;
      case 6:
        launch<6>(parts, count, cols, xk, add, stream);
        break;
      case 7:
        launch<7>(parts, count, cols, xk, add, stream);
        break;
      default:
        launch<8>(parts, count, cols, xk, add, stream);
        break;
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
