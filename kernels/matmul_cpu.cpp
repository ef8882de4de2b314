#include <vector>

#include "kernels/matmul.hpp"
#include "kernels/matvec.hpp"
#include "quantizer/int4.hpp"

namespace ferry {

// Plain version: the scalar matvec per row range and per input row.
void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y) {
  pool.parallel_for(rows, 16, [&](uint64_t r0, uint64_t r1) {
    std::vector<float> out(r1 - r0);
    for (uint64_t t = 0; t < n; ++t) {
      matvec_bf16_cpu(w + r0 * cols, r1 - r0, cols, x + t * cols, out.data());
      for (uint64_t r = r0; r < r1; ++r) y[t * rows + r] = out[r - r0];
    }
  });
}

void matmul_int4_cpu(CpuPool& pool, const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                     uint64_t rows, uint64_t cols, const float* x, uint64_t n, float* y) {
  const uint64_t blocks = int4_blocks_per_row(cols);
  pool.parallel_for(rows, 16, [&](uint64_t r0, uint64_t r1) {
    std::vector<float> out(r1 - r0);
    for (uint64_t t = 0; t < n; ++t) {
      matvec_int4_cpu(q + r0 * blocks * kBlockBytes, scales + r0 * blocks,
                      mins ? mins + r0 * blocks : nullptr, r1 - r0, cols, x + t * cols, out.data());
      for (uint64_t r = r0; r < r1; ++r) y[t * rows + r] = out[r - r0];
    }
  });
}

}  // namespace ferry
