// INT4 -> bf16 dequantization on the GPU; the CPU twin is kernels/dequant_cpu.cpp.
//
// Bit-exactness with the twin: the product and the sum are __fmul_rn and __fadd_rn, which nvcc
// never contracts into an FMA (it would contract a plain a * b + c), and the twin rounds each to
// fp32 too. sym adds -0.0f, the identity of fp32 addition, so one expression serves both layouts.
// The f16 -> f32 conversion is exact, and the bf16 rounding below is the integer formula of
// float_to_bf16 in base/dtype.hpp (cuda::f32_to_bf16).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <string>

#include "base/error.hpp"
#include "format/int4.hpp"
#include "format/int8.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"
#include "kernels/dequant.hpp"

namespace ferry {
namespace {

// Each thread dequantizes 4 packed bytes (8 elements): a 4-byte load and a 16-byte store, so a
// warp reads 128 contiguous bytes and writes 512. 16 threads cover one 128-element block, and a
// CUDA block of 256 threads covers 16 quantization blocks.
constexpr uint32_t kThreads = 256;
constexpr uint32_t kThreadsPerQuantBlock = kBlockBytes / 4;  // 16
constexpr uint32_t kQuantBlocksPerCta = kThreads / kThreadsPerQuantBlock;

// 4 packed bytes, little-endian: one 4-byte load when q is 4-byte aligned (every block starts at
// a multiple of 64 bytes from q), else byte by byte. __ldg: read-only path, which the __stcg
// below would otherwise keep nvcc from using.
__device__ uint32_t load_codes(const uint8_t* p) {
  if ((reinterpret_cast<uintptr_t>(p) & 3) == 0)
    return __ldg(reinterpret_cast<const unsigned int*>(p));
  return uint32_t(__ldg(p)) | uint32_t(__ldg(p + 1)) << 8 | uint32_t(__ldg(p + 2)) << 16 |
         uint32_t(__ldg(p + 3)) << 24;
}

// 8 bf16 values at out[0..n): one 16-byte store when all 8 are real and the address allows it
// (cols % 8 == 0 and an aligned buffer: every ferry weight), else element by element, so padding
// elements and odd row starts are handled without writing past the row. __stcg, not a plain
// uint4 assignment: nvcc 13 split that into four 4-byte stores (seen in the PTX for sm_90).
__device__ void store8(const uint16_t (&v)[8], uint16_t* out, uint64_t n) {
  if (n >= 8 && (reinterpret_cast<uintptr_t>(out) & 15) == 0) {
    const uint4 w =
        make_uint4(uint32_t(v[0]) | uint32_t(v[1]) << 16, uint32_t(v[2]) | uint32_t(v[3]) << 16,
                   uint32_t(v[4]) | uint32_t(v[5]) << 16, uint32_t(v[6]) | uint32_t(v[7]) << 16);
    __stcg(reinterpret_cast<uint4*>(out), w);
    return;
  }
  for (uint64_t i = 0; i < 8 && i < n; ++i) out[i] = v[i];
}

// This thread's 8 elements: quantization block qb (of the rows x blocks, flattened), its 8-element
// group t, and where they land in the [rows, cols] output. valid: false past the last block.
struct QuantSlot {
  uint32_t qb, t;
  uint64_t row, col;
  bool valid;
};

__device__ QuantSlot quant_slot(uint32_t blocks_per_row, uint32_t total_blocks) {
  QuantSlot s;
  s.qb = blockIdx.x * kQuantBlocksPerCta + threadIdx.x / kThreadsPerQuantBlock;
  s.valid = s.qb < total_blocks;
  s.t = threadIdx.x % kThreadsPerQuantBlock;
  s.row = s.qb / blocks_per_row;
  s.col = uint64_t(s.qb % blocks_per_row) * kBlock + 8 * s.t;
  return s;
}

// Layout in format/int4.hpp. Grid: the rows x blocks quantization blocks, flattened.
__global__ void dequant_int4_bf16_kernel(const Int4View w, uint32_t blocks_per_row,
                                         uint32_t total_blocks, uint16_t* __restrict__ out) {
  const uint64_t cols = w.cols;
  const auto [qb, t, row, col, valid] = quant_slot(blocks_per_row, total_blocks);
  if (!valid) return;
  if (col >= cols) return;  // a thread whose 8 elements are all padding
  const float scale = cuda::f16_to_f32(w.scales[qb]);
  const float min = w.mins ? cuda::f16_to_f32(w.mins[qb]) : -0.0f;
  const float offset = w.mins ? 0.0f : 8.0f;
  const uint32_t codes = load_codes(w.q + uint64_t(qb) * kBlockBytes + 4 * t);
  uint16_t v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float c = float((codes >> (4 * i)) & 15u) - offset;  // low nibble = even element
    v[i] = cuda::f32_to_bf16(__fadd_rn(__fmul_rn(c, scale), min));
  }
  store8(v, out + row * cols + col, cols - col);
}

// Layout in format/int8.hpp. Each thread dequantizes 8 codes (one 8-byte load): 16 threads per
// quantization block, as for INT4. The product is rounded once to fp32 (__fmul_rn), then to bf16,
// as dequant_int8_bf16_cpu does.
__global__ void dequant_int8_bf16_kernel(const Int8View w, uint32_t blocks_per_row,
                                         uint32_t total_blocks, uint16_t* __restrict__ out) {
  const uint64_t cols = w.cols;
  const auto [qb, t, row, col, valid] = quant_slot(blocks_per_row, total_blocks);
  if (!valid) return;
  if (col >= cols) return;
  const float scale = cuda::f16_to_f32(w.scales[qb]);
  const int8_t* q = w.q + uint64_t(qb) * kBlock + 8 * t;
  uint16_t v[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = cuda::f32_to_bf16(__fmul_rn(float(__ldg(q + i)), scale));
  store8(v, out + row * cols + col, cols - col);
}

}  // namespace

// One thread block per kQuantBlocksPerCta quantization blocks, for either view type.
template <typename View, typename Kernel>
void launch_dequant(const char* what, const View& w, uint64_t blocks_per_row, Kernel kernel,
                    uint16_t* out, CUstream_st* stream) {
  const uint64_t rows = w.rows, cols = w.cols;
  if (rows == 0 || cols == 0) return;
  const uint64_t total = rows * blocks_per_row;
  if (total > std::numeric_limits<uint32_t>::max() - kQuantBlocksPerCta)
    throw Error(std::string(what) + ": " + std::to_string(rows) + " x " + std::to_string(cols) +
                " weight has more than 2^32 quantization blocks");
  const auto grid = uint32_t((total + kQuantBlocksPerCta - 1) / kQuantBlocksPerCta);
  kernel<<<grid, kThreads, 0, stream>>>(w, uint32_t(blocks_per_row), uint32_t(total), out);
  CUDA_CHECK(cudaGetLastError());
}

void dequant_int8_bf16_cuda(const Int8View& w, uint16_t* out, CUstream_st* stream) {
  launch_dequant("dequant_int8_bf16_cuda", w, int8_blocks_per_row(w.cols), dequant_int8_bf16_kernel,
                 out, stream);
}

void dequant_int4_bf16_cuda(const Int4View& w, uint16_t* out, CUstream_st* stream) {
  launch_dequant("dequant_int4_bf16_cuda", w, int4_blocks_per_row(w.cols), dequant_int4_bf16_kernel,
                 out, stream);
}

}  // namespace ferry
