// CPU twins of the element-wise kernels of kernels/elementwise.cu (contract in
// kernels/elementwise.hpp).
#include <algorithm>
#include <cmath>

#include "base/cpu_isa.hpp"
#include "base/dtype.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/exp_avx2.hpp"

namespace ferry {
namespace {

void rmsnorm_row(const float* x, const uint16_t* w, float eps, uint64_t dim, float* out) {
  double ss = 0;  // double: a hidden size of 8192 squares sums to ~1e4 with fp32 rounding drift
  for (uint64_t i = 0; i < dim; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / double(dim) + eps));
  for (uint64_t i = 0; i < dim; ++i) out[i] = x[i] * inv * bf16_to_float(w[i]);
}

void rope_row(float* v, uint64_t heads, uint64_t head_dim, uint64_t pos, const float* inv_freq,
              float scale) {
  const uint64_t half = head_dim / 2;
  for (uint64_t i = 0; i < half; ++i) {
    const float angle = float(pos) * inv_freq[i];
    const float c = std::cos(angle) * scale, s = std::sin(angle) * scale;
    for (uint64_t h = 0; h < heads; ++h) {
      float* x = v + h * head_dim;
      const float a = x[i], b = x[i + half];
      x[i] = a * c - b * s;
      x[i + half] = b * c + a * s;
    }
  }
}

#if FERRY_X86
// silu(g) * u = g / (1 + e^-g) * u, 8 at a time with exp8_avx2 (std::exp per element was 3% of a
// SmolLM2 prefill, as much as a seventh of its products); the division kept (not a reciprocal
// estimate). The last < 8 elements go through the same lanes by a padded copy: each element's
// result is the same function of its inputs wherever it lies in the call (the fused gate/up
// epilogue calls this on each task's rows, and must equal one call over the whole array).
__attribute__((target("avx2,fma"))) __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 e = exp8_avx2(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

__attribute__((target("avx2,fma"))) void silu_mul_avx2(const float* gate, const float* up,
                                                       uint64_t count, float* out) {
  uint64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(out + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  if (i == count) return;
  alignas(32) float g[8] = {}, u[8] = {}, o[8];
  std::copy(gate + i, gate + count, g);
  std::copy(up + i, up + count, u);
  _mm256_store_ps(o, silu_mul8(_mm256_load_ps(g), _mm256_load_ps(u)));
  std::copy(o, o + (count - i), out + i);
}
#endif

}  // namespace

void rmsnorm_cpu(const float* x, const uint16_t* w, float eps, uint64_t n, uint64_t dim,
                 float* out) {
  for (uint64_t t = 0; t < n; ++t) rmsnorm_row(x + t * dim, w, eps, dim, out + t * dim);
}

void rope_cpu(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
              const float* inv_freq, float scale) {
  for (uint64_t t = 0; t < n; ++t)
    rope_row(v + t * heads * head_dim, heads, head_dim, pos + t, inv_freq, scale);
}

void rope_kv_cpu(float* q, float* k, const float* v, uint64_t n, uint64_t heads, uint64_t kv_heads,
                 uint64_t head_dim, uint64_t pos, const float* inv_freq, float scale, uint16_t* k16,
                 uint16_t* v16) {
  rope_cpu(q, n, heads, head_dim, pos, inv_freq, scale);
  rope_cpu(k, n, kv_heads, head_dim, pos, inv_freq, scale);
  if (!k16) return;
  store_f16_cpu(k, n * kv_heads * head_dim, k16);
  store_f16_cpu(v, n * kv_heads * head_dim, v16);
}

void silu_mul_cpu(const float* gate, const float* up, uint64_t count, float* out) {
#if FERRY_X86
  if (isa_has_avx2(best_kernel_isa())) return silu_mul_avx2(gate, up, count, out);
#endif
  for (uint64_t i = 0; i < count; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add_cpu(float* x, const float* y, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i) x[i] += y[i];
}

void add_bias_cpu(float* y, const uint16_t* bias, uint64_t n, uint64_t rows) {
  for (uint64_t t = 0; t < n; ++t)
    for (uint64_t i = 0; i < rows; ++i) y[t * rows + i] += bf16_to_float(bias[i]);
}

void store_f16_cpu(const float* src, uint64_t count, uint16_t* dst) {
  constexpr float kMax = 65504.0f;  // the largest finite f16
  for (uint64_t i = 0; i < count; ++i) {
    const float x = src[i];  // NaN fails both tests and stays NaN
    dst[i] = float_to_f16(x > kMax ? kMax : x < -kMax ? -kMax : x);
  }
}

void argmax_cpu(const float* v, uint64_t count, int32_t* out) {
  *out = count ? int32_t(std::max_element(v, v + count) - v) : -1;
}

void embed_rows_cpu(const uint16_t* table, const int32_t* tokens, uint64_t n, uint64_t dim,
                    float* out) {
  for (uint64_t t = 0; t < n; ++t) {
    const uint16_t* row = table + uint64_t(tokens[t]) * dim;
    for (uint64_t i = 0; i < dim; ++i) out[t * dim + i] = bf16_to_float(row[i]);
  }
}

}  // namespace ferry
