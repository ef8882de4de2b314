// Fused INT4 matrix-vector product on the GPU for decode (n = 1) and small batches (n <= 8):
// y[n, rows] = x[n, cols] · W^T, W packed as in format/int4.hpp. The CPU twin is
// matmul_int4_cpu (kernels/matmul.hpp); tests/test_gpu_kernels.cpp compares them.
//
// Decode is bound by reading W once: 0.5 byte per weight plus 4 bytes of scale (and min) per 128,
// 0.53-0.56 bytes per weight. One warp owns one output row; each lane loads 4 packed bytes (8
// codes) per step, so half a warp covers one 64-byte quantization block and a warp reads 128
// contiguous bytes per load instruction: fully coalesced; each lane issues 4 such loads before
// it uses the first (kLoadsInFlight). The n activations stay in L1/L2
// (a 5120-wide fp32 vector is 20 KB), so weights are the only DRAM stream.
//
// Each block's codes are dotted with x first and scaled once: s * sum(c x) + m * sum(x), with
// m = min (asym) or -8 s (sym), as the CPU twin does. Partial sums are reduced over the warp
// with shuffles; no shared memory, no atomics, so results do not depend on scheduling.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "base/error.hpp"
#include "format/int4.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"
#include "kernels/matmul.hpp"

namespace ferry {
namespace {

constexpr uint32_t kWarpsPerCta = 8;  // 8 rows per 256-thread CTA
// Blocks each lane loads before it uses any (4 x 4 bytes). With one load in flight a warp has
// 128 bytes outstanding: 64 resident warps x 128 B = 8 KB per SM, which at ~700 ns of DRAM
// latency sustains ~1.5 TB/s over an H100's 132 SMs, half its HBM. Four in flight at N = 1
// (40 registers: 48 resident warps): 24 KB per SM.
constexpr int kLoadsInFlight = 4;

struct LaneBlock {
  uint32_t codes;  // 8 codes of this lane, element i in bits 4i .. 4i+3
  float s, m;      // scale, and min (asym) or -8 s (sym)
};

__device__ LaneBlock load_block(const Int4View& w, const uint8_t* qrow, uint64_t row,
                                uint64_t blocks, uint64_t b, uint32_t lane) {
  LaneBlock k;
  k.codes = __ldg(reinterpret_cast<const unsigned int*>(qrow + b * kBlockBytes) + (lane % 16));
  k.s = cuda::f16_to_f32(__ldg(w.scales + row * blocks + b));
  k.m = w.mins ? cuda::f16_to_f32(__ldg(w.mins + row * blocks + b)) : -8.0f * k.s;
  return k;
}

// acc[t] += s * sum(c x) + m * sum(x) over this lane's 8 elements of block b.
template <int N>
__device__ void accumulate(const LaneBlock& k, uint64_t b, uint32_t lane, uint64_t cols,
                           const float* __restrict__ x, float* acc) {
  const uint64_t col = b * kBlock + (lane % 16) * 8;
#pragma unroll
  for (int t = 0; t < N; ++t) {
    const float* xt = x + uint64_t(t) * cols + col;
    float dot = 0.0f, sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (col + i < cols) {  // padding codes of the last block are skipped
        const float xv = xt[i];
        dot += float((k.codes >> (4 * i)) & 15u) * xv;
        sum += xv;
      }
    }
    acc[t] += k.s * dot + k.m * sum;
  }
}

template <int N>
__global__ void gemv_int4_kernel(const Int4View w, const float* __restrict__ x,
                                 float* __restrict__ y) {
  const uint64_t rows = w.rows, cols = w.cols;
  const uint64_t row = uint64_t(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= rows) return;
  const uint32_t lane = threadIdx.x % 32;
  const uint64_t blocks = w.blocks();
  const uint8_t* qrow = w.q + row * blocks * kBlockBytes;
  float acc[N];
#pragma unroll
  for (int t = 0; t < N; ++t) acc[t] = 0.0f;
  // Lanes 0-15 take blocks b, b+2, ..., lanes 16-31 b+1, b+3, ...; each lane 8 consecutive
  // elements of a block. The blocks are accumulated in the same order whether they come from the
  // batched loop or the tail, so the result does not depend on kLoadsInFlight.
  uint64_t b = lane / 16;
  for (; b + 2 * (kLoadsInFlight - 1) < blocks; b += 2 * kLoadsInFlight) {
    LaneBlock k[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      k[u] = load_block(w, qrow, row, blocks, b + 2 * u, lane);
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) accumulate<N>(k[u], b + 2 * u, lane, cols, x, acc);
  }
  for (; b < blocks; b += 2)
    accumulate<N>(load_block(w, qrow, row, blocks, b, lane), b, lane, cols, x, acc);
#pragma unroll
  for (int t = 0; t < N; ++t) {
    const float v = cuda::warp_sum(acc[t]);
    if (lane == 0) y[uint64_t(t) * rows + row] = v;
  }
}

template <int N>
void launch(const Int4View& w, const float* x, float* y, cudaStream_t stream) {
  const uint32_t grid = cuda::grid_for(w.rows, kWarpsPerCta);
  gemv_int4_kernel<N><<<grid, kWarpsPerCta * 32, 0, stream>>>(w, x, y);
}

}  // namespace

void matmul_int4_cuda(const Int4View& w, const float* x, uint64_t n, float* y,
                      CUstream_st* stream) {
  const uint64_t rows = w.rows, cols = w.cols;
  if (rows == 0 || n == 0) return;
  if (rows / kWarpsPerCta >= (1ull << 31))
    throw Error("matmul_int4_cuda: " + std::to_string(rows) + " rows exceed the grid limit");
  // Batches above 8 go through dequantization and the bf16 GEMM (prefill), where reading W once
  // per 8 tokens would waste the tensor cores; here they are split into groups of 8.
  for (uint64_t t0 = 0; t0 < n; t0 += 8) {
    const uint64_t k = n - t0 < 8 ? n - t0 : 8;
    const float* xk = x + t0 * cols;
    float* yk = y + t0 * rows;
    switch (k) {
      case 1:
        launch<1>(w, xk, yk, stream);
        break;
      case 2:
        launch<2>(w, xk, yk, stream);
        break;
      case 3:
        launch<3>(w, xk, yk, stream);
        break;
      case 4:
        launch<4>(w, xk, yk, stream);
        break;
      case 5:
        launch<5>(w, xk, yk, stream);
        break;
      case 6:
        launch<6>(w, xk, yk, stream);
        break;
      case 7:
        launch<7>(w, xk, yk, stream);
        break;
      default:
        launch<8>(w, xk, yk, stream);
        break;
    }
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace ferry
