// The CPU INT8 matrix product (contract in kernels/matmul_int8.hpp).
//
// Rows split over the pool; per row, up to kTile tokens go through the row together, so each
// weight byte is loaded and widened once per 8 tokens. Per block of 128 the codes are dotted with
// x in fp32 (the codes widen exactly to floats) and the block's dot is scaled once into the row's
// accumulator: acc += dot * scale, per block, as matvec_int8_cpu does. The AVX2 path keeps the
// dot and the accumulator in 8 lanes (one FMA chain per token, 8 independent chains per tile) and
// reduces the lanes once per row; the portable path sums scalars. Both are fixed-order per output,
// so results do not depend on the thread count.
//
// matmul_int8_q8_cpu: the same product on activations quantized to INT8 per block of 128
// (quantize_q8_block_cpu, the INT4 product's quantizer), once per token tile of a task. Per block
// the codes dot q in exact int32 and y = sum_b scale_b * d_b * isum_b: the product of the
// dequantized weights w with xq, so
//   |y - y_fp32| <= sum_b d_b / 2 * sum_{i in b} |w_i|  (+ fp32 rounding),
// the bound tests/test_int8.cpp checks. AVX2 has no signed x signed byte product: maddubs takes
// |w| (unsigned) against q with w's sign moved onto it (sign_epi8), each pair at most
// 2 * 127 * 127 = 32,258 < 32,767, then madd with ones widens the pairs to int32 exactly. Per
// 32 weights that is 5 instructions, where the fp32 path spends 4 conversions and 4 FMAs: the
// INT8 lm_head (Qwen2-32B: 790 MB, SmolLM2: 28 MB) stays at the memory's speed. With AVX-512
// VNNI the tile of kernels/matmul_q8_avx512_cpu.cpp runs instead (vpdpbusd on w + 128, the 128 qsum
// taken out per block after the loop).
#include <algorithm>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/simd.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "kernels/q8_tile.hpp"

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
    const float s = _cvtsh_ss(c.w.scales[r * blocks + b]);
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

// ---------------------------------------------------------------------------------------------
// INT8 x INT8.
constexpr uint64_t kQ8MaxBlocks = 256;  // rows up to 32,768 columns: a tile's q on the stack

// One token tile's quantized activations, [kTile, kQ8MaxBlocks * 128] q and [kTile, kQ8MaxBlocks]
// d.
struct Q8Tile {
  alignas(64) int8_t q[kTile * kQ8MaxBlocks * kBlock];
  float d[kTile * kQ8MaxBlocks];
  float sums[kTile * kQ8MaxBlocks];  // d * the block's sum of q: the AVX-512 tile's correction
};

// With the INT4 product's quantizer (quantize_q8_block_cpu: the same q for the same x on every
// path), narrowed to bytes.
void quantize_tile(const float* x, uint64_t cols, uint64_t tn, Q8Tile& t, KernelIsa isa) {
  const uint64_t blocks = int8_blocks_per_row(cols);
  int32_t q[kBlock];
  for (uint64_t j = 0; j < tn; ++j)
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t c0 = b * kBlock;
      const float amax =
          quantize_q8_block_cpu(x + j * cols + c0, std::min(kBlock, cols - c0), q, isa);
      t.d[j * kQ8MaxBlocks + b] = amax / 127.0f;
      int8_t* out = t.q + (j * kQ8MaxBlocks + b) * kBlock;
      int32_t qsum = 0;
      for (uint64_t e = 0; e < kBlock; ++e) qsum += out[e] = int8_t(q[e]);
      t.sums[j * kQ8MaxBlocks + b] = t.d[j * kQ8MaxBlocks + b] * float(qsum);
    }
}

void q8_rows_portable(const Call& c, uint64_t r0, uint64_t r1, Q8Tile& t) {
  const uint64_t blocks = c.w.blocks();
  for (uint64_t t0 = 0; t0 < c.n; t0 += kTile) {
    const uint64_t tn = std::min(kTile, c.n - t0);
    quantize_tile(c.x + t0 * c.w.cols, c.w.cols, tn, t, KernelIsa::portable);
    for (uint64_t r = r0; r < r1; ++r)
      for (uint64_t j = 0; j < tn; ++j) {
        float acc = 0.0f;
        for (uint64_t b = 0; b < blocks; ++b) {
          const int8_t* w = c.w.q + (r * blocks + b) * kBlock;
          const int8_t* q = t.q + (j * kQ8MaxBlocks + b) * kBlock;
          int32_t isum = 0;
          for (uint64_t e = 0; e < kBlock; ++e) isum += int32_t(w[e]) * q[e];
          acc +=
              float(isum) * (f16_to_float(c.w.scales[r * blocks + b]) * t.d[j * kQ8MaxBlocks + b]);
        }
        c.y[(t0 + j) * c.w.rows + r] = acc;
      }
  }
}

#if FERRY_X86
// R rows x T tokens (tile rows j0 .. j0+T, outputs t0 + j0 ..) over all blocks; per block, each
// row's four 32-byte pieces are loaded once and serve the T tokens, and the int32 sums of a block
// become one FMA per (row, token). Scales convert with F16C in registers: a call to
// f16_to_float here (out of line) made the compiler spill every accumulator around it, once per
// row and block, which on SmolLM2's 4.5-block lm_head rows cost more than the products.
template <int R, int T>
__attribute__((target("avx2,fma,f16c"))) void q8_tile(const Call& c, uint64_t r, const Q8Tile& t,
                                                      uint64_t j0, uint64_t t0) {
  const uint64_t blocks = c.w.blocks();
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (uint64_t b = 0; b < blocks; ++b) {
    if constexpr (T == 1)  // decode: one row, prefetched ahead (q8_rows_tiled)
      _mm_prefetch(reinterpret_cast<const char*>(c.w.q + (r * blocks + b) * kBlock) + 4096,
                   _MM_HINT_T0);
    __m256i isum[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) isum[i][j] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k)
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const __m256i w = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(c.w.q + ((r + i) * blocks + b) * kBlock + 32 * k));
        const __m256i aw = _mm256_abs_epi8(w);
#pragma GCC unroll 8
        for (int j = 0; j < T; ++j) {
          const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(
              t.q + ((j0 + j) * kQ8MaxBlocks + b) * kBlock + 32 * k));
          const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(q, w));
          isum[i][j] = _mm256_add_epi32(isum[i][j], _mm256_madd_epi16(p, ones));
        }
      }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const float s = _cvtsh_ss(c.w.scales[(r + i) * blocks + b]);
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j)
        acc[i][j] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][j]),
                            _mm256_set1_ps(s * t.d[(j0 + j) * kQ8MaxBlocks + b]), acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) c.y[(t0 + j0 + j) * c.w.rows + r + i] = hsum(acc[i][j]);
}

// Rows r0 .. r1 against T tokens: R * T int32 sums and as many accumulators, a code vector, its
// absolute value and a temporary or two within 16 ymm registers. One token (decode) walks one
// row at a time, prefetched 4 KB ahead, one stream through memory as in the INT4 decode (SmolLM2's
// 49152 x 576 lm_head on this tile, one thread, `bench_kernels int8 ... q8:2`: 10-14 -> 17-19
// GB/s).
template <int T>
void q8_rows_tiled(const Call& c, uint64_t r0, uint64_t r1, const Q8Tile& t, uint64_t j0,
                   uint64_t t0) {
  constexpr int R = T == 1 ? 1 : T == 2 ? 2 : 1;
  uint64_t r = r0;
  for (; r + R <= r1; r += R) q8_tile<R, T>(c, r, t, j0, t0);
  for (; r < r1; ++r) q8_tile<1, T>(c, r, t, j0, t0);
}

void q8_rows_avx2(const Call& c, uint64_t r0, uint64_t r1, Q8Tile& t) {
  for (uint64_t t0 = 0; t0 < c.n; t0 += kTile) {
    const uint64_t tn = std::min(kTile, c.n - t0);
    quantize_tile(c.x + t0 * c.w.cols, c.w.cols, tn, t, KernelIsa::avx2);
    for (uint64_t j0 = 0; j0 < tn; j0 += 4) {  // token groups of up to 4: the register tile
      switch (std::min<uint64_t>(4, tn - j0)) {
        case 1:
          q8_rows_tiled<1>(c, r0, r1, t, j0, t0);
          break;
        case 2:
          q8_rows_tiled<2>(c, r0, r1, t, j0, t0);
          break;
        case 3:
          q8_rows_tiled<3>(c, r0, r1, t, j0, t0);
          break;
        default:
          q8_rows_tiled<4>(c, r0, r1, t, j0, t0);
      }
    }
  }
}
#endif

}  // namespace

void matmul_int8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y,
                     KernelIsa isa) {
  if (w.rows == 0 || n == 0) return;
  const Call call{w, x, n, y};
  const bool avx2 = isa_has_avx2(isa);
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

bool matmul_int8_q8_fits(const Int8View& w) {
  return w.blocks() <= kQ8MaxBlocks;
}

void matmul_int8_q8_rows_cpu(const Int8View& w, const float* x, uint64_t n, float* y, uint64_t r0,
                             uint64_t r1, KernelIsa isa) {
  if (!matmul_int8_q8_fits(w))
    throw Error(fmt::format("matmul_int8_q8_rows_cpu: {} columns exceed the INT8 path's {}", w.cols,
                            kQ8MaxBlocks * kBlock));
  if (r0 >= r1 || n == 0) return;
  const Call c{w, x, n, y};
  Q8Tile t;  // 264 KB of the task's stack (pool threads have 8 MB)
  if (usable_isa(isa) == KernelIsa::avx512) {
    for (uint64_t t0 = 0; t0 < n; t0 += kTile) {
      const uint64_t tn = std::min(kTile, n - t0);
      quantize_tile(x + t0 * w.cols, w.cols, tn, t, isa);
      q8::tile_rows_int8_avx512(w, r0, r1, {t.q, t.d, t.sums, kQ8MaxBlocks}, tn, y, t0);
    }
    return;
  }
#if FERRY_X86
  if (isa_has_avx2(isa)) return q8_rows_avx2(c, r0, r1, t);
#endif
  q8_rows_portable(c, r0, r1, t);
}

void matmul_int8_q8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y,
                        KernelIsa isa) {
  if (w.rows == 0 || n == 0) return;
  if (!matmul_int8_q8_fits(w)) return matmul_int8_cpu(pool, w, x, n, y, isa);
  const Call call{w, x, n, y};
  const uint64_t grain = std::max<uint64_t>(1, kMinWorkPerTask / std::max<uint64_t>(1, w.cols * n));
  pool.parallel_for(w.rows, grain, [c = &call, isa](uint64_t r0, uint64_t r1) {
    matmul_int8_q8_rows_cpu(c->w, c->x, c->n, c->y, r0, r1, isa);
  });
}

void matmul_int8_q8_cpu(CpuPool& pool, const Int8View& w, const float* x, uint64_t n, float* y) {
  matmul_int8_q8_cpu(pool, w, x, n, y, best_kernel_isa());
}

}  // namespace ferry
