// The scalar reference products: the plainest reading of the format/int4.hpp contract, one row
// after another, against which tests check the vectorized CPU kernels (kernels/matmul_cpu.cpp).
#include <algorithm>

#include "base/dtype.hpp"
#include "format/int4.hpp"
#include "kernels/matvec.hpp"

namespace ferry {

void matvec_bf16_cpu(const uint16_t* w, uint64_t rows, uint64_t cols, const float* x, float* y) {
  for (uint64_t r = 0; r < rows; ++r) {
    const uint16_t* row = w + r * cols;
    float acc = 0;
    for (uint64_t c = 0; c < cols; ++c) acc += bf16_to_float(row[c]) * x[c];
    y[r] = acc;
  }
}

void matvec_int4_cpu(const Int4View& w, const float* x, float* y) {
  const uint64_t blocks = w.blocks(), cols = w.cols;
  for (uint64_t r = 0; r < w.rows; ++r) {
    float acc = 0;
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint8_t* qb = w.q + (r * blocks + b) * kBlockBytes;
      const float* xb = x + b * kBlock;
      const uint64_t n = std::min(kBlock, cols - b * kBlock);  // padding elements are skipped
      float dot = 0, sum = 0;
      for (uint64_t i = 0; i < n; ++i) {
        const float code = float(int4_code(qb, i));
        dot += code * xb[i];
        sum += xb[i];
      }
      const float s = f16_to_float(w.scales[r * blocks + b]);
      acc += w.mins ? dot * s + f16_to_float(w.mins[r * blocks + b]) * sum : (dot - 8.0f * sum) * s;
    }
    y[r] = acc;
  }
}

void matvec_int8_cpu(const Int8View& w, const float* x, float* y) {
  const uint64_t blocks = w.blocks(), cols = w.cols;
  for (uint64_t r = 0; r < w.rows; ++r) {
    float acc = 0;
    for (uint64_t b = 0; b < blocks; ++b) {
      const int8_t* qb = w.q + (r * blocks + b) * kBlock;
      const uint64_t n = std::min(kBlock, cols - b * kBlock);  // padding elements are skipped
      float dot = 0;
      for (uint64_t i = 0; i < n; ++i) dot += float(qb[i]) * x[b * kBlock + i];
      acc += dot * f16_to_float(w.scales[r * blocks + b]);
    }
    y[r] = acc;
  }
}

}  // namespace ferry
