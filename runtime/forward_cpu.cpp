// The forward pass of the Llama and Qwen2 families on the CPU, top to bottom, for a batch of n
// consecutive tokens (the prompt in prefill, one token in decode):
//   embedding -> per layer (RMSNorm, q/k/v (+bias), RoPE, grouped-query causal attention over
//   the KV cache, o, residual, RMSNorm, gate/up, SiLU*mul, down, residual) -> final RMSNorm ->
//   lm_head of the last token.
// Activations are rows of [n, dim]; every linear runs once per batch, so prefill reads each
// weight once per batch instead of once per token. Weights come from a WeightSource (the file,
// or the paging cache), acquired in schedule order and released as soon as they are used.
// runtime/forward_cuda.cpp is the same pass, step for step, as CUDA kernels.
#include <algorithm>
#include <vector>

#include "base/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu_pool.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/matmul.hpp"
#include "runtime/forward_pass.hpp"

namespace ferry {
namespace {

// Activations and KV cache of one sequence, sized at load (never per token).
struct CpuState {
  CpuState(const ModelConfig& c, const PassShape& shape);
  std::vector<float> x;         // [batch, hidden] residual stream
  std::vector<float> xb;        // [batch, hidden] normed input of a block
  std::vector<float> q;         // [batch, heads * head_dim]
  std::vector<float> k, v;      // [batch, kv_heads * head_dim] before they enter the cache
  std::vector<float> att_out;   // [batch, heads * head_dim]
  std::vector<float> proj;      // [batch, hidden] attention / MLP output
  std::vector<float> gate, up;  // [batch, intermediate]
  std::vector<float> partials;  // [min(batch, 64), heads, attention_chunks(ctx), head_dim + 2]
  std::vector<float> inv_freq;  // [head_dim / 2] RoPE frequencies (scaling applied)
  // [layers, ctx, kv_heads * head_dim] keys and values: the pair of the KV type is sized
  std::vector<uint16_t> k16, v16;  // f16 bits
  std::vector<float> k32, v32;
};

CpuState::CpuState(const ModelConfig& c, const PassShape& s)
    : x(s.batch * c.hidden),
      xb(s.batch * c.hidden),
      q(s.batch * c.heads * c.head_dim),
      k(s.batch * c.kv_heads * c.head_dim),
      v(s.batch * c.kv_heads * c.head_dim),
      att_out(s.batch * c.heads * c.head_dim),
      proj(s.batch * c.hidden),
      gate(s.batch * c.intermediate),
      up(s.batch * c.intermediate),
      partials(attention_scratch_floats(s.batch, s.ctx, c.heads, c.head_dim)),
      inv_freq(rope_inv_freq(c)),
      k16(s.kv == KvType::f16 ? c.layers * s.ctx * c.kv_heads * c.head_dim : 0),
      v16(k16.size()),
      k32(s.kv == KvType::f32 ? c.layers * s.ctx * c.kv_heads * c.head_dim : 0),
      v32(k32.size()) {}

class CpuForward final : public ForwardPass {
 public:
  CpuForward(const ModelConfig& c, const ModelWeights& w, const PassShape& shape, CpuPool& pool)
      : c_(c), w_(w), shape_(shape), pool_(pool), s_(c, shape) {}
  std::shared_ptr<CacheBackend> cache_backend() override { return nullptr; }
  void forward(WeightSource& src, std::span<const int32_t> tokens, uint64_t pos,
               std::span<float> logits, int32_t* argmax, LogitRows rows) override;

 private:
  void linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y);
  void attention_block(WeightSource& src, uint64_t layer, uint64_t n, uint64_t pos);
  void attend(uint64_t layer, uint64_t n, uint64_t pos);
  void mlp_block(WeightSource& src, uint64_t layer, uint64_t n);

  const ModelConfig& c_;
  const ModelWeights& w_;
  PassShape shape_;
  CpuPool& pool_;
  CpuState s_;
};

// y[n, rows] = x[n, cols] W^T (+ b), with W acquired from the source for just this call.
void CpuForward::linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y) {
  HeldWeight held(src, id);
  const Linear& l = held.linear;
  if (l.is_int4())
    matmul_int4_cpu(pool_, l.q4, x, n, y);
  else
    matmul_bf16_cpu(pool_, l.bf16, l.rows, l.cols, x, n, y);
  if (const uint16_t* bias = w_.biases[id]) add_bias_cpu(y, bias, n, l.rows);
  held.release();
}

// Stores the batch's rotated keys and values (s.k, s.v) in the cache rows pos .. pos+n-1 of the
// layer and runs attention over the layer's cache, in the cache's element type. Causal: token t
// sees positions 0 .. pos+t; heads and chunks of the context split over the pool.
void CpuForward::attend(uint64_t layer, uint64_t n, uint64_t pos) {
  const uint64_t kv_dim = c_.kv_heads * c_.head_dim, count = n * kv_dim;
  const uint64_t base = layer * shape_.ctx * kv_dim, at = base + pos * kv_dim;  // [ctx, kv_dim]
  if (shape_.kv == KvType::f16) {
    store_f16_cpu(s_.k.data(), count, s_.k16.data() + at);
    store_f16_cpu(s_.v.data(), count, s_.v16.data() + at);
    attention_cpu(pool_, s_.q.data(), s_.k16.data() + base, s_.v16.data() + base, n, pos, c_.heads,
                  c_.kv_heads, c_.head_dim, s_.partials.data(), s_.att_out.data());
    return;
  }
  std::copy_n(s_.k.data(), count, s_.k32.data() + at);
  std::copy_n(s_.v.data(), count, s_.v32.data() + at);
  attention_cpu(pool_, s_.q.data(), s_.k32.data() + base, s_.v32.data() + base, n, pos, c_.heads,
                c_.kv_heads, c_.head_dim, s_.partials.data(), s_.att_out.data());
}

void CpuForward::attention_block(WeightSource& src, uint64_t layer, uint64_t n, uint64_t pos) {
  const LayerWeights& L = w_.layers[layer];
  rmsnorm_cpu(s_.x.data(), L.attn_norm, float(c_.rms_eps), n, c_.hidden, s_.xb.data());
  linear(src, linear_id(layer, kQ), s_.xb.data(), n, s_.q.data());
  linear(src, linear_id(layer, kK), s_.xb.data(), n, s_.k.data());
  linear(src, linear_id(layer, kV), s_.xb.data(), n, s_.v.data());
  rope_cpu(s_.q.data(), n, c_.heads, c_.head_dim, pos, s_.inv_freq.data());
  rope_cpu(s_.k.data(), n, c_.kv_heads, c_.head_dim, pos, s_.inv_freq.data());
  attend(layer, n, pos);
  linear(src, linear_id(layer, kO), s_.att_out.data(), n, s_.proj.data());
  add_cpu(s_.x.data(), s_.proj.data(), n * c_.hidden);
}

void CpuForward::mlp_block(WeightSource& src, uint64_t layer, uint64_t n) {
  const LayerWeights& L = w_.layers[layer];
  rmsnorm_cpu(s_.x.data(), L.mlp_norm, float(c_.rms_eps), n, c_.hidden, s_.xb.data());
  linear(src, linear_id(layer, kGate), s_.xb.data(), n, s_.gate.data());
  linear(src, linear_id(layer, kUp), s_.xb.data(), n, s_.up.data());
  silu_mul_cpu(s_.gate.data(), s_.up.data(), n * c_.intermediate, s_.gate.data());
  linear(src, linear_id(layer, kDown), s_.gate.data(), n, s_.proj.data());
  add_cpu(s_.x.data(), s_.proj.data(), n * c_.hidden);
}

void CpuForward::forward(WeightSource& src, std::span<const int32_t> tokens, uint64_t pos,
                         std::span<float> logits, int32_t* argmax, LogitRows rows) {
  check_forward_call(c_, shape_.ctx, shape_.batch, tokens, pos);
  const uint64_t n = tokens.size(), out_rows = rows == LogitRows::all ? n : 1;
  if (logits.size() < out_rows * c_.vocab || (argmax && rows == LogitRows::all))
    throw Error("internal error: the logits span is too small, or argmax asked of every row");
  embed_rows_cpu(w_.embed, tokens.data(), n, c_.hidden, s_.x.data());
  for (uint64_t l = 0; l < c_.layers; ++l) {
    attention_block(src, l, n, pos);
    mlp_block(src, l, n);
  }
  // Only the last token's logits are needed to choose the next one; perplexity asks for all.
  const float* first = &s_.x[(n - out_rows) * c_.hidden];
  rmsnorm_cpu(first, w_.final_norm, float(c_.rms_eps), out_rows, c_.hidden, s_.xb.data());
  linear(src, lm_head_id(c_.layers), s_.xb.data(), out_rows, logits.data());
  if (argmax) argmax_cpu(logits.data(), c_.vocab, argmax);
}

}  // namespace

std::unique_ptr<ForwardPass> make_cpu_forward(const ModelConfig& c, const ModelWeights& w,
                                              const PassShape& shape, CpuPool& pool) {
  return std::make_unique<CpuForward>(c, w, shape, pool);
}

double cpu_pass_bytes(const ModelConfig& c, const PassShape& s) {
  const double kv_bytes = double(s.ctx) * kv_bytes_per_position(c, s.kv);
  const double activations = 4.0 * double(s.batch) *
                             double(4 * c.hidden + 2 * c.heads * c.head_dim +
                                    2 * c.kv_heads * c.head_dim + 2 * c.intermediate);
  const double partials =
      4.0 * double(attention_scratch_floats(s.batch, s.ctx, c.heads, c.head_dim));
  return kv_bytes + activations + partials;
}

}  // namespace ferry
