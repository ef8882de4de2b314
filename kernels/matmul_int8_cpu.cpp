// The CPU INT8 matrix product (contract in kernels/matmul_int8.hpp).
//
// Rows split over the pool; per row, up to kTile tokens go through the row together, so each
// weight byte is loaded and widened once per 8 tokens. Per block of 128 the codes are dotted with
// x in fp32 (the codes widen exactly to floats) and the block's dot is scaled once into the row's
// accumulator: acc += dot * scale, per block, as matvec_int8_cpu does. The AVX2 path keeps the
// dot and the accumulator in 8 lanes (one FMA chain per token, 8 independent chains per tile) and
// reduces the lanes once per row; the portable path sums scalars. Both are fixed-order per output,
// so results do not depend on the thread count.
#include <algorithm>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/simd.hpp"
#include "kernels/matmul_int8.hpp"

#if FERRY_X86
#include <immintrin.h>
#endif

namespace ferry {
namespace {

constexpr uint64_t kTile = 8;  // tokens per pass over a row
// A task gets at least this many weight-token products (kernels/matmul_cpu.cpp says why: ~10 us
// of work, above the cost of waking a worker).
constexpr uint64_t kMinWorkPerTask = 1ull << 18;

struct Call {
  Int8View w;
  const float* x;
  uint64_t n;
  float* y;
};

void rows_portable(const Call& c, uint64_t r0, uint64_t r1) {
  const uint64_t blocks = c.w.blocks(), cols = c.w.cols;
  for (uint64_t r = r0; r < r1; ++r)
    for (uint64_t t = 0; t < c.n; ++t) {
      const float* x = c.x + t * cols;
      float acc = 0;
      for (uint64_t b = 0; b < blocks; ++b) {
        const int8_t* q = c.w.q + (r * blocks + b) * kBlock;
        const uint64_t len = std::min(kBlock, cols - b * kBlock);
        float dot = 0;
        for (uint64_t i = 0; i < len; ++i) dot += float(q[i]) * x[b * kBlock + i];
        acc += dot * f16_to_float(c.w.scales[r * blocks + b]);
      }
      c.y[t * c.w.rows + r] = acc;
    }
}

#if FERRY_X86
__attribute__((target("avx2,fma,f16c"))) float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One row against tokens t0..t0+tn (tn <= kTile).
__attribute__((target("avx2,fma,f16c"))) void row_tile_avx2(const Call& c, uint64_t r, uint64_t t0,
                                                            uint64_t tn) {
  const uint64_t blocks = c.w.blocks(), cols = c.w.cols;
  __m256 acc[kTile];
  float tail[kTile] = {};
  for (uint64_t t = 0; t < tn; ++t) acc[t] = _mm256_setzero_ps();
  for (uint64_t b = 0; b < blocks; ++b) {
    const int8_t* q = c.w.q + (r * blocks + b) * kBlock;
    const uint64_t len = std::min(kBlock, cols - b * kBlock), full = len / 8 * 8;
    const float s = f16_to_float(c.w.scales[r * blocks + b]);
    const __m256 sv = _mm256_set1_ps(s);
    __m256 dot[kTile];
    for (uint64_t t = 0; t < tn; ++t) dot[t] = _mm256_setzero_ps();
    for (uint64_t i = 0; i < full; i += 8) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
      const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      for (uint64_t t = 0; t < tn; ++t)
        dot[t] =
            _mm256_fmadd_ps(w, _mm256_loadu_ps(c.x + (t0 + t) * cols + b * kBlock + i), dot[t]);
    }
    for (uint64_t t = 0; t < tn; ++t) {
      acc[t] = _mm256_fmadd_ps(dot[t], sv, acc[t]);
      float d = 0;  // a partial block's last len % 8 elements (x ends there)
      for (uint64_t i = full; i < len; ++i)
        d += float(q[i]) * c.x[(t0 + t) * cols + b * kBlock + i];
      tail[t] += d * s;
    }
  }
  for (uint64_t t = 0; t < tn; ++t) c.y[(t0 + t) * c.w.rows + r] = hsum(acc[t]) + tail[t];
}

void rows_avx2(const Call& c, uint64_t r0, uint64_t r1) {
  for (uint64_t t0 = 0; t0 < c.n; t0 += kTile)
    for (uint64_t r = r0; r < r1; ++r) row_tile_avx2(c, r, t0, std::min(kTile, c.n - t0));
}
#endif

}  // namespace

void matmul_int8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y,
                     KernelIsa isa) {
  if (w.rows == 0 || n == 0) return;
  const Call call{w, x, n, y};
  const bool avx2 = usable_isa(isa) == KernelIsa::avx2;
  const uint64_t grain = std::max<uint64_t>(1, kMinWorkPerTask / std::max<uint64_t>(1, w.cols * n));
  pool.parallel_for(w.rows, grain, [c = &call, avx2](uint64_t r0, uint64_t r1) {
#if FERRY_X86
    if (avx2) return rows_avx2(*c, r0, r1);
#endif
    (void)avx2;
    rows_portable(*c, r0, r1);
  });
}

void matmul_int8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y) {
  matmul_int8_cpu(pool, w, x, n, y, best_kernel_isa());
}

}  // namespace ferry
