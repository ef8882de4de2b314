// CPU matrix products over ferry's weight formats (contract in kernels/matmul.hpp).
//
// Work splits over output rows: each y element is computed by one thread, start to end, in a
// fixed order, so results are bit-identical for every thread count and every batch split (a
// token's sums do not depend on which other tokens share its tile). Within a row, up to kTile
// tokens are processed together, so each weight byte is loaded (and, for INT4, unpacked) once
// per kTile tokens: decode (n = 1) is bound by reading the weights, prefill by arithmetic.
//
// INT4: a block's 128 codes are dotted with x in fp32 vectors, scaled once per block, and the
// offset term (min, or -8 * scale for sym) multiplies the block sum of x, computed once per call
// and token rather than once per row.
#include <immintrin.h>

#include <algorithm>

#include "kernels/matmul.hpp"
#include "quantizer/dtype.hpp"
#include "quantizer/error.hpp"
#include "quantizer/int4.hpp"

namespace ferry {
namespace {

constexpr uint64_t kTile = 4;         // tokens per pass over a weight row
constexpr uint64_t kMaxBlocks = 512;  // cols up to 65,536 (Llama-70B's widest: 28,672)
// A task gets at least this many weight-token products: ~50 us of work, well above the ~10 us it
// takes to wake a pool thread. Small matrices (TinyStories' 128 x 384) then run on the caller
// alone: with a thread per 64 rows they spent more time waking threads than computing.
constexpr uint64_t kMinWorkPerTask = 1ull << 18;

uint64_t row_grain(uint64_t cols, uint64_t n) {
  return std::max<uint64_t>(1, kMinWorkPerTask / std::max<uint64_t>(1, cols * n));
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

struct Int4Args {
  const uint8_t* q;
  const uint16_t* scales;
  const uint16_t* mins;
  uint64_t rows, cols, blocks;
};

// sums[t][b] = sum of x[t] over block b (padding excluded).
void block_sums(const float* x, uint64_t tn, uint64_t cols, uint64_t blocks,
                float (&sums)[kTile][kMaxBlocks]) {
  for (uint64_t t = 0; t < tn; ++t)
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t end = std::min(cols, (b + 1) * kBlock);
      float s = 0;
      for (uint64_t i = b * kBlock; i < end; ++i) s += x[t * cols + i];
      sums[t][b] = s;
    }
}

// The offset of block b of row r: min for asym, -8 * scale for sym (codes are stored + 8).
float block_offset(const Int4Args& a, uint64_t r, uint64_t b, float scale) {
  return a.mins ? f16_to_float(a.mins[r * a.blocks + b]) : -8.0f * scale;
}

// Portable path: one row, tn tokens. Partial last blocks stop at cols.
void int4_row_portable(const Int4Args& a, uint64_t r, const float* x, uint64_t tn,
                       const float (&sums)[kTile][kMaxBlocks], float* y) {
  float acc[kTile] = {};
  for (uint64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* qb = a.q + (r * a.blocks + b) * kBlockBytes;
    const uint64_t len = std::min(kBlock, a.cols - b * kBlock);
    const float s = f16_to_float(a.scales[r * a.blocks + b]), m = block_offset(a, r, b, s);
    for (uint64_t t = 0; t < tn; ++t) {
      const float* xb = x + t * a.cols + b * kBlock;
      float dot = 0;
      for (uint64_t i = 0; i < len; ++i) dot += float((qb[i / 2] >> (4 * (i & 1))) & 15) * xb[i];
      acc[t] += s * dot + m * sums[t][b];
    }
  }
  for (uint64_t t = 0; t < tn; ++t) y[t * a.rows + r] = acc[t];
}

__attribute__((target("avx2,fma,f16c"))) float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 packed bytes -> 32 codes in element order (low nibble first) as four 8-float vectors.
__attribute__((target("avx2,fma,f16c"))) void unpack32(const uint8_t* p, __m256 (&c)[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  const __m128i e0 = _mm_unpacklo_epi8(lo, hi), e1 = _mm_unpackhi_epi8(lo, hi);  // 16 codes each
  c[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e0));
  c[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8)));
  c[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e1));
  c[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8)));
}

// AVX2 path for one row: full blocks vectorized; a partial last block (cols % 128) goes through
// the same arithmetic lane by lane.
__attribute__((target("avx2,fma,f16c"))) void int4_row_avx2(const Int4Args& a, uint64_t r,
                                                            const float* x, uint64_t tn,
                                                            const float (&sums)[kTile][kMaxBlocks],
                                                            float* y) {
  __m256 acc[kTile];
  float tail[kTile] = {};
  for (uint64_t t = 0; t < kTile; ++t) acc[t] = _mm256_setzero_ps();
  const uint64_t full = a.cols / kBlock;
  for (uint64_t b = 0; b < a.blocks; ++b) {
    const uint8_t* qb = a.q + (r * a.blocks + b) * kBlockBytes;
    // F16C conversion inline: the portable f16_to_float is a call with branches, twice a block.
    const float s = _cvtsh_ss(a.scales[r * a.blocks + b]);
    const float m = a.mins ? _cvtsh_ss(a.mins[r * a.blocks + b]) : -8.0f * s;
    if (b == full) {  // partial block
      for (uint64_t t = 0; t < tn; ++t) {
        const float* xb = x + t * a.cols + b * kBlock;
        float dot = 0;
        for (uint64_t i = 0; i < a.cols - b * kBlock; ++i)
          dot += float((qb[i / 2] >> (4 * (i & 1))) & 15) * xb[i];
        tail[t] += s * dot + m * sums[t][b];
      }
      continue;
    }
    __m256 dot[kTile];
    for (uint64_t t = 0; t < kTile; ++t) dot[t] = _mm256_setzero_ps();
    for (uint64_t g = 0; g < 4; ++g) {  // 4 x 32 codes
      __m256 c[4];
      unpack32(qb + 16 * g, c);
      for (uint64_t t = 0; t < tn; ++t) {
        const float* xg = x + t * a.cols + b * kBlock + 32 * g;
        for (int j = 0; j < 4; ++j)
          dot[t] = _mm256_fmadd_ps(c[j], _mm256_loadu_ps(xg + 8 * j), dot[t]);
      }
    }
    const __m256 sv = _mm256_set1_ps(s);
    for (uint64_t t = 0; t < tn; ++t) {
      acc[t] = _mm256_fmadd_ps(dot[t], sv, acc[t]);
      tail[t] += m * sums[t][b];
    }
  }
  for (uint64_t t = 0; t < tn; ++t) y[t * a.rows + r] = hsum(acc[t]) + tail[t];
}

// 8 bf16 -> 8 fp32: the bf16 bits are the high half of the fp32 bits.
__attribute__((target("avx2,fma,f16c"))) __m256 load8_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

__attribute__((target("avx2,fma,f16c"))) void bf16_row_avx2(const uint16_t* w, uint64_t rows,
                                                            uint64_t cols, uint64_t r,
                                                            const float* x, uint64_t tn, float* y) {
  __m256 acc[kTile];
  for (uint64_t t = 0; t < kTile; ++t) acc[t] = _mm256_setzero_ps();
  const uint16_t* row = w + r * cols;
  const uint64_t vec_end = cols / 8 * 8;
  for (uint64_t c = 0; c < vec_end; c += 8) {
    const __m256 wv = load8_bf16(row + c);
    for (uint64_t t = 0; t < tn; ++t)
      acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * cols + c), acc[t]);
  }
  for (uint64_t t = 0; t < tn; ++t) {
    float s = hsum(acc[t]);
    for (uint64_t c = vec_end; c < cols; ++c) s += bf16_to_float(row[c]) * x[t * cols + c];
    y[t * rows + r] = s;
  }
}

void bf16_row_portable(const uint16_t* w, uint64_t rows, uint64_t cols, uint64_t r, const float* x,
                       uint64_t tn, float* y) {
  float acc[kTile] = {};
  const uint16_t* row = w + r * cols;
  for (uint64_t c = 0; c < cols; ++c) {
    const float wv = bf16_to_float(row[c]);
    for (uint64_t t = 0; t < tn; ++t) acc[t] += wv * x[t * cols + c];
  }
  for (uint64_t t = 0; t < tn; ++t) y[t * rows + r] = acc[t];
}

}  // namespace

bool kernel_isa_available(KernelIsa isa) {
  return isa == KernelIsa::portable || cpu_has_avx2();
}

KernelIsa best_kernel_isa() {
  return cpu_has_avx2() ? KernelIsa::avx2 : KernelIsa::portable;
}

void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y, KernelIsa isa) {
  const bool avx2 = isa == KernelIsa::avx2 && cpu_has_avx2();
  pool.parallel_for(rows, row_grain(cols, n), [&](uint64_t r0, uint64_t r1) {
    for (uint64_t t0 = 0; t0 < n; t0 += kTile) {
      const uint64_t tn = std::min(kTile, n - t0);
      for (uint64_t r = r0; r < r1; ++r)
        avx2 ? bf16_row_avx2(w, rows, cols, r, x + t0 * cols, tn, y + t0 * rows)
             : bf16_row_portable(w, rows, cols, r, x + t0 * cols, tn, y + t0 * rows);
    }
  });
}

void matmul_int4_cpu(CpuPool& pool, const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                     uint64_t rows, uint64_t cols, const float* x, uint64_t n, float* y,
                     KernelIsa isa) {
  const Int4Args a{q, scales, mins, rows, cols, int4_blocks_per_row(cols)};
  if (a.blocks > kMaxBlocks)
    throw Error("matmul_int4_cpu: " + std::to_string(cols) + " columns exceed the kernel's " +
                std::to_string(kMaxBlocks * kBlock));
  const bool avx2 = isa == KernelIsa::avx2 && cpu_has_avx2();
  pool.parallel_for(rows, row_grain(cols, n), [&](uint64_t r0, uint64_t r1) {
    float sums[kTile][kMaxBlocks];  // [token of the tile, block] sums of x, on the stack (8 KB)
    for (uint64_t t0 = 0; t0 < n; t0 += kTile) {
      const uint64_t tn = std::min(kTile, n - t0);
      block_sums(x + t0 * cols, tn, cols, a.blocks, sums);
      for (uint64_t r = r0; r < r1; ++r)
        avx2 ? int4_row_avx2(a, r, x + t0 * cols, tn, sums, y + t0 * rows)
             : int4_row_portable(a, r, x + t0 * cols, tn, sums, y + t0 * rows);
    }
  });
}

void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y) {
  matmul_bf16_cpu(pool, w, rows, cols, x, n, y, best_kernel_isa());
}

void matmul_int4_cpu(CpuPool& pool, const uint8_t* q, const uint16_t* scales, const uint16_t* mins,
                     uint64_t rows, uint64_t cols, const float* x, uint64_t n, float* y) {
  matmul_int4_cpu(pool, q, scales, mins, rows, cols, x, n, y, best_kernel_isa());
}

}  // namespace ferry
