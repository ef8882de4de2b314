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

void matvec_int4_cpu(const uint8_t* q, const uint16_t* scales, const uint16_t* mins, uint64_t rows,
                     uint64_t cols, const float* x, float* y) {
  const uint64_t blocks = int4_blocks_per_row(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    float acc = 0;
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint8_t* qb = q + (r * blocks + b) * kBlockBytes;
      const float* xb = x + b * kBlock;
      const uint64_t n = std::min(kBlock, cols - b * kBlock);  // padding elements are skipped
      float dot = 0, sum = 0;
      for (uint64_t i = 0; i < n; ++i) {
        const uint8_t byte = qb[i / 2];
        const float code = float((i & 1) ? byte >> 4 : byte & 15);
        dot += code * xb[i];
        sum += xb[i];
      }
      const float s = f16_to_float(scales[r * blocks + b]);
      acc += mins ? dot * s + f16_to_float(mins[r * blocks + b]) * sum : (dot - 8.0f * sum) * s;
    }
    y[r] = acc;
  }
}

}  // namespace ferry
