#include <algorithm>
#include <cmath>

#include "kernels/ops.hpp"
#include "quantizer/dtype.hpp"

namespace ferry {

void rmsnorm_cpu(const float* x, const uint16_t* w, float eps, uint64_t n, float* out) {
  double ss = 0;  // double: a hidden size of 8192 squares sums to ~1e4 with fp32 rounding drift
  for (uint64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / double(n) + eps));
  for (uint64_t i = 0; i < n; ++i) out[i] = x[i] * inv * bf16_to_float(w[i]);
}

void rope_cpu(float* v, uint64_t heads, uint64_t head_dim, uint64_t pos, const float* inv_freq) {
  const uint64_t half = head_dim / 2;
  for (uint64_t i = 0; i < half; ++i) {
    const float angle = float(pos) * inv_freq[i];
    const float c = std::cos(angle), s = std::sin(angle);
    for (uint64_t h = 0; h < heads; ++h) {
      float* x = v + h * head_dim;
      const float a = x[i], b = x[i + half];
      x[i] = a * c - b * s;
      x[i + half] = b * c + a * s;
    }
  }
}

void silu_mul_cpu(const float* gate, const float* up, uint64_t n, float* out) {
  for (uint64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add_bias_cpu(float* y, const uint16_t* bias, uint64_t n, uint64_t rows) {
  for (uint64_t t = 0; t < n; ++t)
    for (uint64_t i = 0; i < rows; ++i) y[t * rows + i] += bf16_to_float(bias[i]);
}

void attention_cpu(const float* q, const float* k_cache, const float* v_cache, uint64_t n_ctx,
                   uint64_t heads, uint64_t kv_heads, uint64_t head_dim, float* scores,
                   float* out) {
  const uint64_t group = heads / kv_heads, kv_dim = kv_heads * head_dim;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (uint64_t h = 0; h < heads; ++h) {
    const float* qh = q + h * head_dim;
    const uint64_t kvh = h / group;
    float max_score = -INFINITY;
    for (uint64_t t = 0; t < n_ctx; ++t) {
      const float* k = k_cache + t * kv_dim + kvh * head_dim;
      float dot = 0;
      for (uint64_t d = 0; d < head_dim; ++d) dot += qh[d] * k[d];
      scores[t] = dot * scale;
      max_score = std::max(max_score, scores[t]);
    }
    float sum = 0;
    for (uint64_t t = 0; t < n_ctx; ++t) sum += scores[t] = std::exp(scores[t] - max_score);
    float* oh = out + h * head_dim;
    std::fill(oh, oh + head_dim, 0.0f);
    for (uint64_t t = 0; t < n_ctx; ++t) {
      const float* v = v_cache + t * kv_dim + kvh * head_dim;
      const float p = scores[t] / sum;
      for (uint64_t d = 0; d < head_dim; ++d) oh[d] += p * v[d];
    }
  }
}

}  // namespace ferry
