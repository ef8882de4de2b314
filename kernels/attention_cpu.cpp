// The CPU twin of attention_cuda (kernels/attention.hpp): flash-decoding chunks of the context
// spread over the pool's threads, each leaving a partial softmax state, then a merge per head.
#include <algorithm>
#include <array>
#include <cmath>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/simd.hpp"
#include "kernels/attention.hpp"
#include "kernels/exp_avx2.hpp"

#if FERRY_X86
#include <immintrin.h>
#endif

namespace ferry {

const char* kv_type_name(KvType t) {
  return t == KvType::f16 ? "f16" : "f32";
}

std::optional<KvType> kv_type_from_name(std::string_view n) {
  if (n == "f16") return KvType::f16;
  if (n == "f32") return KvType::f32;
  return std::nullopt;
}

namespace {

// One attention call over a cache of T: float, or uint16_t holding f16 bits.
template <typename T>
struct AttentionCall {
  const float* q;
  const T *k_cache, *v_cache;
  uint64_t pos, heads, kv_heads, head_dim, chunks;  // chunks: per (query, head) in `partials`
  float* partials;
  float* out;
  bool avx2;  // f16 rows: convert with F16C (else the portable path)
};

// a . b in 8 independent partial sums, which the compiler keeps in one vector register: a single
// running sum is a chain of dependent adds that it may not reorder. With it, attention at head_dim
// 128 runs 1.4x faster at 2k and 8k positions and 1.5x in prefill (bench_kernels, 2 cores).
FERRY_ALWAYS_INLINE float dot8_body(const float* a, const float* b, uint64_t n) {
  float acc[8] = {};
  uint64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (uint64_t j = 0; j < 8; ++j) acc[j] += a[d + j] * b[d + j];
  float sum = 0;
  for (; d < n; ++d) sum += a[d] * b[d];
  for (float x : acc) sum += x;
  return sum;
}

// out[d] = sum over i < len of w[i] * rows[i * stride + d], d < n, each sum in order of i. 32
// outputs at a time stay in four vector registers over all the rows: adding each row into `out`
// in memory instead kept a store-to-load chain per element and took 45% of attention's time.
FERRY_ALWAYS_INLINE void weighted_rows_body(const float* w, const float* rows, uint64_t stride,
                                            uint64_t len, uint64_t n, float* out) {
  uint64_t d0 = 0;
  for (; d0 + 32 <= n; d0 += 32) {
    float acc[32] = {};
    for (uint64_t i = 0; i < len; ++i)
      for (uint64_t j = 0; j < 32; ++j) acc[j] += w[i] * rows[i * stride + d0 + j];
    std::copy_n(acc, 32, out + d0);
  }
  for (; d0 < n; ++d0) {
    float acc = 0;
    for (uint64_t i = 0; i < len; ++i) acc += w[i] * rows[i * stride + d0];
    out[d0] = acc;
  }
}

// Each compiled twice (base/simd.hpp), the AVX2 one chosen by the call's instruction set.
float dot8_portable(const float* a, const float* b, uint64_t n) {
  return dot8_body(a, b, n);
}
FERRY_TARGET_AVX2 float dot8_avx2(const float* a, const float* b, uint64_t n) {
  return dot8_body(a, b, n);
}
void weighted_rows_portable(const float* w, const float* rows, uint64_t stride, uint64_t len,
                            uint64_t n, float* out) {
  weighted_rows_body(w, rows, stride, len, n, out);
}
FERRY_TARGET_AVX2 void weighted_rows_avx2(const float* w, const float* rows, uint64_t stride,
                                          uint64_t len, uint64_t n, float* out) {
  weighted_rows_body(w, rows, stride, len, n, out);
}

// The f16 rows, portable: the same sums as above, each element converted by f16_to_float.
float dot8(const float* a, const uint16_t* b, uint64_t n) {
  float acc[8] = {};
  uint64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (uint64_t j = 0; j < 8; ++j) acc[j] += a[d + j] * f16_to_float(b[d + j]);
  float sum = 0;
  for (; d < n; ++d) sum += a[d] * f16_to_float(b[d]);
  for (float x : acc) sum += x;
  return sum;
}

void weighted_rows(const float* w, const uint16_t* rows, uint64_t stride, uint64_t len, uint64_t n,
                   float* out) {
  for (uint64_t d = 0; d < n; ++d) {
    float acc = 0;
    for (uint64_t i = 0; i < len; ++i) acc += w[i] * f16_to_float(rows[i * stride + d]);
    out[d] = acc;
  }
}

#if FERRY_X86
// The f16 rows with F16C: 8 halves convert in one instruction next to their load, so the cache
// is read at 2 bytes an element and never widened in memory.
#define FERRY_F16C __attribute__((target("avx2,fma,f16c")))

FERRY_F16C __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Two accumulators: head_dim 128 is 16 steps, and one FMA chain would wait 4 cycles on each.
FERRY_F16C float dot8_f16c(const float* a, const uint16_t* b, uint64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  uint64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), load8_f16(b + d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), load8_f16(b + d + 8), acc1);
  }
  if (d + 8 <= n) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), load8_f16(b + d), acc0);
    d += 8;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
  float sum = 0;
  for (; d < n; ++d) sum += a[d] * f16_to_float(b[d]);
  for (float x : lanes) sum += x;
  return sum;
}

// 32 outputs in four registers over all the rows, as the float version; then 8 at a time.
FERRY_F16C void weighted_rows_f16c(const float* w, const uint16_t* rows, uint64_t stride,
                                   uint64_t len, uint64_t n, float* out) {
  uint64_t d0 = 0;
  for (; d0 + 32 <= n; d0 += 32) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (uint64_t i = 0; i < len; ++i) {
      const __m256 wi = _mm256_set1_ps(w[i]);
      const uint16_t* r = rows + i * stride + d0;
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(wi, load8_f16(r + 8 * j), acc[j]);
    }
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
  }
  for (; d0 + 8 <= n; d0 += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (uint64_t i = 0; i < len; ++i)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), load8_f16(rows + i * stride + d0), acc);
    _mm256_storeu_ps(out + d0, acc);
  }
  if (d0 < n) weighted_rows(w, rows + d0, stride, len, n - d0, out + d0);
}

// Eight scores at once: keys i0 .. i0+7 (rows `stride` apart) dotted with q over hd (a multiple
// of 8) dimensions, one accumulator a key (8 independent FMA chains, each step's q loaded once
// for the 8), then the 8 sums transposed into one vector by a tree of horizontal adds. Per key
// before: a call, 2 chains and a sum through memory (dot8_f16c): SmolLM2's 64-wide heads spent
// more on those than on the products.
FERRY_F16C __m256 scores8_f16c(const float* q, const uint16_t* k, uint64_t stride, uint64_t hd) {
  __m256 acc[8];
  for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
  for (uint64_t d = 0; d < hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(qv, load8_f16(k + u * stride + d), acc[u]);
  }
  const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// The largest of 8 lanes.
FERRY_F16C float max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// attention_chunk's scores and softmax numerators over an f16 cache with F16C, head_dim a
// multiple of 8: scores 8 keys at a time (the last < 8 one by one), e^(s - max) 8 at a time
// (exp8_avx2); the sum of the numerators in a fixed order. Returns {max, sum}.
FERRY_F16C std::pair<float, float> softmax_f16c(const float* q, const uint16_t* k, uint64_t stride,
                                                uint64_t hd, uint64_t len, float scale, float* sc) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  uint64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 s = _mm256_mul_ps(scores8_f16c(q, k + i * stride, stride, hd), vscale);
    _mm256_storeu_ps(sc + i, s);
    vmax = _mm256_max_ps(vmax, s);
  }
  float max_score = max8(vmax);
  for (; i < len; ++i) {
    sc[i] = dot8_f16c(q, k + i * stride, hd) * scale;
    max_score = std::max(max_score, sc[i]);
  }
  const __m256 vm = _mm256_set1_ps(max_score);
  __m256 vsum = _mm256_setzero_ps();
  i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(sc + i), vm));
    _mm256_storeu_ps(sc + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (i < len) {  // the tail through a copy padded with -inf, lanes past len masked out of the sum
    alignas(32) float tail[8];
    std::fill(tail, tail + 8, -INFINITY);
    std::copy(sc + i, sc + len, tail);
    const __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_load_ps(tail), vm));
    _mm256_store_ps(tail, e);
    std::copy(tail, tail + (len - i), sc + i);
    vsum = _mm256_add_ps(vsum, _mm256_blendv_ps(_mm256_setzero_ps(), e,
                                                _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                                    _mm256_set1_epi32(int32_t(len - i)),
                                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))));
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(vsum), _mm256_extractf128_ps(vsum, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return {max_score, _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))};
}
#endif

float row_dot(const float* q, const float* k, uint64_t n, bool avx2) {
  return avx2 ? dot8_avx2(q, k, n) : dot8_portable(q, k, n);
}
float row_dot(const float* q, const uint16_t* k, uint64_t n, bool avx2) {
#if FERRY_X86
  if (avx2) return dot8_f16c(q, k, n);
#endif
  (void)avx2;
  return dot8(q, k, n);
}

template <typename T>
void row_sums(const float* w, const T* rows, uint64_t stride, uint64_t len, uint64_t n, float* out,
              bool avx2) {
#if FERRY_X86
  if constexpr (std::is_same_v<T, uint16_t>)
    if (avx2) return weighted_rows_f16c(w, rows, stride, len, n, out);
#endif
  if constexpr (std::is_same_v<T, float>)
    return avx2 ? weighted_rows_avx2(w, rows, stride, len, n, out)
                : weighted_rows_portable(w, rows, stride, len, n, out);
  else
    weighted_rows(w, rows, stride, len, n, out);
}

// The partial state (attention.hpp) of query t, head h over the positions of chunk `chunk`.
template <typename T>
void attention_chunk(const AttentionCall<T>& a, uint64_t t, uint64_t h, uint64_t chunk) {
  const uint64_t n_ctx = a.pos + t + 1, step = attention_chunk_len(n_ctx), begin = chunk * step;
  const uint64_t len = std::min(step, n_ctx - begin);
  const uint64_t kv_dim = a.kv_heads * a.head_dim, kvh = h / (a.heads / a.kv_heads);
  const float* qh = a.q + (t * a.heads + h) * a.head_dim;
  const float scale = 1.0f / std::sqrt(float(a.head_dim));
  std::array<float, kAttentionChunk> scores;
  float max_score = -INFINITY, sum = 0;
  bool vector = false;  // the F16C softmax (f16 cache, head_dim a multiple of 8)
#if FERRY_X86
  if constexpr (std::is_same_v<T, uint16_t>)
    if (a.avx2 && a.head_dim % 8 == 0) {
      std::tie(max_score, sum) = softmax_f16c(qh, a.k_cache + begin * kv_dim + kvh * a.head_dim,
                                              kv_dim, a.head_dim, len, scale, scores.data());
      vector = true;
    }
#endif
  if (!vector) {
    for (uint64_t i = 0; i < len; ++i) {
      const T* k = a.k_cache + (begin + i) * kv_dim + kvh * a.head_dim;
      scores[i] = row_dot(qh, k, a.head_dim, a.avx2) * scale;
      max_score = std::max(max_score, scores[i]);
    }
    for (uint64_t i = 0; i < len; ++i) sum += scores[i] = std::exp(scores[i] - max_score);
  }
  float* part =
      a.partials + ((t * a.heads + h) * a.chunks + chunk) * attention_partial_floats(a.head_dim);
  row_sums(scores.data(), a.v_cache + begin * kv_dim + kvh * a.head_dim, kv_dim, len, a.head_dim,
           part, a.avx2);
  part[a.head_dim] = max_score;
  part[a.head_dim + 1] = sum;
}

// Rescales the chunks of query t, head h to their common largest score and normalizes.
template <typename T>
void attention_merge(const AttentionCall<T>& a, uint64_t t, uint64_t h) {
  const uint64_t stride = attention_partial_floats(a.head_dim);
  const uint64_t chunks = attention_chunks(a.pos + t + 1);
  const float* part = a.partials + (t * a.heads + h) * a.chunks * stride;
  float max_score = -INFINITY;
  for (uint64_t c = 0; c < chunks; ++c)
    max_score = std::max(max_score, part[c * stride + a.head_dim]);
  float denom = 0;
  for (uint64_t c = 0; c < chunks; ++c)
    denom +=
        std::exp(part[c * stride + a.head_dim] - max_score) * part[c * stride + a.head_dim + 1];
  // Chunk by chunk, one exp each (not one per chunk and dimension: at 8k positions that was a
  // third of attention's exps); every output still sums its chunks in order.
  float* oh = a.out + (t * a.heads + h) * a.head_dim;
  std::fill(oh, oh + a.head_dim, 0.0f);
  for (uint64_t c = 0; c < chunks; ++c) {
    const float w = std::exp(part[c * stride + a.head_dim] - max_score);
    for (uint64_t d = 0; d < a.head_dim; ++d) oh[d] += w * part[c * stride + d];
  }
  for (uint64_t d = 0; d < a.head_dim; ++d) oh[d] /= denom;
}

// Queries 0 .. m-1 of the call: every (query, head, chunk) is one task; a query sees fewer chunks
// than the last one when the round crosses a chunk boundary, and skips the rest. Tasks are
// ordered query, kv head, chunk, then the query heads sharing that kv head, so a thread runs a
// group's heads over one chunk's k and v rows (256 KB at head_dim 128) while they are in its L2.
template <typename T>
void attention_round(CpuPool& pool, const AttentionCall<T>& call, uint64_t m) {
  pool.parallel_for(m * call.heads * call.chunks, 1, [a = &call](uint64_t begin, uint64_t end) {
    const uint64_t group = a->heads / a->kv_heads;
    for (uint64_t i = begin; i < end; ++i) {
      const uint64_t t = i / (a->heads * a->chunks), chunk = i / group % a->chunks;
      const uint64_t h = i / (group * a->chunks) % a->kv_heads * group + i % group;
      if (chunk < attention_chunks(a->pos + t + 1)) attention_chunk(*a, t, h, chunk);
    }
  });
  pool.parallel_for(m * call.heads, 1, [a = &call](uint64_t begin, uint64_t end) {
    for (uint64_t i = begin; i < end; ++i) attention_merge(*a, i / a->heads, i % a->heads);
  });
}

template <typename T>
void attention_rounds(CpuPool& pool, const float* q, const T* k_cache, const T* v_cache, uint64_t n,
                      uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                      float* partials, float* out, bool avx2) {
  if (n == 0 || heads == 0) return;
  check_attention_shape(heads, kv_heads, head_dim);
  for (uint64_t t0 = 0; t0 < n; t0 += kAttentionQueries) {
    const uint64_t m = std::min(kAttentionQueries, n - t0), q_dim = heads * head_dim;
    const AttentionCall<T> call{
        q + t0 * q_dim, k_cache,          v_cache,  pos + t0,
        heads,          kv_heads,         head_dim, attention_max_chunks(pos + t0 + m),
        partials,       out + t0 * q_dim, avx2};
    attention_round(pool, call, m);
  }
}

}  // namespace

void attention_cpu(CpuPool& pool, const float* q, const float* k_cache, const float* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out) {
  attention_rounds(pool, q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, partials, out,
                   isa_has_avx2(best_kernel_isa()));
}

void attention_cpu(CpuPool& pool, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out, KernelIsa isa) {
  attention_rounds(pool, q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, partials, out,
                   isa_has_avx2(isa));
}

void check_attention_shape(uint64_t heads, uint64_t kv_heads, uint64_t head_dim) {
  if (kv_heads == 0 || heads % kv_heads != 0 || head_dim == 0)
    throw Error(
        fmt::format("attention: {} heads over {} kv heads of dimension {} is not a "
                    "grouped-query shape",
                    heads, kv_heads, head_dim));
}

}  // namespace ferry
