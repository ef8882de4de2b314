// Activations quantized to INT8 per block of 128, for the integer-SIMD CPU products
// (matmul_int4_q8_cpu in kernels/matmul_cpu.cpp, matmul_int8_q8_cpu in
// kernels/matmul_int8_cpu.cpp): x ~= d * q with d = max|x| / 127 and q = round(x / d) in [-127,
// 127], half to even (as the AVX2 conversion would round), so |x - d q| <= d / 2 per element.
// Scalar and shared by every path, so that all see the same q: a pure function of the block.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace ferry {

// Quantizes x[0, len) (len <= 128) into q[0, 128), zeros past len; returns d (0 for a zero block).
// q[e] of element e lands at q[pos(e)], so a kernel can ask for its own layout.
template <class Pos>
inline float quantize_block_q8(const float* x, uint64_t len, int8_t* q, int32_t* qsum, Pos pos) {
  float amax = 0.0f;
  for (uint64_t e = 0; e < len; ++e) amax = std::max(amax, std::fabs(x[e]));
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (uint64_t e = 0; e < 128; ++e) {
    const float v = e < len ? x[e] * inv : 0.0f;
    const int8_t c = int8_t(std::clamp(std::nearbyint(v), -127.0f, 127.0f));
    q[pos(e)] = c;
    sum += c;
  }
  if (qsum) *qsum = sum;
  return amax / 127.0f;
}

}  // namespace ferry
