// The INT4 x INT8 product's AVX-512 VNNI tile (KernelIsa::avx512; the arithmetic and its error
// bound are those of the INT4 x INT8 section of kernels/matmul_cpu.cpp, whose AVX2 and portable
// tiles compute the same products).
//
// Why a second tile and not the AVX2 one with wider instructions: per block, row and token the
// AVX2 tile reloads the token's 128 bytes of q from L1 (four 32-byte loads, its register file
// holds 16 ymm: the codes of R rows and R x T accumulators leave no room for q), and a drop-in
// 256-bit vpdpbusd for its maddubs/madd measured no faster (README, 2026-12-04): the loads held
// it. With 32 zmm registers this tile keeps q of T = 4 tokens in 8 registers for a whole block
// and walks R rows past them: per block 8 loads of q and one 64-byte load of codes per row,
// against 4 x R x T loads before; per row and token 2 vpdpbusd (64 u8 x s8 products each, exact
// in int32), a conversion, a multiply by the row's scale and an FMA by the token's d.
// The offset term (min_b times d_b * qsum_b) goes into the same 16 lanes after the blocks, 16
// blocks per step. Each (row, token) sums its blocks in one fixed order in
// 16 lanes, whatever R, T, the thread count or the batch split: results are bit-identical
// across them (tests/test_matmul.cpp), as on the other paths.
#include "kernels/q8_tile.hpp"

#include "base/cpu_isa.hpp"
#include "base/error.hpp"

#if FERRY_X86
// GCC 12's AVX-512 intrinsics seed their pass-through operand with _mm512_undefined_ps() (a
// self-initialised variable), which -Wuninitialized reports once inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <algorithm>
#endif

namespace ferry::q8 {

#if FERRY_X86
namespace {

#define FERRY_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define FERRY_AVX512_INLINE                                                    \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"), \
                 always_inline)) inline

FERRY_AVX512_INLINE void prefetch(const void* p) {
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
}

// Blocks [b, b + 16) of row r's offsets as floats (lanes past the row's blocks zero): its mins,
// or for sym -8 * its scales (exact).
FERRY_AVX512_INLINE __m512 offsets16(const Int4View& a, uint64_t r, uint64_t b, __mmask16 k) {
  const uint16_t* m = (a.mins ? a.mins : a.scales) + r * a.blocks() + b;
  const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, m));
  return a.mins ? v : _mm512_mul_ps(v, _mm512_set1_ps(-8.0f));
}

// The offset term, 16 blocks a step into the (row, token) lanes: one reduction per (row, token)
// after it. (Per (row, token) a separate 8-wide dot with a scalar tail cost 2.5x the whole
// product on SmolLM2's 576-column rows, 5 blocks.)
template <int R, int T>
FERRY_AVX512_INLINE void add_offsets(const Int4View& a, uint64_t r, const Tile& t, uint64_t j0,
                                     __m512 (&acc)[R][T]) {
  const uint64_t blocks = a.blocks();
  for (uint64_t b = 0; b < blocks; b += 16) {
    const __mmask16 k = blocks - b >= 16 ? __mmask16(0xffff) : __mmask16((1u << (blocks - b)) - 1);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 m = offsets16(a, r + i, b, k);
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j)
        acc[i][j] = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(k, t.sums + (j0 + j) * kMaxBlocks + b),
                                    acc[i][j]);
    }
  }
}

// R rows from r x T tokens from j0 of the tile, over every block: per block, q of the T tokens
// loaded once; per row its codes unpacked once; per (row, token) 2 vpdpbusd, and the block's
// scale times the token's d as one FMA's multiplier.
template <int R, int T>
FERRY_AVX512 void tile(const Int4View& a, uint64_t r, const Tile& t, uint64_t j0, float* y,
                       uint64_t t0) {
  const uint64_t blocks = a.blocks();
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi8(15);
  for (uint64_t b = 0; b < blocks; ++b) {
    __m512i q[T][2];
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) {
      const int8_t* qb = t.q + (j0 + j) * blocks * kBlock + b * kBlock;
      q[j][0] = _mm512_load_si512(qb);
      q[j][1] = _mm512_load_si512(qb + 64);
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const uint8_t* codes = a.q + ((r + i) * blocks + b) * kBlockBytes;
      // Decode reads each weight once: 2 KB ahead of each of the R rows' streams (bench_kernels
      // 11008 x 4096 at one token: 0.85 -> 0.63-0.77 ms on the 2-core EPYC; 512 B ahead gained
      // less), more than the hardware prefetcher keeps in flight for 8 streams.
      const __m512i v = _mm512_loadu_si512(codes);
      const __m512i lo = _mm512_and_si512(v, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(a.scales[(r + i) * blocks + b]));
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) {
        __m512i isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, q[j][0]);
        isum = _mm512_dpbusd_epi32(isum, hi, q[j][1]);
        const __m512 sd = _mm512_mul_ps(s, _mm512_set1_ps(t.d[(j0 + j) * kMaxBlocks + b]));
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sd, acc[i][j]);
      }
    }
  }
  add_offsets<R, T>(a, r, t, j0, acc);
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) y[(t0 + j0 + j) * a.rows + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

// tile<1, 1>, decode: one row at a time, the same sums (each block's scale times the token's d,
// rounded as there, then one FMA into the lanes), with the 16 products s * d made by one multiply
// per 16 blocks and picked per block by a permute: 9 instructions per block instead of 12.
// One row, not R: decode reads each weight once, so a core's read bandwidth is the limit, and a
// row's codes read front to back are one stream the hardware prefetcher follows. Eight rows side
// by side were eight streams 2.5 KB apart (one 5120-wide row of 40 blocks) that it did not keep
// ahead of: on the 2-core EPYC, one thread, bench_kernels 11008 x 4096 went 16-19 -> 22-26 GB/s
// (its plain read loop: 26.5), ferry bench qwen2-32b (16 layers) 6.3-6.4 -> 7.4-7.8 tokens/s.
// q's two loads a block come from L1. The software prefetch still pays on long rows (11008
// columns, one thread: none 19, 1 KB ahead 22, 2 KB 23, 4 KB 24-27, 8 KB 23-27 GB/s; with eight
// rows a tile 4 KB ahead, 32 KB in all, measured slower than 2 KB).
FERRY_AVX512 void row1(const Int4View& a, uint64_t r, const Tile& t, uint64_t j0, float* y,
                       uint64_t t0) {
  const uint64_t blocks = a.blocks();
  __m512 acc[1][1] = {{_mm512_setzero_ps()}};
  const __m512i nibble = _mm512_set1_epi8(15);
  const float* d = t.d + j0 * kMaxBlocks;
  const int8_t* qt = t.q + j0 * blocks * kBlock;
  const uint8_t* codes = a.q + r * blocks * kBlockBytes;
  for (uint64_t g = 0; g < blocks; g += 16) {
    const uint64_t in_group = std::min<uint64_t>(16, blocks - g);
    const __mmask16 k = __mmask16((1u << in_group) - 1);
    const __m512 sd16 =
        _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, a.scales + r * blocks + g)),
                      _mm512_maskz_loadu_ps(k, d + g));
    for (uint64_t bb = 0; bb < in_group; ++bb) {
      const uint64_t b = g + bb;
      const uint8_t* cb = codes + b * kBlockBytes;
      prefetch(cb + 4096);
      const __m512i v = _mm512_loadu_si512(cb);
      const __m512i lo = _mm512_and_si512(v, nibble);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      __m512i isum =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512(qt + b * kBlock));
      isum = _mm512_dpbusd_epi32(isum, hi, _mm512_load_si512(qt + b * kBlock + 64));
      acc[0][0] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                          _mm512_permutexvar_ps(_mm512_set1_epi32(int32_t(bb)), sd16), acc[0][0]);
    }
  }
  add_offsets<1, 1>(a, r, t, j0, acc);
  y[(t0 + j0) * a.rows + r] = _mm512_reduce_add_ps(acc[0][0]);
}

// Rows per tile for T tokens: 2 T registers of q, R x T accumulators, the row's two code vectors,
// its scale and two temporaries within 32 zmm. One token (decode) walks one row at a time, a
// single stream through memory (row1's comment; the INT8 tile too: SmolLM2's 49152 x 576 lm_head
// on one thread 19-20 -> 27-29 GB/s).
template <int T>
constexpr int rows_per_tile() {
  return T == 1 ? 1 : T == 2 ? 6 : 4;
}

// Rows are walked in panels that stay in L1/L2 while the token sub-tiles pass over them: 48
// rows, a multiple of every R above.
constexpr uint64_t kPanel = 48;

template <int T>
FERRY_AVX512 void panel(const Int4View& a, uint64_t p0, uint64_t p1, const Tile& t, uint64_t j0,
                        float* y, uint64_t t0) {
  constexpr int R = rows_per_tile<T>();
  uint64_t r = p0;
  if constexpr (T == 1) {
    for (; r < p1; ++r) row1(a, r, t, j0, y, t0);
  } else {
    for (; r + R <= p1; r += R) tile<R, T>(a, r, t, j0, y, t0);
    for (; r < p1; ++r) tile<1, T>(a, r, t, j0, y, t0);
  }
}

// Rows [r0, r1) in panels of kPanel rows, each against the tile's tokens in groups of up to 4:
// f(p0, p1, j0, std::integral_constant<int, T>) per panel and group.
template <class F>
void for_panels(uint64_t r0, uint64_t r1, uint64_t tn, F&& f) {
  for (uint64_t p0 = r0; p0 < r1; p0 += kPanel) {
    const uint64_t p1 = std::min(r1, p0 + kPanel);
    for (uint64_t j0 = 0; j0 < tn; j0 += 4) {
      switch (std::min<uint64_t>(4, tn - j0)) {
        case 1:
          f(p0, p1, j0, std::integral_constant<int, 1>());
          break;
        case 2:
          f(p0, p1, j0, std::integral_constant<int, 2>());
          break;
        case 3:
          f(p0, p1, j0, std::integral_constant<int, 3>());
          break;
        default:
          f(p0, p1, j0, std::integral_constant<int, 4>());
          break;
      }
    }
  }
}

}  // namespace

// INT8 x INT8, R rows from r x T tokens from j0. vpdpbusd multiplies unsigned by signed bytes:
// the weights go in as w + 128 (w xor 0x80), so each block's int32 sum is sum(w q) + 128 qsum;
// the 128 qsum parts are taken out after the blocks, 16 a step, as the INT4 tile's offsets are
// added (scale_b * d_b * 128 qsum_b, from the tile's d * qsum). Everything else is the INT4
// tile's: q of 4 tokens in 8 registers per block, one FMA per row, token and block.
template <int R, int T>
FERRY_AVX512 void tile_int8(const Int8View& w, uint64_t r, const Int8Acts& x, uint64_t j0, float* y,
                            uint64_t t0) {
  const uint64_t blocks = w.blocks();
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  for (uint64_t b = 0; b < blocks; ++b) {
    __m512i q[T][2];
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) {
      const int8_t* qb = x.q + ((j0 + j) * x.stride + b) * kBlock;
      q[j][0] = _mm512_loadu_si512(qb);
      q[j][1] = _mm512_loadu_si512(qb + 64);
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const int8_t* wb = w.q + ((r + i) * blocks + b) * kBlock;
      if constexpr (T == 1) prefetch(wb + 2048);  // one row at a time at decode (rows_per_tile)
      const __m512i w0 = _mm512_xor_si512(_mm512_loadu_si512(wb), bias);
      const __m512i w1 = _mm512_xor_si512(_mm512_loadu_si512(wb + 64), bias);
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(w.scales[(r + i) * blocks + b]));
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j) {
        __m512i isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, q[j][0]);
        isum = _mm512_dpbusd_epi32(isum, w1, q[j][1]);
        const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), s);
        acc[i][j] = _mm512_fmadd_ps(f, _mm512_set1_ps(x.d[(j0 + j) * x.stride + b]), acc[i][j]);
      }
    }
  }
  const __m512 minus128 = _mm512_set1_ps(-128.0f);
  for (uint64_t b = 0; b < blocks; b += 16) {
    const __mmask16 k = blocks - b >= 16 ? __mmask16(0xffff) : __mmask16((1u << (blocks - b)) - 1);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512 m = _mm512_mul_ps(
          _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w.scales + (r + i) * blocks + b)), minus128);
#pragma GCC unroll 8
      for (int j = 0; j < T; ++j)
        acc[i][j] = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(k, x.sums + (j0 + j) * x.stride + b),
                                    acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < T; ++j) y[(t0 + j0 + j) * w.rows + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

// INT8 rows per tile: as the INT4 tile's, with two code vectors a row.
template <int T>
FERRY_AVX512 void panel_int8(const Int8View& w, uint64_t p0, uint64_t p1, const Int8Acts& x,
                             uint64_t j0, float* y, uint64_t t0) {
  constexpr int R = rows_per_tile<T>();
  uint64_t r = p0;
  for (; r + R <= p1; r += R) tile_int8<R, T>(w, r, x, j0, y, t0);
  for (; r < p1; ++r) tile_int8<1, T>(w, r, x, j0, y, t0);
}

// Element order to zmm order (q8_tile.hpp): the stored block is [evens of 0..63, evens of
// 64..127, odds of 0..63, odds of 64..127], 32 each; two permutes gather 16 evens (or odds) of
// 32 int32s, and a truncating vpmovdb keeps each low byte. The sum is of the sign-extended low
// bytes (a NaN's 0x80000000 counts 0, as the scalar loop's int8_t cast does).
FERRY_AVX512 int32_t pack_block_avx512(const int32_t* qi, int8_t* qb) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  __m512i sum = _mm512_setzero_si512();
  for (int h = 0; h < 2; ++h) {  // elements 64h .. 64h + 63
    __m512i a[4];
    for (int k = 0; k < 4; ++k) {
      a[k] = _mm512_loadu_si512(qi + 64 * h + 16 * k);
      sum = _mm512_add_epi32(sum, _mm512_srai_epi32(_mm512_slli_epi32(a[k], 24), 24));
    }
    for (int k = 0; k < 2; ++k) {  // elements 64h + 32k .. +31
      const __m512i ev = _mm512_permutex2var_epi32(a[2 * k], even, a[2 * k + 1]);
      const __m512i od = _mm512_permutex2var_epi32(a[2 * k], odd, a[2 * k + 1]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 32 * h + 16 * k), _mm512_cvtepi32_epi8(ev));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 64 + 32 * h + 16 * k),
                       _mm512_cvtepi32_epi8(od));
    }
  }
  return _mm512_reduce_add_epi32(sum);
}

void tile_rows_avx512(const Int4View& a, uint64_t r0, uint64_t r1, const Tile& t, uint64_t tn,
                      float* y, uint64_t t0) {
  for_panels(r0, r1, tn, [&](uint64_t p0, uint64_t p1, uint64_t j0, auto tile_tokens) {
    panel<decltype(tile_tokens)::value>(a, p0, p1, t, j0, y, t0);
  });
}

void tile_rows_int8_avx512(const Int8View& w, uint64_t r0, uint64_t r1, const Int8Acts& x,
                           uint64_t tn, float* y, uint64_t t0) {
  for_panels(r0, r1, tn, [&](uint64_t p0, uint64_t p1, uint64_t j0, auto tile_tokens) {
    panel_int8<decltype(tile_tokens)::value>(w, p0, p1, x, j0, y, t0);
  });
}

#undef FERRY_AVX512
#undef FERRY_AVX512_INLINE
#else  // no x86: kernel_isa_available(KernelIsa::avx512) is false, so nothing calls these
int32_t pack_block_avx512(const int32_t*, int8_t*) {
  throw Error("pack_block_avx512: AVX-512 kernels exist on x86 only");
}
void tile_rows_int8_avx512(const Int8View&, uint64_t, uint64_t, const Int8Acts&, uint64_t, float*,
                           uint64_t) {
  throw Error("tile_rows_int8_avx512: AVX-512 kernels exist on x86 only");
}
void tile_rows_avx512(const Int4View&, uint64_t, uint64_t, const Tile&, uint64_t, float*,
                      uint64_t) {
  throw Error("tile_rows_avx512: AVX-512 kernels exist on x86 only");
}
#endif

}  // namespace ferry::q8
