// CPU twins of the INT4 -> bf16 dequantization kernel (kernels/dequant.cu).
//
// Bit-exactness with the CUDA kernel: the value is (code - 8) * scale (sym) or code * scale + min
// (asym), with the product and the sum each rounded to fp32, never fused into an FMA. Here the
// product and the sum are separate statements: ferry compiles in ISO C++ mode (-std=c++20, no
// GNU extensions), where g++ defaults to -ffp-contract=off, and clang only contracts within one
// expression (and neither the default x86-64 target nor FERRY_TARGET_AVX2 enables FMA). The CUDA
// kernel uses __fmul_rn and __fadd_rn, which nvcc never contracts.
#include <algorithm>
#include <array>

#include "base/dtype.hpp"
#include "base/simd.hpp"
#include "format/int4.hpp"
#include "kernels/dequant.hpp"

namespace ferry {
namespace {

// Dequantizes one block of 64 bytes into 128 floats. Unpacking the nibbles into a byte array
// first and converting in a second loop lets g++ -O2 vectorize both loops (fixed trip counts);
// the one-loop form (two floats per byte) did not vectorize and ran at half the speed.
FERRY_ALWAYS_INLINE void dequant_block_body(const uint8_t* q, float scale, float min, float offset,
                                            float* out) {
  alignas(32) std::array<uint8_t, kBlock> codes;  // [kBlock] low nibble = even element
  for (uint64_t j = 0; j < kBlockBytes; ++j) {    // nibble order: format/int4.hpp
    codes[2 * j] = q[j] & 15;
    codes[2 * j + 1] = q[j] >> 4;
  }
  for (uint64_t i = 0; i < kBlock; ++i) {
    const float p = (float(codes[i]) - offset) * scale;
    out[i] = p + min;
  }
}

FERRY_ALWAYS_INLINE void to_bf16_block_body(const float* in, uint16_t* out) {
  for (uint64_t i = 0; i < kBlock; ++i) out[i] = float_to_bf16(in[i]);
}

// Each compiled twice (base/simd.hpp), the AVX2 one chosen once per call.
void dequant_block_portable(const uint8_t* q, float scale, float min, float offset, float* out) {
  dequant_block_body(q, scale, min, offset, out);
}
FERRY_TARGET_AVX2 void dequant_block_avx2(const uint8_t* q, float scale, float min, float offset,
                                          float* out) {
  dequant_block_body(q, scale, min, offset, out);
}
void to_bf16_block_portable(const float* in, uint16_t* out) {
  to_bf16_block_body(in, out);
}
FERRY_TARGET_AVX2 void to_bf16_block_avx2(const float* in, uint16_t* out) {
  to_bf16_block_body(in, out);
}
void to_bf16_block(const float* in, uint16_t* out, bool avx2) {
  avx2 ? to_bf16_block_avx2(in, out) : to_bf16_block_portable(in, out);
}

// Calls emit(at, values, n) for every block: values [128] floats, of which the first n are real
// elements, to go to out[at, at + n).
template <class Emit>
void for_each_block(const Int4View& w, Emit emit) {
  const uint8_t* q = w.q;
  const uint16_t *scales = w.scales, *mins = w.mins;
  const uint64_t rows = w.rows, cols = w.cols, blocks = w.blocks();
  // sym: x + (-0.0f) == x for every x, -0 included (+0 would turn a -0 product into +0), so
  // (code - 8) * scale + -0 is exactly the contract's (code - 8) * scale and one loop serves both.
  const float offset = mins ? 0.0f : 8.0f;
  alignas(32) std::array<float, kBlock> buf;
  const bool avx2 = isa_has_avx2(best_kernel_isa());
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t k = 0; k < blocks; ++k) {
      const uint64_t i = r * blocks + k;
      const float scale = f16_to_float(scales[i]);
      const float min = mins ? f16_to_float(mins[i]) : -0.0f;
      (avx2 ? dequant_block_avx2 : dequant_block_portable)(q + i * kBlockBytes, scale, min, offset,
                                                           buf.data());
      emit(r * cols + k * kBlock, buf.data(), std::min(kBlock, cols - k * kBlock));
    }
  }
}

}  // namespace

void dequant_int4_f32_cpu(const Int4View& w, float* out) {
  for_each_block(w,
                 [out](uint64_t at, const float* v, uint64_t n) { std::copy(v, v + n, out + at); });
}

void dequant_int4_bf16_cpu(const Int4View& w, uint16_t* out) {
  alignas(32) std::array<uint16_t, kBlock> tail;
  const bool avx2 = isa_has_avx2(best_kernel_isa());
  for_each_block(w, [out, &tail, avx2](uint64_t at, const float* v, uint64_t n) {
    if (n == kBlock) return to_bf16_block(v, out + at, avx2);
    to_bf16_block(v, tail.data(), avx2);  // a partial block: padding elements are not written
    std::copy(tail.data(), tail.data() + n, out + at);
  });
}

void dequant_int8_f32_cpu(const Int8View& w, float* out) {
  const uint64_t blocks = w.blocks();
  for (uint64_t r = 0; r < w.rows; ++r)
    for (uint64_t c = 0; c < w.cols; ++c) {
      const uint64_t b = r * blocks + c / kBlock;
      out[r * w.cols + c] = float(w.q[b * kBlock + c % kBlock]) * f16_to_float(w.scales[b]);
    }
}

void dequant_int8_bf16_cpu(const Int8View& w, uint16_t* out) {
  const uint64_t blocks = w.blocks();
  for (uint64_t r = 0; r < w.rows; ++r)
    for (uint64_t b = 0; b < blocks; ++b) {
      const int8_t* q = w.q + (r * blocks + b) * kBlock;
      const float s = f16_to_float(w.scales[r * blocks + b]);
      const uint64_t n = std::min(kBlock, w.cols - b * kBlock);
      uint16_t* o = out + r * w.cols + b * kBlock;
      for (uint64_t i = 0; i < n; ++i) o[i] = float_to_bf16(float(q[i]) * s);
    }
}

}  // namespace ferry
