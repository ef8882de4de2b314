// INT8 matrix-vector product on the GPU for decode (n = 1) and small batches (n <= 8):
// y[n, rows] = x[n, cols] · W^T, W laid out as in format/int8.hpp. The CPU twin is
// matmul_int8_cpu (kernels/matmul_int8.hpp); tests/test_gpu_kernels.cpp compares them.
//
// One warp owns one output row, as in kernels/gemv_int4.cu; each lane loads 4 codes (4 bytes) of
// a block, so a warp reads one whole 128-byte block per load instruction: fully coalesced. Per
// block a lane dots its 4 codes with x and scales the dot once (s * sum(c x), the CPU twin's
// order per block); the lanes' partial sums are reduced with shuffles at the end: no shared
// memory, no atomics, results independent of scheduling. The bias and the residual add are
// applied in the store (gemv_int8_fused_cuda, kernels/gemv_fused.hpp). 1.016 bytes per weight:
// decode of an INT8 weight is twice the bytes of INT4's, which is why only lm_head is INT8 by
// default.
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

// y = W x (+ bias), or y += W x (+ bias) with `add`: the epilogue of kernels/gemv_fused.hpp.
template <int N>
__global__ void gemv_int8_kernel(const Int8View w, const float* __restrict__ x,
                                 float* __restrict__ y, const uint16_t* __restrict__ bias,
                                 bool add) {
  const uint64_t rows = w.rows, cols = w.cols;
  const uint64_t row = uint64_t(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= rows) return;
  const uint32_t lane = threadIdx.x % 32;
  const uint64_t blocks = w.blocks();
  float acc[N];
#pragma unroll
  for (int t = 0; t < N; ++t) acc[t] = 0.0f;
  for (uint64_t b = 0; b < blocks; ++b) {
    // Blocks start at multiples of 128 bytes from q (cudaMalloc'd or an aligned cache entry).
    const uint32_t codes =
        __ldg(reinterpret_cast<const unsigned int*>(w.q + (row * blocks + b) * kBlock) + lane);
    const float s = cuda::f16_to_f32(__ldg(w.scales + row * blocks + b));
    const uint64_t col = b * kBlock + lane * 4;
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float* xt = x + uint64_t(t) * cols + col;
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (col + i < cols) dot += float(int8_t((codes >> (8 * i)) & 0xffu)) * xt[i];
      acc[t] += s * dot;
    }
  }
#pragma unroll
  for (int t = 0; t < N; ++t) {
    float v = cuda::warp_sum(acc[t]);
    if (lane != 0) continue;
    if (bias) v += cuda::bf16_to_f32(bias[row]);
    float& out = y[uint64_t(t) * rows + row];
    out = add ? out + v : v;
  }
}

template <int N>
void launch(const Int8View& w, const float* x, float* y, const uint16_t* bias, bool add,
            cudaStream_t stream) {
  const uint32_t grid = cuda::grid_for(w.rows, kWarpsPerCta);
  gemv_int8_kernel<N><<<grid, kWarpsPerCta * 32, 0, stream>>>(w, x, y, bias, add);
}

}  // namespace

void matmul_int8_cuda(const Int8View& w, const float* x, uint64_t n, float* y,
                      CUstream_st* stream) {
  gemv_int8_fused_cuda(w, nullptr, x, n, y, GemvStore::set, stream);
}

void gemv_int8_fused_cuda(const Int8View& w, const uint16_t* bias, const float* x, uint64_t n,
                          float* y, GemvStore store, CUstream_st* stream) {
  const bool add = store == GemvStore::add;
  const uint64_t rows = w.rows, cols = w.cols;
  if (rows == 0 || n == 0) return;
  if (rows / kWarpsPerCta >= (1ull << 31))
    throw Error("matmul_int8_cuda: " + std::to_string(rows) + " rows exceed the grid limit");
  for (uint64_t t0 = 0; t0 < n; t0 += 8) {
    const uint64_t k = n - t0 < 8 ? n - t0 : 8;
    const float* xk = x + t0 * cols;
    float* yk = y + t0 * rows;
    switch (k) {
      case 1:
        launch<1>(w, xk, yk, bias, add, stream);
        break;
      case 2:
        launch<2>(w, xk, yk, bias, add, stream);
        break;
      case 3:
        launch<3>(w, xk, yk, bias, add, stream);
        break;
      case 4:
        launch<4>(w, xk, yk, bias, add, stream);
        break;
      case 5:
        launch<5>(w, xk, yk, bias, add, stream);
        break;
      case 6:
        launch<6>(w, xk, yk, bias, add, stream);
        break;
      case 7:
        launch<7>(w, xk, yk, bias, add, stream);
        break;
      default:
        launch<8>(w, xk, yk, bias, add, stream);
        break;
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
