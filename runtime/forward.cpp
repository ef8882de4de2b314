// The forward pass of the Llama and Qwen2 families, top to bottom, one token at a time:
// embedding -> per layer (RMSNorm, q/k/v (+bias), RoPE, grouped-query attention over the KV
// cache, o, residual, RMSNorm, gate/up, SiLU*mul, down, residual) -> final RMSNorm -> lm_head.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "kernels/matvec.hpp"
#include "kernels/ops.hpp"
#include "quantizer/error.hpp"
#include "runtime/model.hpp"

namespace ferry {
namespace {

void linear(const Linear& l, const float* x, float* y) {
  if (l.q4)
    matvec_int4_cpu(l.q4, l.scales, l.mins, l.rows, l.cols, x, y);
  else
    matvec_bf16_cpu(l.bf16, l.rows, l.cols, x, y);
  if (l.bias)
    for (uint64_t i = 0; i < l.rows; ++i) y[i] += bf16_to_float(l.bias[i]);
}

void attention_block(const ModelConfig& c, const LayerWeights& L, RunState& s, size_t layer,
                     uint64_t pos) {
  const uint64_t kv_dim = c.kv_heads * c.head_dim;
  float* k = s.k_cache.data() + (layer * s.ctx + pos) * kv_dim;
  float* v = s.v_cache.data() + (layer * s.ctx + pos) * kv_dim;
  rmsnorm_cpu(s.x.data(), L.attn_norm, float(c.rms_eps), c.hidden, s.xb.data());
  linear(L.q, s.xb.data(), s.q.data());
  linear(L.k, s.xb.data(), k);
  linear(L.v, s.xb.data(), v);
  rope_cpu(s.q.data(), c.heads, c.head_dim, pos, s.inv_freq.data());
  rope_cpu(k, c.kv_heads, c.head_dim, pos, s.inv_freq.data());
  const float* k_layer = s.k_cache.data() + layer * s.ctx * kv_dim;
  const float* v_layer = s.v_cache.data() + layer * s.ctx * kv_dim;
  attention_cpu(s.q.data(), k_layer, v_layer, pos + 1, c.heads, c.kv_heads, c.head_dim,
                s.scores.data(), s.att_out.data());
  linear(L.o, s.att_out.data(), s.proj.data());
  for (uint64_t i = 0; i < c.hidden; ++i) s.x[i] += s.proj[i];
}

void mlp_block(const ModelConfig& c, const LayerWeights& L, RunState& s) {
  rmsnorm_cpu(s.x.data(), L.mlp_norm, float(c.rms_eps), c.hidden, s.xb.data());
  linear(L.gate, s.xb.data(), s.gate.data());
  linear(L.up, s.xb.data(), s.up.data());
  silu_mul_cpu(s.gate.data(), s.up.data(), c.intermediate, s.gate.data());
  linear(L.down, s.gate.data(), s.proj.data());
  for (uint64_t i = 0; i < c.hidden; ++i) s.x[i] += s.proj[i];
}

}  // namespace

void forward(const ModelConfig& c, const ModelWeights& w, RunState& s, int32_t token,
             uint64_t pos) {
  if (pos >= s.ctx)
    throw Error(
        fmt::format("position {} is past the context of {} tokens; raise --ctx", pos, s.ctx));
  if (token < 0 || uint64_t(token) >= c.vocab)
    throw Error(fmt::format("token id {} is outside the vocabulary of {}", token, c.vocab));
  const uint16_t* row = w.embed + uint64_t(token) * c.hidden;
  for (uint64_t i = 0; i < c.hidden; ++i) s.x[i] = bf16_to_float(row[i]);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    attention_block(c, w.layers[l], s, l, pos);
    mlp_block(c, w.layers[l], s);
  }
  rmsnorm_cpu(s.x.data(), w.final_norm, float(c.rms_eps), c.hidden, s.xb.data());
  linear(w.lm_head, s.xb.data(), s.logits.data());
}

}  // namespace ferry
