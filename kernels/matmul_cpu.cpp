// CPU matrix products over ferry's weight formats (contract in kernels/matmul.hpp).
//
// Work splits over output rows: each y element is computed by one thread, start to end, in a
// fixed order that depends neither on the thread count nor on which tokens share a tile, so
// results are bit-identical for every pool size and every batch split. Up to kMaxTile tokens go
// through a weight row together, so each weight byte is loaded (and, for INT4, unpacked) once
// per 8 tokens: decode (n = 1) is bound by reading the weights, prefill by arithmetic.
//
// AVX2 path. x is copied per chunk of columns into a stack buffer in "pair order": each group of
// 16 elements as its 8 even elements, then its 8 odd ones. That is the order in which the weights
// unpack cheapest: 8 INT4 bytes zero-extended to 8 lanes give the even codes (low nibbles) and
// the odd codes (high nibbles) with one AND and one shift; 8 bf16 pairs read as 32-bit lanes give
// the even weights with one shift and the odd ones with one AND. A chunk holds 16 KB of x for a
// multi-token tile (it stays in a 32 KB L1 while the rows of a panel stream past) and up to 64 KB
// for decode. Per (row, token) the kernel keeps one 8-lane accumulator that carries over chunk
// boundaries through the panel's state in memory, exactly, so chunking changes no rounding.
// Row tiles of R rows x T tokens (R = 8 at decode) give independent FMA chains that hide the FMA
// latency: one chain per row ran 2.5x slower at decode.
//   INT4: per block, dot = sum of codes * x (8 lanes, in registers); acc += dot * scale (the
//   chunk's scales converted 8 at a time beforehand). The offset term, sum over blocks of
//   min * (block sum of x) (sym: -8 * scale), is one short dot product per row and token at the
//   end, over block sums of x computed once per token tile. Each packed byte is read once per
//   tile and never dequantized to memory. Measured on one core (EPYC, 2.45 GHz, L2-resident):
//   9.5 GB/s of INT4 weights at decode, 28 GMAC/s at n = 64.
//
// INT4 x INT8 path (matmul_int4_q8_cpu, what the CPU forward pass runs for INT4 linears; its
// error bound at its section below): activations quantized per block of 128, codes times q in
// AVX2 maddubs/madd. Measured on this 2-core AVX2 machine under a load of ~8 (other builds), one
// thread, CPU time per call (bench_kernels), fp32 path -> INT8 path:
//   4096 x 4096 decode 1.30 -> 0.89 ms, n = 64 52.9 -> 22.7 ms (7.8 -> 19.4 GMAC/s wall);
//   SmolLM2 1536 x 576 decode 0.138 -> 0.049 ms, n = 128 8.03 -> 3.84 ms (6.68 before the offset
//   term moved into the block loop); n = 128 3.37 -> 2.45 ms with the AVX2 quantizer (load ~9).
// On CPUs with AVX-512 VNNI (KernelIsa::avx512) the tiles of kernels/matmul_q8_avx512_cpu.cpp run
// instead of the AVX2 ones: the same quantized activations, packed in zmm order.
// The fused variants (q/k/v, gate/up + SiLU * up) run the same per-row code for several weights in
// one parallel region, each task quantizing its token tile once for all of them.
// ferry bench --prompt 128 --gen 64 on SmolLM2-135M asym-clip, 2 threads, same load: prefill
// 19-55 -> 31-74 tokens/s, decode 4-6.5 either way (noise of the load dominates; see the commits).
//
// Portable path: per block the 128 weights are dequantized exactly as kernels/dequant.hpp does
// and dotted with each token of the tile in 8 partial sums.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <type_traits>

#include <fmt/format.h>

#include "base/cpu_isa.hpp"
#include "base/dtype.hpp"
#include "base/error.hpp"
#include "format/int4.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "kernels/q8_tile.hpp"

#if FERRY_X86
#include <immintrin.h>
#endif

namespace ferry {
namespace {

constexpr uint64_t kMaxTile = 8;  // tokens per pass over the weights
constexpr uint64_t kGroup = 16;   // AVX2 step: the even and the odd 8 of 16 elements
constexpr uint64_t kPanel = 48;   // rows whose accumulators wait in memory while chunks go by;
                                  // a multiple of every row tile (8, 4, 3, 2)
// x chunk buffer on the task's stack: 64 KB; a multi-token tile uses 16 KB of it (half an L1).
constexpr uint64_t kXFloats = 16384;
constexpr uint64_t kTileXFloats = 4096;
// INT4 rows up to 131,072 columns (the block sums of x sit on the stack, 32 KB); the widest
// weights of current models are ~53,000 (Llama 3.1 405B's FFN).
constexpr uint64_t kMaxBlocks = 1024;
// A task gets at least this many weight-token products: 10-20 us of work at 13-28 GMAC/s per
// core, above the 1-2 us of a dispatch to spinning workers and the ~10 us of waking sleeping ones.
// Small matrices (TinyStories' 128 x 384) then run on the caller alone: with a thread per 64 rows
// they spent more time waking threads than computing.
constexpr uint64_t kMinWorkPerTask = 1ull << 18;

uint64_t row_grain(uint64_t cols, uint64_t n) {
  return std::max<uint64_t>(1, kMinWorkPerTask / std::max<uint64_t>(1, cols * n));
}

struct Bf16Rows {
  const uint16_t* w;  // [rows, cols] bf16
  uint64_t rows, cols;
};

// ---------------------------------------------------------------------------------------------
// Portable path.

// GCC/Clang vector extensions of 16 bytes (SSE2 on baseline x86-64, NEON on Arm): 8 lanes of
// partial sums as two 4-lane halves; the lane-wise arithmetic is the same on every target.
typedef float f32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint16_t u16x4 __attribute__((vector_size(8)));

inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 4 bf16 -> fp32: the bf16 bits are the high half of the fp32 bits.
inline f32x4 load4_bf16(const uint16_t* p) {
  u16x4 h;
  std::memcpy(&h, p, sizeof h);
  const u32x4 u = __builtin_convertvector(h, u32x4) << 16;
  f32x4 f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

struct Lanes8 {
  f32x4 lo = {}, hi = {};  // lanes 0..3, 4..7
  float sum() const {
    return ((lo[0] + lo[1]) + (lo[2] + lo[3])) + ((hi[0] + hi[1]) + (hi[2] + hi[3]));
  }
  void add(uint64_t lane, float v) { lane < 4 ? lo[lane] += v : hi[lane - 4] += v; }
};

// Lane j sums the products of elements j, j + 8, j + 16, ... in order.
float dot8(const float* w, const float* x, uint64_t len) {
  Lanes8 d;
  uint64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    d.lo += load4(w + i) * load4(x + i);
    d.hi += load4(w + i + 4) * load4(x + i + 4);
  }
  for (uint64_t j = 0; i < len; ++i, ++j) d.add(j, w[i] * x[i]);
  return d.sum();
}

void int4_rows_portable(const Int4View& a, uint64_t r0, uint64_t r1, const float* x, uint64_t n,
                        float* y) {
  // sym: (code - 8) * scale + -0.0f, as kernels/dequant_cpu.cpp (x + -0 == x, -0 included).
  const float offset = a.mins ? 0.0f : 8.0f;
  float w[kBlock];  // one dequantized block
  for (uint64_t t0 = 0; t0 < n; t0 += kMaxTile) {
    const uint64_t tn = std::min(kMaxTile, n - t0);
    for (uint64_t r = r0; r < r1; ++r) {
      float acc[kMaxTile] = {};
      for (uint64_t b = 0; b < a.blocks(); ++b) {
        const uint8_t* qb = a.q + (r * a.blocks() + b) * kBlockBytes;
        const float s = f16_to_float(a.scales[r * a.blocks() + b]);
        const float m = a.mins ? f16_to_float(a.mins[r * a.blocks() + b]) : -0.0f;
        const uint64_t len = std::min(kBlock, a.cols - b * kBlock);
        for (uint64_t j = 0; j < kBlockBytes; ++j) {  // padding weights too: never summed
          w[2 * j] = (float(qb[j] & 15) - offset) * s + m;
          w[2 * j + 1] = (float(qb[j] >> 4) - offset) * s + m;
        }
        for (uint64_t t = 0; t < tn; ++t)
          acc[t] += dot8(w, x + (t0 + t) * a.cols + b * kBlock, len);
      }
      for (uint64_t t = 0; t < tn; ++t) y[(t0 + t) * a.rows + r] = acc[t];
    }
  }
}

void bf16_rows_portable(const Bf16Rows& a, uint64_t r0, uint64_t r1, const float* x, uint64_t n,
                        float* y) {
  for (uint64_t t0 = 0; t0 < n; t0 += kMaxTile) {
    const uint64_t tn = std::min(kMaxTile, n - t0);
    const float* xt = x + t0 * a.cols;
    for (uint64_t r = r0; r < r1; ++r) {
      const uint16_t* row = a.w + r * a.cols;
      Lanes8 d[kMaxTile];
      uint64_t c = 0;
      for (; c + 8 <= a.cols; c += 8) {
        const f32x4 lo = load4_bf16(row + c), hi = load4_bf16(row + c + 4);
        for (uint64_t t = 0; t < tn; ++t) {
          d[t].lo += lo * load4(xt + t * a.cols + c);
          d[t].hi += hi * load4(xt + t * a.cols + c + 4);
        }
      }
      for (uint64_t j = 0; c < a.cols; ++c, ++j)
        for (uint64_t t = 0; t < tn; ++t) d[t].add(j, bf16_to_float(row[c]) * xt[t * a.cols + c]);
      for (uint64_t t = 0; t < tn; ++t) y[(t0 + t) * a.rows + r] = d[t].sum();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// INT4 x INT8 (matmul_int4_q8_cpu). Each token's x is quantized per block of 128 to int8,
// x ~= xq = d * q with d = max|x| / 127 and q = round(x / d) in [-127, 127], once per token tile
// of a task (a pure function of the token's row, so every thread count and batch split sees the
// same q). Per block the codes dot q in exact int32, and y = sum_b d_b * (scale_b * isum_b +
// min_b * qsum_b) (sym: min = -8 * scale), qsum the block sum of q: y is the product of the
// dequantized weights w with xq, so |x - xq| <= d / 2 per element gives
//   |y - y_fp32| <= sum_b d_b / 2 * sum_{i in b} |w_i|  (+ fp32 rounding)
// (tests/test_matmul.cpp checks that bound). The offset uses qsum, not the exact block sum of x:
// the codes carry the offset (8 of 15 for sym), so codes * xq + min * sum(x) would leave an
// error of ~8 * scale * d per element against a w of ~scale: 2.5-3% relative instead of ~0.5%.
// In layout order a block holds, per 64 elements, the 32 even ones then the 32 odd ones: the low
// and high nibbles of 32 packed bytes.
constexpr uint64_t kQ8MaxBlocks = q8::kMaxBlocks;  // the tile (kernels/q8_tile.hpp)
using Q8Tile = q8::Tile;
static_assert(q8::kMaxTile == kMaxTile, "a q8 tile holds one token tile");

// One block of len <= 128 elements of x into qi [128] (zeros past len); returns max |x|. NaNs
// are passed over by the max and become 0 in qi (int32_t(float) of a NaN: cvttss2si's
// 0x80000000, whose low byte quantize_q8 keeps).
float q8_block_portable(const float* x, uint64_t len, int32_t* qi) {
  float amax = 0.0f;
  for (uint64_t e = 0; e < len; ++e) amax = std::max(amax, std::fabs(x[e]));
  const float inv = amax > kQ8MinBlockMax ? 127.0f / amax : 0.0f;
  for (uint64_t e = 0; e < kBlock; ++e)
    qi[e] = e < len ? int32_t(std::clamp(std::nearbyint(x[e] * inv), -127.0f, 127.0f)) : 0;
  return amax;
}

#if FERRY_X86
__attribute__((target("avx2,fma,f16c"))) float q8_block_avx2(const float* x, uint64_t len,
                                                             int32_t* qi);
#endif

// Quantizes tn tokens of x [.., cols] into t, q in layout order (zmm order for the AVX-512 tile);
// the AVX2 and portable block steps give the same q, d and sums (bit-identical), so the kernels'
// results do not depend on which ran.
void quantize_q8(const float* x, uint64_t cols, uint64_t tn, Q8Tile& t, KernelIsa isa) {
  const bool avx2 = isa_has_avx2(isa), zmm = usable_isa(isa) == KernelIsa::avx512;
  const uint64_t blocks = int4_blocks_per_row(cols);
  for (uint64_t j = 0; j < tn; ++j) {
    const float* xt = x + j * cols;
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t c0 = b * kBlock, len = std::min(cols, c0 + kBlock) - c0;
      alignas(32) int32_t qi[kBlock];
#if FERRY_X86
      const float amax =
          avx2 ? q8_block_avx2(xt + c0, len, qi) : q8_block_portable(xt + c0, len, qi);
#else
      (void)avx2;
      const float amax = q8_block_portable(xt + c0, len, qi);
#endif
      const float d = amax / 127.0f;
      int8_t* qb = t.q + j * blocks * kBlock + c0;
      int32_t qsum = 0;
      if (zmm) {
        qsum = q8::pack_block_avx512(qi, qb);  // this loop took 8% of a SmolLM2 prefill
      } else {
        for (uint64_t e = 0; e < kBlock; ++e) {
          const int8_t q = int8_t(qi[e]);
          qb[q8::pos(e)] = q;
          qsum += q;
        }
      }
      t.d[j * kQ8MaxBlocks + b] = d;
      t.sums[j * kQ8MaxBlocks + b] = d * float(qsum);
      float* o = t.off + (j * kQ8MaxBlocks + b) * 8;
      std::fill(o, o + 8, 0.0f);
      o[0] = d * float(qsum);
    }
    std::fill(t.sums + j * kQ8MaxBlocks + blocks, t.sums + j * kQ8MaxBlocks + (blocks + 7) / 8 * 8,
              0.0f);
  }
}

// Rows [r0, r1) of y for the tn tokens from t0 whose quantized activations t holds.
void q8_tile_rows_portable(const Int4View& a, uint64_t r0, uint64_t r1, const Q8Tile& t,
                           uint64_t tn, float* y, uint64_t t0) {
  const uint64_t blocks = a.blocks();
  for (uint64_t r = r0; r < r1; ++r)
    for (uint64_t j = 0; j < tn; ++j) {
      const int8_t* qt = t.q + j * blocks * kBlock;
      float acc = 0.0f, off = 0.0f;
      for (uint64_t b = 0; b < blocks; ++b) {
        const uint8_t* cb = a.q + (r * blocks + b) * kBlockBytes;
        int32_t isum = 0;
        for (uint64_t e = 0; e < kBlock; ++e)
          isum += int32_t((cb[e / 2] >> (e % 2 * 4)) & 15) * qt[b * kBlock + q8::pos(e)];
        const float s = f16_to_float(a.scales[r * blocks + b]);
        acc += float(isum) * (s * t.d[j * kQ8MaxBlocks + b]);
        off += (a.mins ? f16_to_float(a.mins[r * blocks + b]) : s) * t.sums[j * kQ8MaxBlocks + b];
      }
      y[(t0 + j) * a.rows + r] = acc + (a.mins ? off : -8.0f * off);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C path.
#if FERRY_X86

#define FERRY_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FERRY_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
// Loops over the R x T register tile carry "#pragma GCC unroll 8": they must unroll fully, or the
// accumulators live on the stack and every FMA waits on a store-to-load round trip (-O2 left
// them rolled: 4 GB/s instead of ~10 on one core at decode).

FERRY_AVX2_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Columns per chunk for a tile of tn tokens: a multiple of the block, tn * chunk <= the buffer.
uint64_t chunk_cols(uint64_t tn) {
  const uint64_t floats = tn == 1 ? kXFloats : kTileXFloats;
  return std::max(kBlock, floats / tn / kBlock * kBlock);
}

// Copies columns [k0, k1) of tn tokens of x [n, cols] into xp [tn, kc] in pair order (zeros past
// cols, up to a whole group).
FERRY_AVX2 void permute_x(const float* x, uint64_t cols, uint64_t tn, uint64_t k0, uint64_t k1,
                          uint64_t kc, float* xp) {
  const uint64_t groups = (k1 - k0 + kGroup - 1) / kGroup;
  for (uint64_t t = 0; t < tn; ++t) {
    const float* xt = x + t * cols;
    for (uint64_t g = 0; g < groups; ++g) {
      const uint64_t c = k0 + g * kGroup;
      __m256 lo, hi;  // elements 0..7 and 8..15 of the group
      if (c + kGroup <= cols) {
        lo = _mm256_loadu_ps(xt + c);
        hi = _mm256_loadu_ps(xt + c + 8);
      } else {
        alignas(32) float tail[kGroup] = {};
        std::copy(xt + c, xt + cols, tail);
        lo = _mm256_load_ps(tail);
        hi = _mm256_load_ps(tail + 8);
      }
      // shuffle_ps picks 0,2 | 4,6 of each 128-bit half of lo and hi: x0 x2 x8 x10 | x4 x6 x12 x14;
      // the 64-bit permute restores x0 x2 x4 x6 x8 x10 x12 x14. Likewise for the odd ones.
      const __m256 even = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))), 0xd8));
      const __m256 odd = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))), 0xd8));
      _mm256_store_ps(xp + t * kc + g * kGroup, even);
      _mm256_store_ps(xp + t * kc + g * kGroup + 8, odd);
    }
  }
}

// sums[t * kMaxBlocks + b] = the sum of token t's x over block b (padding excluded), zero from
// `blocks` up to the next multiple of 8, in an order fixed per block.
FERRY_AVX2 void block_sums(const float* x, uint64_t cols, uint64_t tn, uint64_t blocks,
                           float* sums) {
  for (uint64_t t = 0; t < tn; ++t) {
    const float* xt = x + t * cols;
    float* st = sums + t * kMaxBlocks;
    for (uint64_t b = 0; b < blocks; ++b) {
      __m256 v = _mm256_setzero_ps();
      for (uint64_t c = b * kBlock; c < std::min(cols, (b + 1) * kBlock); c += 8) {
        if (c + 8 <= cols) {
          v = _mm256_add_ps(v, _mm256_loadu_ps(xt + c));
        } else {
          alignas(32) float tail[8] = {};
          std::copy(xt + c, xt + cols, tail);
          v = _mm256_add_ps(v, _mm256_load_ps(tail));
        }
      }
      st[b] = hsum(v);
    }
    std::fill(st + blocks, st + (blocks + 7) / 8 * 8, 0.0f);
  }
}

// The offset term of one row and token: sum over blocks of min * (block sum of x), for sym
// -8 * scale * (block sum of x) (the factor -8 applied once at the end, exactly). 8 blocks per
// step: their f16 offsets convert in one instruction.
FERRY_AVX2 float row_offset(const Int4View& a, uint64_t r, const float* sums_t) {
  const uint16_t* m = (a.mins ? a.mins : a.scales) + r * a.blocks();
  __m256 acc = _mm256_setzero_ps();
  uint64_t b = 0;
  for (; b + 8 <= a.blocks(); b += 8)
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + b))),
                          _mm256_load_ps(sums_t + b), acc);
  if (b < a.blocks()) {  // sums are zero past the last block
    alignas(16) uint16_t tail[8] = {};
    std::copy(m + b, m + a.blocks(), tail);
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tail))),
                          _mm256_load_ps(sums_t + b), acc);
  }
  return a.mins ? hsum(acc) : -8.0f * hsum(acc);
}

// Per-panel state of the AVX2 kernels: one 8-lane accumulator per (row, token).
struct PanelState {
  __m256 acc[kPanel][kMaxTile];
};

// One INT4 block of R rows x T tokens: groups of 16 (8 for a full block); acc += dot * scale.
template <int R, int T>
FERRY_AVX2_INLINE void int4_block(const Int4View& a, uint64_t r, uint64_t b, uint64_t groups,
                                  const float* xb, uint64_t kc, const float* scale,
                                  uint64_t scale_stride, __m256* acc) {
  __m256 dot[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) dot[i][j] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi32(15);
  for (uint64_t g = 0; g < groups; ++g)
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = a.q + ((r + i) * a.blocks() + b) * kBlockBytes + g * (kGroup / 2);
      const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      const __m256 even = _mm256_cvtepi32_ps(_mm256_and_si256(v, nibble));
      const __m256 odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) {
        const float* xg = xb + j * kc + g * kGroup;
        dot[i][j] = _mm256_fmadd_ps(even, _mm256_load_ps(xg), dot[i][j]);
        dot[i][j] = _mm256_fmadd_ps(odd, _mm256_load_ps(xg + 8), dot[i][j]);
      }
    }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const __m256 s = _mm256_broadcast_ss(scale + i * scale_stride);
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j)
      acc[i * kMaxTile + j] = _mm256_fmadd_ps(dot[i][j], s, acc[i * kMaxTile + j]);
  }
}

// Blocks [b0, b1) (one chunk) of rows r .. r+R-1; acc points at row r's panel accumulators.
template <int R, int T>
FERRY_AVX2 void int4_tile(const Int4View& a, uint64_t r, uint64_t b0, uint64_t b1, const float* xp,
                          uint64_t kc, __m256* acc) {
  // The chunk's scales as floats, 8 per conversion instruction: [R, b1 - b0 <= 128].
  constexpr uint64_t kChunkBlocks = kXFloats / kBlock;
  alignas(32) float scale[R][kChunkBlocks];
  for (int i = 0; i < R; ++i) {
    const uint16_t* s = a.scales + (r + i) * a.blocks();
    uint64_t b = b0;
    for (; b + 8 <= b1; b += 8)
      _mm256_store_ps(&scale[i][b - b0],
                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + b))));
    for (; b < b1; ++b) scale[i][b - b0] = _cvtsh_ss(s[b]);
  }
  const uint64_t full_end = std::min(b1, a.cols / kBlock);
  uint64_t b = b0;
  for (; b < full_end; ++b)
    int4_block<R, T>(a, r, b, kBlock / kGroup, xp + (b - b0) * kBlock, kc, &scale[0][b - b0],
                     kChunkBlocks, acc);
  if (b < b1)  // the row's partial last block: whole groups, x is zero past cols
    int4_block<R, T>(a, r, b, (a.cols - b * kBlock + kGroup - 1) / kGroup, xp + (b - b0) * kBlock,
                     kc, &scale[0][b - b0], kChunkBlocks, acc);
}

// One group of 16 bf16 weights of R rows, each row read from `rows[i]`.
template <int R, int T>
FERRY_AVX2_INLINE void bf16_group(const uint16_t* const (&rows)[R], const float* xg, uint64_t kc,
                                  __m256 (&acc)[R][T]) {
  const __m256i high = _mm256_set1_epi32(int32_t(0xffff0000u));
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i]));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, high));
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) {
      acc[i][j] = _mm256_fmadd_ps(even, _mm256_load_ps(xg + j * kc), acc[i][j]);
      acc[i][j] = _mm256_fmadd_ps(odd, _mm256_load_ps(xg + j * kc + 8), acc[i][j]);
    }
  }
}

// Columns [k0, k1) (one chunk) of rows r .. r+R-1; state points at row r's panel accumulators.
template <int R, int T>
FERRY_AVX2 void bf16_tile(const Bf16Rows& a, uint64_t r, uint64_t k0, uint64_t k1, const float* xp,
                          uint64_t kc, __m256* state) {
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) acc[i][j] = state[i * kMaxTile + j];
  const uint64_t full = (k1 - k0) / kGroup;
  const uint16_t* rows[R];
  for (uint64_t g = 0; g < full; ++g) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) rows[i] = a.w + (r + i) * a.cols + k0 + g * kGroup;
    bf16_group<R, T>(rows, xp + g * kGroup, kc, acc);
  }
  if (const uint64_t rest = k1 - k0 - full * kGroup; rest > 0) {
    // The row's last elements, through zero-padded copies: never a read past the row.
    alignas(32) uint16_t tail[R][kGroup] = {};
    for (int i = 0; i < R; ++i) {
      std::memcpy(tail[i], a.w + (r + i) * a.cols + k0 + full * kGroup, rest * sizeof(uint16_t));
      rows[i] = tail[i];
    }
    bf16_group<R, T>(rows, xp + full * kGroup, kc, acc);
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) state[i * kMaxTile + j] = acc[i][j];
}

// Rows per tile for T tokens: R * T independent FMA chains (each takes 2 FMAs of ~4 cycles per
// group of 16, so 8 chains keep two FMA ports busy) within 16 ymm registers (R * T accumulators,
// 2 weight vectors, x read from L1 as a memory operand).
template <int T>
constexpr int rows_per_tile() {
  return T == 1 ? 8 : T == 2 ? 4 : T == 3 ? 3 : T <= 6 ? 2 : 1;
}

// Rows [p0, p1) of a panel for a tile of T tokens, over one chunk.
template <int T>
FERRY_AVX2 void int4_panel(const Int4View& a, uint64_t p0, uint64_t p1, uint64_t b0, uint64_t b1,
                           const float* xp, uint64_t kc, PanelState& st) {
  constexpr int R = rows_per_tile<T>();
  uint64_t r = p0;
  for (; r + R <= p1; r += R) int4_tile<R, T>(a, r, b0, b1, xp, kc, st.acc[r - p0]);
  for (; r < p1; ++r) int4_tile<1, T>(a, r, b0, b1, xp, kc, st.acc[r - p0]);
}

template <int T>
FERRY_AVX2 void bf16_panel(const Bf16Rows& a, uint64_t p0, uint64_t p1, uint64_t k0, uint64_t k1,
                           const float* xp, uint64_t kc, PanelState& st) {
  constexpr int R = rows_per_tile<T>();
  uint64_t r = p0;
  for (; r + R <= p1; r += R) bf16_tile<R, T>(a, r, k0, k1, xp, kc, st.acc[r - p0]);
  for (; r < p1; ++r) bf16_tile<1, T>(a, r, k0, k1, xp, kc, st.acc[r - p0]);
}

// Calls f(std::integral_constant<int, T>) for T = tn (1 .. kMaxTile).
template <class F>
FERRY_AVX2_INLINE void with_tile(uint64_t tn, F&& f) {
  switch (tn) {
    case 1:
      return f(std::integral_constant<int, 1>());
    case 2:
      return f(std::integral_constant<int, 2>());
    case 3:
      return f(std::integral_constant<int, 3>());
    case 4:
      return f(std::integral_constant<int, 4>());
    case 5:
      return f(std::integral_constant<int, 5>());
    case 6:
      return f(std::integral_constant<int, 6>());
    case 7:
      return f(std::integral_constant<int, 7>());
    default:
      return f(std::integral_constant<int, 8>());
  }
}

// Rows [r0, r1) of y for all n tokens: token tiles, then panels of rows, then chunks of columns.
// Weights: int4 (a4 != nullptr) or bf16.
FERRY_AVX2 void rows_avx2(const Int4View* a4, const Bf16Rows* a16, uint64_t r0, uint64_t r1,
                          const float* x, uint64_t n, float* y) {
  const uint64_t rows = a4 ? a4->rows : a16->rows, cols = a4 ? a4->cols : a16->cols;
  alignas(32) float xp[kXFloats];                 // [tn, kc] x chunk, pair order
  alignas(32) float sums[kMaxTile * kMaxBlocks];  // [tn, kMaxBlocks] INT4 block sums of x
  PanelState st;                                  // [kPanel rows, kMaxTile] accumulators
  for (uint64_t t0 = 0; t0 < n; t0 += kMaxTile) {
    const uint64_t tn = std::min(kMaxTile, n - t0);
    const uint64_t kc = chunk_cols(tn);
    const bool one_chunk = cols <= kc;  // x is permuted once per tile, not once per panel
    if (a4) block_sums(x + t0 * cols, cols, tn, a4->blocks(), sums);
    for (uint64_t p0 = r0; p0 < r1; p0 += kPanel) {
      const uint64_t p1 = std::min(r1, p0 + kPanel);
      for (uint64_t i = 0; i < p1 - p0; ++i)
        for (uint64_t t = 0; t < kMaxTile; ++t) st.acc[i][t] = _mm256_setzero_ps();
      for (uint64_t k0 = 0; k0 < cols; k0 += kc) {
        const uint64_t k1 = std::min(cols, k0 + kc);
        if (!one_chunk || p0 == r0) permute_x(x + t0 * cols, cols, tn, k0, k1, kc, xp);
        with_tile(tn, [&](auto tile) {
          constexpr int T = decltype(tile)::value;
          if (a4)
            int4_panel<T>(*a4, p0, p1, k0 / kBlock, (k1 + kBlock - 1) / kBlock, xp, kc, st);
          else
            bf16_panel<T>(*a16, p0, p1, k0, k1, xp, kc, st);
        });
      }
      for (uint64_t i = 0; i < p1 - p0; ++i)
        for (uint64_t t = 0; t < tn; ++t)
          y[(t0 + t) * rows + p0 + i] =
              hsum(st.acc[i][t]) + (a4 ? row_offset(*a4, p0 + i, sums + t * kMaxBlocks) : 0.0f);
    }
  }
}

// INT4 x INT8 tile of R rows x T tokens over all blocks: per block and row the 64 code bytes
// unpack into 4 vectors of 32 u8 (low and high nibbles), maddubs with the token's 4 vectors of
// q gives i16 pair sums (at most 2 * 15 * 127 = 3810; the 4 added, 15,240 < 32,767), madd with
// ones the i32 lane sums, exact; acc += float(lanes) * d_b * scale_b + min_b * (d_b qsum_b, 0..).
template <int R, int T>
FERRY_AVX2 void q8_tile(const Int4View& a, uint64_t r, const Q8Tile& t, uint64_t j0, float* y,
                        uint64_t t0) {
  const uint64_t blocks = a.blocks();
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  for (uint64_t b = 0; b < blocks; ++b) {
    __m256 d[T];
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) d[j] = _mm256_broadcast_ss(t.d + (j0 + j) * kQ8MaxBlocks + b);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const uint8_t* p = a.q + ((r + i) * blocks + b) * kBlockBytes;
      if constexpr (T == 1) _mm_prefetch(reinterpret_cast<const char*>(p) + 4096, _MM_HINT_T0);
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
      const __m256i c0 = _mm256_and_si256(v0, nibble);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nibble);
      const __m256i c2 = _mm256_and_si256(v1, nibble);
      const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nibble);
      const float sf = _cvtsh_ss(a.scales[(r + i) * blocks + b]);
      const __m256 s = _mm256_set1_ps(sf);
      const __m256 m =
          _mm256_set1_ps(a.mins ? _cvtsh_ss(a.mins[(r + i) * blocks + b]) : -8.0f * sf);
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) {
        const __m256i* q =
            reinterpret_cast<const __m256i*>(t.q + (j0 + j) * blocks * kBlock + b * kBlock);
        __m256i s16 = _mm256_maddubs_epi16(c0, _mm256_load_si256(q));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c1, _mm256_load_si256(q + 1)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c2, _mm256_load_si256(q + 2)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c3, _mm256_load_si256(q + 3)));
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
        acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(f, d[j]), s, acc[i][j]);
        acc[i][j] = _mm256_fmadd_ps(m, _mm256_load_ps(t.off + ((j0 + j) * kQ8MaxBlocks + b) * 8),
                                    acc[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) y[(t0 + j0 + j) * a.rows + r + i] = hsum(acc[i][j]);
}

// q8_block_portable in 8 lanes, bit for bit: the max of |x| is order-free (max_ps(|x|, m) keeps
// m when |x| is a NaN, as std::max(amax, NaN) does); x * inv rounds to nearest even as nearbyint
// does in the default mode, but inline: nearbyintf is a libm call per element, which made the
// quantization of a 576-column row cost as much as its products with the 192 rows of k or v;
// min_ps(hi, max_ps(lo, v)) keeps a NaN as std::clamp does, and cvttps gives it 0x80000000.
FERRY_AVX2 float q8_block_avx2(const float* x, uint64_t len, int32_t* qi) {
  const uint64_t full = len / 8 * 8;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (uint64_t e = 0; e < full; e += 8)
    m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + e)), m);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float amax = _mm_cvtss_f32(h);
  for (uint64_t e = full; e < len; ++e) amax = std::max(amax, std::fabs(x[e]));
  const float inv = amax > kQ8MinBlockMax ? 127.0f / amax : 0.0f;
  const __m256 iv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (uint64_t e = 0; e < full; e += 8) {
    const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + e), iv),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qi + e),
                        _mm256_cvttps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v))));
  }
  for (uint64_t e = full; e < kBlock; ++e)
    qi[e] = e < len ? int32_t(std::clamp(std::nearbyint(x[e] * inv), -127.0f, 127.0f)) : 0;
  return amax;
}

// Rows per INT4 x INT8 tile: R * T accumulators, 4 unpacked code vectors and a few temporaries
// within 16 ymm registers. One token (decode) walks one row at a time, prefetched 4 KB ahead: a
// single stream the hardware prefetcher follows, as the AVX-512 decode row does (4 rows side by
// side were 4 streams; one thread, bench_kernels int4 4096 x 4096 n=1 q8:2 on the 2-core EPYC:
// 5.6-8.5 -> 15-20 GB/s, bit-identical sums).
template <int T>
constexpr int q8_rows_per_tile() {
  return T == 1 ? 1 : T == 2 ? 3 : T <= 4 ? 2 : 1;
}

// Rows [r0, r1) of y for the tn tokens from t0 whose quantized activations t holds: tokens in
// tiles of up to 4 (the register tile), rows in panels that stay in L1/L2 while the token
// sub-tiles pass over them.
FERRY_AVX2 void q8_tile_rows_avx2(const Int4View& a, uint64_t r0, uint64_t r1, const Q8Tile& t,
                                  uint64_t tn, float* y, uint64_t t0) {
  for (uint64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const uint64_t p1 = std::min(r1, p0 + kPanel);
    for (uint64_t j0 = 0; j0 < tn; j0 += 4)
      with_tile(std::min<uint64_t>(4, tn - j0), [&](auto tile) {
        constexpr int T = decltype(tile)::value;
        constexpr int R = q8_rows_per_tile<T>();
        uint64_t r = p0;
        for (; r + R <= p1; r += R) q8_tile<R, T>(a, r, t, j0, y, t0);
        for (; r < p1; ++r) q8_tile<1, T>(a, r, t, j0, y, t0);
      });
  }
}

#undef FERRY_AVX2
#undef FERRY_AVX2_INLINE
#endif  // FERRY_X86

// The arguments of one call: the task lambdas capture only a pointer to it, which std::function
// stores in place (libstdc++ keeps up to 16 bytes without allocating).
template <class Rows>
struct Call {
  Rows a;
  const float* x;
  uint64_t n;
  float* y;
  bool avx2;
};

// A fused call on INT8 activations: its parts share x; h (the gate/up epilogue's output) or null.
// isa is usable (usable_isa): the tiles and quantize_q8 agree on the q order it implies.
struct FusedCall {
  std::span<const FusedPart> parts;
  const float* x;
  uint64_t n;
  KernelIsa isa;
  float* h;
};

// Rows [r0, r1) of one INT4 part for the tn quantized tokens from t0 in t.
void q8_tile_rows(const FusedCall& c, const FusedPart& p, uint64_t r0, uint64_t r1, const Q8Tile& t,
                  uint64_t tn, uint64_t t0) {
  if (c.isa == KernelIsa::avx512) return q8::tile_rows_avx512(p.q4, r0, r1, t, tn, p.y, t0);
#if FERRY_X86
  if (c.isa == KernelIsa::avx2) return q8_tile_rows_avx2(p.q4, r0, r1, t, tn, p.y, t0);
#endif
  q8_tile_rows_portable(p.q4, r0, r1, t, tn, p.y, t0);
}

bool q8_fits(const FusedPart& p) {
  return p.int8 ? matmul_int8_q8_fits(p.q8) : p.q4.blocks() <= kQ8MaxBlocks;
}

// One task of a fused call: rows [r0, r1) of the parts' joint range. The INT4 parts go token
// tile by token tile on x quantized once per tile; an INT8 part's rows run as
// matmul_int8_q8_cpu runs them (its own quantized layout).
void fused_rows(const FusedCall& c, uint64_t r0, uint64_t r1) {
  Q8Tile t;  // 328 KB of the task's stack (pool threads have 8 MB)
  const uint64_t cols = c.parts[0].cols();
  bool int4_here = false;
  uint64_t base = 0;  // the part's first row in the joint range
  for (const FusedPart& p : c.parts) {
    const uint64_t b0 = std::max(r0, base), b1 = std::min(r1, base + p.rows());
    if (b0 < b1 && p.int8)
      matmul_int8_q8_rows_cpu(p.q8, c.x, c.n, p.y, b0 - base, b1 - base, c.isa);
    int4_here = int4_here || (b0 < b1 && !p.int8);
    base += p.rows();
  }
  if (!int4_here) return;
  for (uint64_t t0 = 0; t0 < c.n; t0 += kMaxTile) {
    const uint64_t tn = std::min(kMaxTile, c.n - t0);
    quantize_q8(c.x + t0 * cols, cols, tn, t, c.isa);
    base = 0;
    for (const FusedPart& p : c.parts) {
      const uint64_t b0 = std::max(r0, base), b1 = std::min(r1, base + p.rows());
      if (b0 < b1 && !p.int8) q8_tile_rows(c, p, b0 - base, b1 - base, t, tn, t0);
      base += p.rows();
    }
  }
}

}  // namespace

void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y, KernelIsa isa) {
  if (rows == 0 || n == 0) return;
  const Call<Bf16Rows> call{{w, rows, cols}, x, n, y, isa_has_avx2(isa)};
  pool.parallel_for(rows, row_grain(cols, n), [c = &call](uint64_t r0, uint64_t r1) {
#if FERRY_X86
    if (c->avx2) return rows_avx2(nullptr, &c->a, r0, r1, c->x, c->n, c->y);
#endif
    bf16_rows_portable(c->a, r0, r1, c->x, c->n, c->y);
  });
}

void matmul_int4_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y,
                     KernelIsa isa) {
  const uint64_t rows = w.rows, cols = w.cols;
  if (rows == 0 || n == 0) return;
  const bool avx2 = isa_has_avx2(isa);
  const Call<Int4View> call{w, x, n, y, avx2};
  if (call.a.blocks() > kMaxBlocks)
    throw Error(fmt::format("matmul_int4_cpu: {} columns exceed the kernel's {}", cols,
                            kMaxBlocks * kBlock));
  pool.parallel_for(rows, row_grain(cols, n), [c = &call](uint64_t r0, uint64_t r1) {
#if FERRY_X86
    if (c->avx2) return rows_avx2(&c->a, nullptr, r0, r1, c->x, c->n, c->y);
#endif
    int4_rows_portable(c->a, r0, r1, c->x, c->n, c->y);
  });
}

void matmul_bf16_cpu(CpuPool& pool, const uint16_t* w, uint64_t rows, uint64_t cols, const float* x,
                     uint64_t n, float* y) {
  matmul_bf16_cpu(pool, w, rows, cols, x, n, y, best_kernel_isa());
}

void matmul_int4_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y) {
  matmul_int4_cpu(pool, w, x, n, y, best_kernel_isa());
}

void matmul_int4_q8_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y,
                        KernelIsa isa) {
  const FusedPart part{.q4 = w, .q8 = {}, .y = y};
  matmul_q8_fused_cpu(pool, &part, 1, x, n, isa);
}

void matmul_q8_fused_cpu(CpuPool& pool, const FusedPart* part_list, size_t count, const float* x,
                         uint64_t n, KernelIsa isa) {
  const std::span<const FusedPart> parts(part_list, count);
  if (parts.empty() || n == 0) return;
  const uint64_t cols = parts[0].cols();
  uint64_t rows = 0;
  bool fits = true;
  for (const FusedPart& p : parts) {
    if (p.cols() != cols)
      throw Error(fmt::format("matmul_q8_fused_cpu: {} columns beside {}", p.cols(), cols));
    rows += p.rows();
    fits = fits && q8_fits(p);
  }
  if (!fits) {  // one product after another: what separate calls would run
    for (const FusedPart& p : parts)
      if (p.int8)
        matmul_int8_q8_cpu(pool, p.q8, x, n, p.y, isa);
      else if (p.q4.blocks() > kQ8MaxBlocks)
        matmul_int4_cpu(pool, p.q4, x, n, p.y, isa);  // the fp32 path
      else
        matmul_q8_fused_cpu(pool, &p, 1, x, n, isa);
    return;
  }
  const FusedCall call{parts, x, n, usable_isa(isa), nullptr};
  pool.parallel_for(rows, row_grain(cols, n),
                    [c = &call](uint64_t r0, uint64_t r1) { fused_rows(*c, r0, r1); });
}

void matmul_int4_q8_gate_up_cpu(CpuPool& pool, const Int4View& gate, const Int4View& up,
                                const float* x, uint64_t n, float* gate_y, float* up_y, float* h,
                                KernelIsa isa) {
  if (gate.rows != up.rows || gate.cols != up.cols)
    throw Error(fmt::format("matmul_int4_q8_gate_up_cpu: gate [{}, {}] and up [{}, {}] differ",
                            gate.rows, gate.cols, up.rows, up.cols));
  if (gate.rows == 0 || n == 0) return;
  const FusedPart parts[2] = {{.q4 = gate, .q8 = {}, .y = gate_y}, {.q4 = up, .q8 = {}, .y = up_y}};
  if (gate.blocks() > kQ8MaxBlocks) {  // as separate calls would run
    matmul_q8_fused_cpu(pool, parts, 2, x, n, isa);
    silu_mul_cpu(gate_y, up_y, n * gate.rows, h);
    return;
  }
  const FusedCall call{parts, x, n, usable_isa(isa), h};
  // Each index of the range is a row of both weights: half the rows per task for the same work.
  const uint64_t grain = std::max<uint64_t>(1, row_grain(gate.cols, n) / 2);
  pool.parallel_for(gate.rows, grain, [c = &call](uint64_t r0, uint64_t r1) {
    Q8Tile t;  // 328 KB of the task's stack (pool threads have 8 MB)
    const uint64_t rows = c->parts[0].rows(), cols = c->parts[0].cols();
    for (uint64_t t0 = 0; t0 < c->n; t0 += kMaxTile) {
      const uint64_t tn = std::min(kMaxTile, c->n - t0);
      quantize_q8(c->x + t0 * cols, cols, tn, t, c->isa);
      for (const FusedPart& p : c->parts) q8_tile_rows(*c, p, r0, r1, t, tn, t0);
    }
    // The epilogue on this task's rows of every token: the same function, element by element,
    // as silu_mul_cpu over the whole [n, rows] after separate calls.
    for (uint64_t j = 0; j < c->n; ++j) {
      const uint64_t at = j * rows + r0;
      silu_mul_cpu(c->parts[0].y + at, c->parts[1].y + at, r1 - r0, c->h + at);
    }
  });
}

float quantize_q8_block_cpu(const float* x, uint64_t len, int32_t* q, KernelIsa isa) {
  if (len > kBlock)
    throw Error(fmt::format("quantize_q8_block_cpu: {} > {} elements", len, kBlock));
#if FERRY_X86
  if (isa_has_avx2(isa)) return q8_block_avx2(x, len, q);
#endif
  (void)isa;
  return q8_block_portable(x, len, q);
}

void matmul_int4_q8_cpu(CpuPool& pool, const Int4View& w, const float* x, uint64_t n, float* y) {
  matmul_int4_q8_cpu(pool, w, x, n, y, best_kernel_isa());
}

}  // namespace ferry
