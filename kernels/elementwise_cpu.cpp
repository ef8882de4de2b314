// CPU twins of the element-wise kernels of kernels/elementwise.cu (contract in
// kernels/elementwise.hpp).
#include <algorithm>
#include <cmath>

#include "base/dtype.hpp"
#include "kernels/elementwise.hpp"

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
