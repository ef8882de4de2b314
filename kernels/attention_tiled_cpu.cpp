// The CPU twin of attention_tiled_cuda (kernels/attention.hpp): the same query blocks, the same
// K/V tiles in the same order and the same online softmax (FlashAttention-2) as the kernel in
// kernels/attention_tiled.cu, one pool task per (kv head, query block) as the kernel has one CTA.
#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/attention.hpp"

namespace ferry {
namespace {

// A CTA's rows x head_dim accumulators: 8192 floats at every supported head_dim.
constexpr uint64_t kTileFloats = 8192;
constexpr uint64_t kMaxRows = 128;  // attention_tile_rows(64)
constexpr uint64_t kMaxKeys = 32;   // attention_tile_keys(64 or 128)

float widen(float x) {
  return x;
}
float widen(uint16_t x) {
  return f16_to_float(x);
}

template <typename T>
struct TiledCall {
  const float* q;              // [n, heads, hd]
  const T *k_cache, *v_cache;  // [ctx, kv_heads, hd]
  uint64_t n, pos, heads, kv_heads, head_dim;
  float* out;  // [n, heads, hd]
};

// Running state of a CTA's rows: row r is query q0 + r / group, query head kvh * group + r % group.
struct TileRows {
  std::array<float, kTileFloats> o;  // [rows, hd] the rescaled sums of p v
  std::array<float, kMaxRows> m, l;  // each row's largest score so far and its sum of e^(s - m)
};

// One tile of keys begin .. begin+len-1 into row r's state: scores masked past the row's own
// position, the new max, the old state rescaled by e^(m_old - m_new), then p v added.
template <typename T>
void tile_row(const TiledCall<T>& a, uint64_t kvh, uint64_t q0, uint64_t r, uint64_t begin,
              uint64_t len, TileRows& st) {
  const uint64_t group = a.heads / a.kv_heads, hd = a.head_dim, kv_dim = a.kv_heads * hd;
  const uint64_t t = q0 + r / group, h = kvh * group + r % group, qpos = a.pos + t;
  const float* qr = a.q + (t * a.heads + h) * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::array<float, kMaxKeys> s;
  float mx = -INFINITY;
  for (uint64_t j = 0; j < len; ++j) {
    if (begin + j > qpos) {  // causal: a later position than this query's
      s[j] = -INFINITY;
      continue;
    }
    const T* k = a.k_cache + (begin + j) * kv_dim + kvh * hd;
    float dot = 0;
    for (uint64_t d = 0; d < hd; ++d) dot += qr[d] * widen(k[d]);
    s[j] = dot * scale;
    mx = std::max(mx, s[j]);
  }
  const float m_new = std::max(st.m[r], mx);
  if (m_new == -INFINITY) return;  // nothing seen yet (the kernel guards the same way)
  const float alpha = std::exp(st.m[r] - m_new);  // 0 on the first tile (m = -inf)
  float sum = 0;
  for (uint64_t j = 0; j < len; ++j) sum += s[j] = std::exp(s[j] - m_new);
  st.l[r] = st.l[r] * alpha + sum;
  st.m[r] = m_new;
  float* o = st.o.data() + r * hd;
  for (uint64_t d = 0; d < hd; ++d) o[d] *= alpha;
  for (uint64_t j = 0; j < len; ++j) {
    const T* v = a.v_cache + (begin + j) * kv_dim + kvh * hd;
    for (uint64_t d = 0; d < hd; ++d) o[d] += s[j] * widen(v[d]);
  }
}

// The CTA of kv head kvh and query block b: queries q0 .. q0+nq-1 see positions up to
// pos + q0 + nq - 1, walked in tiles of Bk; the last tile is short (the kernel zero-fills it and
// masks it, which adds exact zeros).
template <typename T>
void tiled_block(const TiledCall<T>& a, uint64_t kvh, uint64_t b, TileRows& st) {
  const uint64_t group = a.heads / a.kv_heads, hd = a.head_dim;
  const uint64_t bq = attention_tile_queries(hd, group), bk = attention_tile_keys(hd);
  const uint64_t q0 = b * bq, nq = std::min(bq, a.n - q0), rows = nq * group;
  const uint64_t kv_end = a.pos + q0 + nq;
  std::fill_n(st.o.begin(), rows * hd, 0.0f);
  std::fill_n(st.m.begin(), rows, -INFINITY);
  std::fill_n(st.l.begin(), rows, 0.0f);
  for (uint64_t begin = 0; begin < kv_end; begin += bk)
    for (uint64_t r = 0; r < rows; ++r)
      tile_row(a, kvh, q0, r, begin, std::min(bk, kv_end - begin), st);
  for (uint64_t r = 0; r < rows; ++r) {
    const uint64_t t = q0 + r / group, h = kvh * group + r % group;
    float* out = a.out + (t * a.heads + h) * hd;
    for (uint64_t d = 0; d < hd; ++d) out[d] = st.o[r * hd + d] / st.l[r];
  }
}

template <typename T>
void tiled(CpuPool& pool, const TiledCall<T>& call) {
  if (call.n == 0 || call.heads == 0) return;
  check_attention_shape(call.heads, call.kv_heads, call.head_dim);
  if (!attention_tiled_supports(call.heads, call.kv_heads, call.head_dim))
    throw Error(fmt::format(
        "attention_tiled: {} heads over {} kv heads of dimension {}: the tiled kernel takes "
        "head_dim 64, 128 or 256 and 1 to 8 query heads per kv head; use attention_cpu",
        call.heads, call.kv_heads, call.head_dim));
  const uint64_t bq = attention_tile_queries(call.head_dim, call.heads / call.kv_heads);
  const uint64_t blocks = (call.n + bq - 1) / bq;
  pool.parallel_for(call.kv_heads * blocks, 1, [a = &call, blocks](uint64_t begin, uint64_t end) {
    TileRows st;  // 33 KB on the task's stack, as the CTA's registers and shared memory
    for (uint64_t i = begin; i < end; ++i) tiled_block(*a, i / blocks, i % blocks, st);
  });
}

}  // namespace

bool attention_tiled_supports(uint64_t heads, uint64_t kv_heads, uint64_t head_dim) {
  if (kv_heads == 0 || heads % kv_heads != 0) return false;
  const uint64_t group = heads / kv_heads;
  return (head_dim == 64 || head_dim == 128 || head_dim == 256) && group >= 1 && group <= 8;
}

bool attention_tiled_applies(uint64_t n, uint64_t heads, uint64_t kv_heads, uint64_t head_dim) {
  if (!attention_tiled_supports(heads, kv_heads, head_dim)) return false;
  const uint64_t bq = attention_tile_queries(head_dim, heads / kv_heads);
  return kv_heads * ((n + bq - 1) / bq) >= kAttentionTiledMinCtas;
}

void attention_tiled_cpu(CpuPool& pool, const float* q, const float* k_cache, const float* v_cache,
                         uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads,
                         uint64_t head_dim, float* out) {
  tiled(pool, TiledCall<float>{q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, out});
}

void attention_tiled_cpu(CpuPool& pool, const float* q, const uint16_t* k_cache,
                         const uint16_t* v_cache, uint64_t n, uint64_t pos, uint64_t heads,
                         uint64_t kv_heads, uint64_t head_dim, float* out) {
  tiled(pool, TiledCall<uint16_t>{q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, out});
}

}  // namespace ferry
