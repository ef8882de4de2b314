// The forward pass of the Llama (and Mistral), Qwen2 and Qwen3 families on the CPU, top to bottom,
// for a batch of n tokens from one or more sequences (a chunk of a prompt, or each decoding
// sequence's next token, each sequence in its own KV slot):
//   embedding -> per layer (RMSNorm, q/k/v (+bias), per-head RMSNorm of q and k (Qwen3), RoPE,
//   grouped-query causal attention over the KV cache, o, residual, RMSNorm, gate/up, SiLU*mul,
//   down, residual) -> final RMSNorm -> lm_head of the last token.
// Activations are rows of [n, dim]; every linear runs once per batch over the rows of every
// sequence, so prefill, and decode of many sequences, read each weight once per batch instead of
// once per token; only RoPE and attention run per sequence, at its own positions and slot. Weights
// come from a WeightSource (the file, or the paging cache), acquired in schedule order and released
// as soon as they are used. q/k/v, and gate/up with SiLU*mul, run as one parallel region each
// (INT4 on INT8 activations, where the source can hold them together; bit-identical to separate
// products): 4 regions per layer instead of 7, which bound a small model's decode.
// runtime/forward_cuda.cpp is the same pass, step for step, as CUDA kernels.
#include <algorithm>
#include <vector>

#include "base/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu_pool.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "runtime/forward_pass.hpp"

namespace ferry {
namespace {

// Activations and the KV caches of every slot, sized at load (never per token).
struct CpuState {
  CpuState(const ModelConfig& c, const PassShape& shape);
  std::vector<float> x;         // [batch, hidden] residual stream
  std::vector<float> xb;        // [batch, hidden] normed input of a block
  std::vector<float> q;         // [batch, heads * head_dim]
  std::vector<float> k, v;      // [batch, kv_heads * head_dim] before they enter the cache
  std::vector<float> att_out;   // [batch, heads * head_dim]
  std::vector<float> proj;      // [batch, hidden] attention / MLP output
  std::vector<float> gate, up;  // [batch, intermediate]
  std::vector<float> partials;  // [min(batch, 64), heads, attention_max_chunks(ctx), head_dim + 2]
  std::vector<float> inv_freq;  // [head_dim / 2] RoPE frequencies (scaling applied)
  std::vector<int32_t> ids;     // [batch] the call's tokens, sequence after sequence
  // [slots, layers, ctx, kv_heads * head_dim] keys and values: the pair of the KV type is sized
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
      ids(s.batch),
      k16(s.kv == KvType::f16 ? s.slots * c.layers * s.ctx * c.kv_heads * c.head_dim : 0),
      v16(k16.size()),
      k32(s.kv == KvType::f32 ? s.slots * c.layers * s.ctx * c.kv_heads * c.head_dim : 0),
      v32(k32.size()) {}

class CpuForward final : public ForwardPass {
 public:
  CpuForward(const ModelConfig& c, const ModelWeights& w, const PassShape& shape, CpuPool& pool,
             bool int8_activations, LinearObserver* observer)
      : c_(c),
        w_(w),
        shape_(shape),
        pool_(pool),
        int8_(int8_activations),
        s_(c, shape),
        observer_(observer) {}
  std::shared_ptr<CacheBackend> cache_backend() override { return nullptr; }
  void forward_seqs(WeightSource& src, std::span<const SeqChunk> seqs, std::span<float> logits,
                    int32_t* argmax, LogitRows rows) override;

 private:
  void linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y);
  void product(uint32_t id, const Linear& l, const float* x, uint64_t n, float* y);
  void qkv(WeightSource& src, uint64_t layer, uint64_t n);
  void gate_up(WeightSource& src, uint64_t layer, uint64_t n);
  void attention_block(WeightSource& src, uint64_t layer, std::span<const SeqChunk> seqs,
                       uint64_t n);
  void attend(uint64_t layer, const SeqChunk& seq, uint64_t row);
  void mlp_block(WeightSource& src, uint64_t layer, uint64_t n);

  const ModelConfig& c_;
  const ModelWeights& w_;
  PassShape shape_;
  CpuPool& pool_;
  bool int8_;  // INT4 and INT8 linears on INT8 activations (matmul_int{4,8}_q8_cpu)
  CpuState s_;
  LinearObserver* observer_;  // null but for `ferry calibrate`
};

// y[n, rows] = x[n, cols] W^T (+ b), with W acquired from the source for just this call.
void CpuForward::linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y) {
  HeldWeight held(src, id);
  product(id, held.linear, x, n, y);
  held.release();
}

// The product of a held weight, one parallel region.
void CpuForward::product(uint32_t id, const Linear& l, const float* x, uint64_t n, float* y) {
  if (observer_) observer_->observe(id, x, n, l.cols);
  if (l.is_int4())
    int8_ ? matmul_int4_q8_cpu(pool_, l.q4, x, n, y) : matmul_int4_cpu(pool_, l.q4, x, n, y);
  else if (l.is_int8())
    int8_ ? matmul_int8_q8_cpu(pool_, l.q8, x, n, y) : matmul_int8_cpu(pool_, l.q8, x, n, y);
  else
    matmul_bf16_cpu(pool_, l.bf16, l.rows, l.cols, x, n, y);
  if (const uint16_t* bias = w_.biases[id]) add_bias_cpu(y, bias, n, l.rows);
}

// q, k, v of xb (+ bias). On INT8 activations with all three held at once: the INT4 and INT8
// ones (the default's v_proj) in one parallel region (bit-identical to separate products);
// otherwise (the fp32 path, bf16 weights, or a cache budget that holds one weight at a time) one
// product after another.
void CpuForward::qkv(WeightSource& src, uint64_t layer, uint64_t n) {
  const uint32_t ids[3] = {linear_id(layer, kQ), linear_id(layer, kK), linear_id(layer, kV)};
  float* ys[3] = {s_.q.data(), s_.k.data(), s_.v.data()};
  const float* x = s_.xb.data();
  if (!int8_ || !src.can_hold(ids)) {
    for (int i = 0; i < 3; ++i) linear(src, ids[i], x, n, ys[i]);
    return;
  }
  HeldWeight q(src, ids[0]), k(src, ids[1]), v(src, ids[2]);  // in schedule order
  const Linear* ls[3] = {&q.linear, &k.linear, &v.linear};
  // The INT4 and INT8 ones share one region; bf16 ones are products of their own.
  const auto fusable = [](const Linear& l) { return l.is_int4() || l.is_int8(); };
  FusedPart parts[3];
  size_t fused = 0;
  for (int i = 0; i < 3; ++i)
    if (fusable(*ls[i]))
      parts[fused++] = {.q4 = ls[i]->q4, .q8 = ls[i]->q8, .y = ys[i], .int8 = ls[i]->is_int8()};
  if (fused < 2) fused = 0;
  for (int i = 0; i < 3; ++i)
    if (fused && fusable(*ls[i]) && observer_) observer_->observe(ids[i], x, n, ls[i]->cols);
  if (fused) matmul_q8_fused_cpu(pool_, parts, fused, x, n, best_kernel_isa());
  for (int i = 0; i < 3; ++i) {
    if (!fused || !fusable(*ls[i])) {
      product(ids[i], *ls[i], x, n, ys[i]);  // its bias too
    } else if (const uint16_t* bias = w_.biases[ids[i]]) {
      add_bias_cpu(ys[i], bias, n, ls[i]->rows);
    }
  }
  q.release();
  k.release();
  v.release();
}

// gate and up of xb, and silu(gate) * up into s_.gate, the down projection's input: one region
// with the epilogue inside for INT4 on INT8 activations held together, else as qkv falls back.
void CpuForward::gate_up(WeightSource& src, uint64_t layer, uint64_t n) {
  const uint32_t ids[2] = {linear_id(layer, kGate), linear_id(layer, kUp)};
  const float* x = s_.xb.data();
  float *g = s_.gate.data(), *u = s_.up.data();
  const uint64_t count = n * c_.intermediate;
  if (!int8_ || !src.can_hold(ids)) {
    linear(src, ids[0], x, n, g);
    linear(src, ids[1], x, n, u);
    silu_mul_cpu(g, u, count, g);
    return;
  }
  HeldWeight gate(src, ids[0]), up(src, ids[1]);
  const Linear &gl = gate.linear, &ul = up.linear;
  if (gl.is_int4() && ul.is_int4() && !w_.biases[ids[0]] && !w_.biases[ids[1]]) {
    if (observer_) {
      observer_->observe(ids[0], x, n, gl.cols);
      observer_->observe(ids[1], x, n, ul.cols);
    }
    matmul_int4_q8_gate_up_cpu(pool_, gl.q4, ul.q4, x, n, g, u, g, best_kernel_isa());
  } else {
    product(ids[0], gl, x, n, g);
    product(ids[1], ul, x, n, u);
    silu_mul_cpu(g, u, count, g);
  }
  gate.release();
  up.release();
}

// For one sequence whose rows start at `row` of the batch: rotates its queries and keys to its
// positions, stores its keys and values in its slot's cache rows pos .. pos+n-1 of the layer and
// runs attention over that cache, in the cache's element type. Causal: token t sees positions
// 0 .. pos+t of its own sequence; heads and chunks of the context split over the pool.
void CpuForward::attend(uint64_t layer, const SeqChunk& seq, uint64_t row) {
  const uint64_t n = seq.tokens.size(), pos = seq.pos;
  const uint64_t q_dim = c_.heads * c_.head_dim, kv_dim = c_.kv_heads * c_.head_dim;
  float *q = s_.q.data() + row * q_dim, *k = s_.k.data() + row * kv_dim;
  const float* v = s_.v.data() + row * kv_dim;
  float* out = s_.att_out.data() + row * q_dim;
  const float scale = rope_attention_factor(c_);
  rope_cpu(q, n, c_.heads, c_.head_dim, pos, s_.inv_freq.data(), scale);
  rope_cpu(k, n, c_.kv_heads, c_.head_dim, pos, s_.inv_freq.data(), scale);
  const uint64_t count = n * kv_dim;  // [slots, layers, ctx, kv_dim]
  const uint64_t base = (seq.slot * c_.layers + layer) * shape_.ctx * kv_dim,
                 at = base + pos * kv_dim;
  if (shape_.kv == KvType::f16) {
    store_f16_cpu(k, count, s_.k16.data() + at);
    store_f16_cpu(v, count, s_.v16.data() + at);
    attention_cpu(pool_, q, s_.k16.data() + base, s_.v16.data() + base, n, pos, c_.heads,
                  c_.kv_heads, c_.head_dim, s_.partials.data(), out);
    return;
  }
  std::copy_n(k, count, s_.k32.data() + at);
  std::copy_n(v, count, s_.v32.data() + at);
  attention_cpu(pool_, q, s_.k32.data() + base, s_.v32.data() + base, n, pos, c_.heads, c_.kv_heads,
                c_.head_dim, s_.partials.data(), out);
}

void CpuForward::attention_block(WeightSource& src, uint64_t layer, std::span<const SeqChunk> seqs,
                                 uint64_t n) {
  const LayerWeights& L = w_.layers[layer];
  rmsnorm_cpu(s_.x.data(), L.attn_norm, float(c_.rms_eps), n, c_.hidden, s_.xb.data());
  qkv(src, layer, n);
  if (c_.qk_norm) {  // Qwen3: each head of q and k normed on its own, before RoPE
    rmsnorm_cpu(s_.q.data(), L.q_norm, float(c_.rms_eps), n * c_.heads, c_.head_dim, s_.q.data());
    rmsnorm_cpu(s_.k.data(), L.k_norm, float(c_.rms_eps), n * c_.kv_heads, c_.head_dim,
                s_.k.data());
  }
  for (uint64_t i = 0, row = 0; i < seqs.size(); row += seqs[i++].tokens.size())
    attend(layer, seqs[i], row);
  linear(src, linear_id(layer, kO), s_.att_out.data(), n, s_.proj.data());
  add_cpu(s_.x.data(), s_.proj.data(), n * c_.hidden);
}

void CpuForward::mlp_block(WeightSource& src, uint64_t layer, uint64_t n) {
  const LayerWeights& L = w_.layers[layer];
  rmsnorm_cpu(s_.x.data(), L.mlp_norm, float(c_.rms_eps), n, c_.hidden, s_.xb.data());
  gate_up(src, layer, n);
  linear(src, linear_id(layer, kDown), s_.gate.data(), n, s_.proj.data());
  add_cpu(s_.x.data(), s_.proj.data(), n * c_.hidden);
}

void CpuForward::forward_seqs(WeightSource& src, std::span<const SeqChunk> seqs,
                              std::span<float> logits, int32_t* argmax, LogitRows rows) {
  const uint64_t n = check_forward_seqs(c_, shape_, seqs, logits, argmax, rows);
  uint64_t row = 0;
  for (const SeqChunk& q : seqs)
    row += std::copy(q.tokens.begin(), q.tokens.end(), s_.ids.begin() + ptrdiff_t(row)) -
           (s_.ids.begin() + ptrdiff_t(row));
  embed_rows_cpu(w_.embed, s_.ids.data(), n, c_.hidden, s_.x.data());
  for (uint64_t l = 0; l < c_.layers; ++l) {
    attention_block(src, l, seqs, n);
    mlp_block(src, l, n);
  }
  // Only each sequence's last token's logits are needed to choose its next one; perplexity asks
  // for every row of its one sequence.
  const float eps = float(c_.rms_eps);
  uint64_t out_rows = n;
  if (rows == LogitRows::all) {
    rmsnorm_cpu(s_.x.data(), w_.final_norm, eps, n, c_.hidden, s_.xb.data());
  } else {
    out_rows = seqs.size();
    for (uint64_t i = 0, last = 0; i < seqs.size(); ++i) {
      last += seqs[i].tokens.size();
      rmsnorm_cpu(&s_.x[(last - 1) * c_.hidden], w_.final_norm, eps, 1, c_.hidden,
                  &s_.xb[i * c_.hidden]);
    }
  }
  linear(src, lm_head_id(c_.layers), s_.xb.data(), out_rows, logits.data());
  if (argmax)
    for (uint64_t i = 0; i < out_rows; ++i)
      argmax_cpu(logits.data() + i * c_.vocab, c_.vocab, argmax + i);
}

}  // namespace

std::unique_ptr<ForwardPass> make_cpu_forward(const ModelConfig& c, const ModelWeights& w,
                                              const PassShape& shape, CpuPool& pool,
                                              bool int8_activations, LinearObserver* observer) {
  return std::make_unique<CpuForward>(c, w, shape, pool, int8_activations, observer);
}

double cpu_pass_bytes(const ModelConfig& c, const PassShape& s) {
  const double kv_bytes = double(s.slots * s.ctx) * kv_bytes_per_position(c, s.kv);
  const double activations = 4.0 * double(s.batch) *
                             double(4 * c.hidden + 2 * c.heads * c.head_dim +
                                    2 * c.kv_heads * c.head_dim + 2 * c.intermediate);
  const double partials =
      4.0 * double(attention_scratch_floats(s.batch, s.ctx, c.heads, c.head_dim));
  return kv_bytes + activations + partials;
}

}  // namespace ferry
