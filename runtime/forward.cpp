// The forward pass of the Llama and Qwen2 families, top to bottom, for a batch of n consecutive
// tokens (the prompt in prefill, one token in decode):
//   embedding -> per layer (RMSNorm, q/k/v (+bias), RoPE, grouped-query causal attention over
//   the KV cache, o, residual, RMSNorm, gate/up, SiLU*mul, down, residual) -> final RMSNorm ->
//   lm_head of the last token.
// Activations are rows of [n, dim]; every linear runs once per batch, so prefill reads each
// weight once per batch instead of once per token. Weights come from a WeightSource (the file,
// or the paging cache), acquired in schedule order and released as soon as they are used.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/cpu_pool.hpp"
#include "kernels/matmul.hpp"
#include "kernels/ops.hpp"
#include "runtime/model.hpp"

namespace ferry {
namespace {

// y[n, rows] = x[n, cols] W^T (+ b), with W acquired from the source for just this call.
void linear(WeightSource& src, CpuPool& pool, uint32_t id, const float* x, uint64_t n, float* y) {
  HeldWeight w(src, id);
  const Linear& l = w.linear;
  if (l.q4)
    matmul_int4_cpu(pool, l.q4, l.scales, l.mins, l.rows, l.cols, x, n, y);
  else
    matmul_bf16_cpu(pool, l.bf16, l.rows, l.cols, x, n, y);
  if (l.bias) add_bias_cpu(y, l.bias, n, l.rows);
  w.release();
}

struct Pass {
  const ModelConfig& c;
  WeightSource& src;
  CpuPool& pool;
  RunState& s;
  uint64_t n, pos;  // tokens in this batch, position of the first
};

void rmsnorm_rows(const Pass& p, const uint16_t* weight) {
  for (uint64_t t = 0; t < p.n; ++t)
    rmsnorm_cpu(&p.s.x[t * p.c.hidden], weight, float(p.c.rms_eps), p.c.hidden,
                &p.s.xb[t * p.c.hidden]);
}

void add_residual(const Pass& p) {
  for (uint64_t i = 0; i < p.n * p.c.hidden; ++i) p.s.x[i] += p.s.proj[i];
}

// Stores the batch's rotated keys and values (s.k, s.v) in the cache rows pos .. pos+n-1 of the
// layer and runs attention over the layer's cache, in the cache's element type.
void attend(const Pass& p, uint64_t layer) {
  const ModelConfig& c = p.c;
  RunState& s = p.s;
  const uint64_t kv_dim = c.kv_heads * c.head_dim, count = p.n * kv_dim;
  const uint64_t base = layer * s.ctx * kv_dim, at = base + p.pos * kv_dim;  // [ctx, kv_dim]
  if (s.kv.type == KvType::f16) {
    store_f16_cpu(s.k.data(), count, s.kv.k16.data() + at);
    store_f16_cpu(s.v.data(), count, s.kv.v16.data() + at);
    attention_cpu(p.pool, s.q.data(), s.kv.k16.data() + base, s.kv.v16.data() + base, p.n, p.pos,
                  c.heads, c.kv_heads, c.head_dim, s.partials.data(), s.att_out.data());
  } else {
    std::copy_n(s.k.data(), count, s.kv.k32.data() + at);
    std::copy_n(s.v.data(), count, s.kv.v32.data() + at);
    attention_cpu(p.pool, s.q.data(), s.kv.k32.data() + base, s.kv.v32.data() + base, p.n, p.pos,
                  c.heads, c.kv_heads, c.head_dim, s.partials.data(), s.att_out.data());
  }
}

void attention_block(const Pass& p, const LayerWeights& L, uint64_t layer) {
  const ModelConfig& c = p.c;
  RunState& s = p.s;
  const uint64_t q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  rmsnorm_rows(p, L.attn_norm);
  linear(p.src, p.pool, linear_id(layer, kQ), s.xb.data(), p.n, s.q.data());
  linear(p.src, p.pool, linear_id(layer, kK), s.xb.data(), p.n, s.k.data());
  linear(p.src, p.pool, linear_id(layer, kV), s.xb.data(), p.n, s.v.data());
  for (uint64_t t = 0; t < p.n; ++t) {
    rope_cpu(&s.q[t * q_dim], c.heads, c.head_dim, p.pos + t, s.inv_freq.data());
    rope_cpu(&s.k[t * kv_dim], c.kv_heads, c.head_dim, p.pos + t, s.inv_freq.data());
  }
  // Causal: token t sees positions 0 .. pos+t; heads and chunks of the context split over the pool.
  attend(p, layer);
  linear(p.src, p.pool, linear_id(layer, kO), s.att_out.data(), p.n, s.proj.data());
  add_residual(p);
}

void mlp_block(const Pass& p, const LayerWeights& L, uint64_t layer) {
  RunState& s = p.s;
  const uint64_t inter = p.c.intermediate;
  rmsnorm_rows(p, L.mlp_norm);
  linear(p.src, p.pool, linear_id(layer, kGate), s.xb.data(), p.n, s.gate.data());
  linear(p.src, p.pool, linear_id(layer, kUp), s.xb.data(), p.n, s.up.data());
  silu_mul_cpu(s.gate.data(), s.up.data(), p.n * inter, s.gate.data());
  linear(p.src, p.pool, linear_id(layer, kDown), s.gate.data(), p.n, s.proj.data());
  add_residual(p);
}

}  // namespace

void forward(const ModelConfig& c, const ModelWeights& w, WeightSource& src, CpuPool& pool,
             RunState& s, std::span<const int32_t> tokens, uint64_t pos) {
  check_forward_call(c, s.ctx, s.batch, tokens, pos);
  const Pass p{c, src, pool, s, tokens.size(), pos};
  for (uint64_t t = 0; t < p.n; ++t) {
    const uint16_t* row = w.embed + uint64_t(tokens[t]) * c.hidden;
    for (uint64_t i = 0; i < c.hidden; ++i) s.x[t * c.hidden + i] = bf16_to_float(row[i]);
  }
  for (uint64_t l = 0; l < c.layers; ++l) {
    attention_block(p, w.layers[l], l);
    mlp_block(p, w.layers[l], l);
  }
  // Only the last token's logits are needed to choose the next one.
  const float* last = &s.x[(p.n - 1) * c.hidden];
  rmsnorm_cpu(last, w.final_norm, float(c.rms_eps), c.hidden, s.xb.data());
  linear(src, pool, lm_head_id(c.layers), s.xb.data(), 1, s.logits.data());
}

}  // namespace ferry
