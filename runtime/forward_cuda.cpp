// The forward pass on the GPU, step for step the CPU pass of runtime/forward_cpu.cpp (read that one
// first): embedding rows gathered on the host (the table stays in host memory: only the rows of
// the batch cross the bus, hidden x 4 bytes a token), then per layer RMSNorm, q/k/v (+bias),
// per-head RMSNorm of q and k (Qwen3), RoPE, causal grouped-query attention over the KV cache, o,
// residual, RMSNorm, gate/up, SiLU*mul, down, residual; final RMSNorm and lm_head of the last
// token. Every step is a kernel enqueued on one compute stream; each linear weight comes from the
// paging cache, whose acquire makes the stream wait on the entry's ready event and whose release
// records its last use. The host runs ahead of the GPU and blocks once per call, on the logits'
// copy back. With --cuda-graph, a pass of up to 8 tokens whose weights are all resident is
// recorded by the same calls and launched as one CUDA graph (run_pass).
//
// Launches per layer at decode (n <= 8 tokens; INT4 weights, f16 KV cache, Qwen2 with q/k/v
// biases; Qwen3's per-head norms add 2 to each count; attention is 2 kernels, group and merge):
//  - before: 21. rmsnorm, q, k, v, add_bias x 3, rope q, rope k, store_f16 k, v, attention (2),
//    o, add, rmsnorm, gate, up, silu_mul, down, add.
//  - now, every weight resident (--cache-budget all): 9. rmsnorm, q+k+v as one GEMV with the
//    biases in its store, rope_kv (q and k rotated, k and v stored as f16), attention (2), o with
//    the residual add in its store, rmsnorm, gate+up paired storing silu(gate)*up, down with the
//    residual add. The fused kernels give the unfused steps' results (kernels/gemv_fused.hpp).
//    With the default INT8 v_proj: 10 (q+k one launch; v's INT8 GEMV, its bias in its store).
//  - now, streaming below the model (the cache holds a group only where its free arena
//    guarantees the placement, WeightSource::can_hold; at the minimum budget never): 13. q, k, v,
//    gate, up and silu_mul separate; bias and residual still in the INT4 and INT8 GEMVs'
//    stores. The bf16 cache format and prefill (n > 8: dequant + GEMM) keep add_bias and add
//    launches; RoPE and the KV store are one launch there too.
#include "runtime/forward_cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "cache/backend_cuda.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_graph.hpp"
#include "kernels/cuda_memory.hpp"
#include "kernels/dequant.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "runtime/machine/cuda_device.hpp"

namespace ferry {
namespace {

int current_device() {
  int d = 0;
  CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

// Up to this many tokens an INT4 product runs the fused GEMV (weights read once per 8 tokens, at
// 0.53 bytes a weight); above it, prefill dequantizes the weight to bf16 once and runs the
// cuBLASLt GEMM on the tensor cores (a 64-token batch would otherwise read the weights 8 times).
constexpr uint64_t kGemvMaxBatch = 8;

// The largest staging the bf16 cache format needs: the largest packed weight.
uint64_t staging_bytes(const ModelWeights& w) {
  uint64_t most = 0;
  for (const Linear& l : w.linears)
    if (l.is_int4())
      most = std::max(most, cuda_staging_bytes(l.q4));
    else if (l.is_int8())
      most = std::max(most, cuda_staging_bytes(l.q8));
  return most;
}

// The bf16 scratch an INT4 weight is dequantized into for a prefill batch: the largest linear
// weight but lm_head, which runs in GEMV groups of up to 8 rows (Qwen2-32B: gate/up, 27,648 x 5,120
// x 2 = 283 MB; its lm_head would need 1.56 GB).
uint64_t prefill_scratch(const ModelWeights& w, uint64_t batch, bool bf16_cache) {
  if (batch <= kGemvMaxBatch || bf16_cache) return 0;  // bf16 entries go to the GEMM as they are
  uint64_t most = 0;
  for (size_t id = 0; id + 1 < w.linears.size(); ++id)
    if (w.linears[id].is_int4() || w.linears[id].is_int8())
      most = std::max(most, w.linears[id].rows * w.linears[id].cols);
  return most;
}

uint64_t widest_input(const ModelConfig& c) {
  return std::max({c.hidden, c.intermediate, c.heads * c.head_dim});
}

// Norm weights of every layer in one upload: [layers, 2, hidden] then the final norm.
std::vector<uint16_t> gather_norms(const ModelConfig& c, const ModelWeights& w) {
  std::vector<uint16_t> out;
  out.reserve((2 * c.layers + 1) * c.hidden);
  for (const LayerWeights& L : w.layers) {
    out.insert(out.end(), L.attn_norm, L.attn_norm + c.hidden);
    out.insert(out.end(), L.mlp_norm, L.mlp_norm + c.hidden);
  }
  out.insert(out.end(), w.final_norm, w.final_norm + c.hidden);
  return out;
}

// Qwen3's q_norm and k_norm of every layer in one upload: [layers, 2, head_dim]; empty otherwise.
std::vector<uint16_t> gather_qk_norms(const ModelConfig& c, const ModelWeights& w) {
  std::vector<uint16_t> out;
  if (!c.qk_norm) return out;
  out.reserve(2 * c.layers * c.head_dim);
  for (const LayerWeights& L : w.layers) {
    out.insert(out.end(), L.q_norm, L.q_norm + c.head_dim);
    out.insert(out.end(), L.k_norm, L.k_norm + c.head_dim);
  }
  return out;
}

class CudaForward final : public ForwardPass {
 public:
  CudaForward(const CudaForwardOptions& o, const ModelConfig& c, const ModelWeights& w,
              const PassShape& shape);
  ~CudaForward() override { cudaStreamSynchronize(stream_.s); }

  std::shared_ptr<CacheBackend> cache_backend() override { return backend_; }
  PassStats stats() const override {
    const CudaGraphStats& g = graph_.stats();
    return {.graph_launches = g.launches,
            .graph_builds = g.builds,
            .graph_updates = g.updates,
            .graph_failures = graph_failures_,
            .graph_error = graph_error_};
  }
  void forward_seqs(WeightSource& src, std::span<const SeqChunk> seqs, std::span<float> logits,
                    int32_t* argmax, LogitRows rows) override;

 private:
  void run_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                std::span<float> logits, int32_t* argmax, LogitRows rows);
  void enqueue_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                    std::span<float> logits, int32_t* argmax, LogitRows rows);
  bool graph_wanted(WeightSource& src, uint64_t n, bool greedy);
  void graphed_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                    std::span<float> logits, int32_t* argmax, LogitRows rows);
  void output_logits(WeightSource& src, uint64_t rows, std::span<float> logits, int32_t* argmax);
  void copy_back(uint64_t rows, std::span<float> logits, int32_t* argmax, uint64_t r);
  void linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y,
              GemvStore store);
  void product(const Linear& l, uint32_t id, const float* x, uint64_t n, float* y, GemvStore store);
  bool fusable(const WeightSource& src, uint64_t n, std::initializer_list<uint32_t> ids,
               size_t int4) const;
  void qkv(WeightSource& src, uint64_t layer, uint64_t n);
  void gate_up(WeightSource& src, uint64_t layer, uint64_t n);
  void attention_block(WeightSource& src, uint64_t layer, std::span<const SeqChunk> seqs,
                       uint64_t n);
  void attend(uint64_t layer, const SeqChunk& seq, uint64_t row);
  void mlp_block(WeightSource& src, uint64_t layer, uint64_t n);
  const uint16_t* norm(uint64_t layer, int which) const {
    return norms_.get() + (2 * layer + uint64_t(which)) * c_.hidden;
  }
  const uint16_t* qk_norm(uint64_t layer, int which) const {  // 0: q_norm, 1: k_norm
    return qk_norms_.get() + (2 * layer + uint64_t(which)) * c_.head_dim;
  }

  // The device current at construction, where everything below lives: set again at the top of
  // every call, so that an engine driven from another thread (a server's scheduler) or beside a
  // second GPU launches where its memory is.
  int device_ = current_device();
  const ModelConfig& c_;
  const ModelWeights& w_;
  uint64_t ctx_, batch_, slots_, q_dim_, kv_dim_;
  KvType kv_;
  bool bf16_cache_;     // entries dequantized to bf16 at upload (--cache-format bf16): no INT4 GEMV
  bool use_graph_;      // --cuda-graph: resident decode steps recorded and launched as a graph
  bool all_quantized_;  // every linear INT4 or INT8: no cuBLASLt in a decode step
  uint32_t stream_shapes_ = 0;  // bit 2(n-1)+greedy: a pass of that shape ran on the stream
  CudaGraph graph_;             // the decode step's executable graph, updated step by step
  uint64_t graph_failures_ = 0;
  std::string graph_error_;
  GemvX gemv_x_;               // the INT4 GEMV's activations (--gpu-activations)
  CudaStream stream_;          // the compute stream; the cache's copy stream belongs to its backend
  DeviceArray<float> x_, xb_;  // [batch, hidden] residual stream, normed block input
  DeviceArray<float> q_, att_out_;  // [batch, heads * head_dim]
  DeviceArray<float> k_, v_;        // [batch, kv_heads * head_dim] before they enter the cache
  DeviceArray<float> proj_;         // [batch, hidden]
  DeviceArray<float> gate_, up_;    // [batch, intermediate]
  DeviceArray<float>
      partials_;  // [min(batch, 64), heads, chunks(ctx), head_dim + 2] (attention.hpp)
  // [slots, layers, ctx, kv_heads * head_dim] keys and values: the pair of kv_'s type is allocated
  DeviceArray<uint16_t> k16_, v16_;  // f16 bits
  DeviceArray<float> k32_, v32_;
  DeviceArray<float> logits_;          // [kGemvMaxBatch, vocab]: lm_head runs in GEMV groups
  DeviceArray<int32_t> token_;         // [slots] greedy choices
  DeviceArray<float> inv_freq_;        // [head_dim / 2]
  DeviceArray<uint16_t> norms_;        // [layers, 2, hidden] + [hidden] bf16
  DeviceArray<uint16_t> qk_norms_;     // [layers, 2, head_dim] bf16, Qwen3 only
  DeviceArray<uint16_t> biases_;       // q/k/v biases of every layer, bf16, packed
  std::vector<const uint16_t*> bias_;  // [linear ids] into biases_, or nullptr (w.biases' twin)
  PinnedArray<float> embed_rows_;      // [batch, hidden] host: the batch's embedding rows
  PinnedArray<float> logits_host_;     // [kGemvMaxBatch, vocab] host
  PinnedArray<int32_t> token_host_;    // [slots] host
  std::vector<int32_t> ids_;           // [batch] the call's tokens, sequence after sequence
  DeviceArray<uint16_t> prefill_w_;    // [largest linear but lm_head] bf16, batches above 8 only
  CublasLt blas_;
  std::shared_ptr<CudaBackend> backend_;
};

CudaForward::CudaForward(const CudaForwardOptions& o, const ModelConfig& c, const ModelWeights& w,
                         const PassShape& shape)
    : c_(c),
      w_(w),
      ctx_(shape.ctx),
      batch_(shape.batch),
      slots_(shape.slots),
      q_dim_(c.heads * c.head_dim),
      kv_dim_(c.kv_heads * c.head_dim),
      kv_(shape.kv),
      bf16_cache_(o.bf16_cache),
      use_graph_(o.cuda_graph),
      all_quantized_(std::all_of(w.linears.begin(), w.linears.end(),
                                 [](const Linear& l) { return l.is_int4() || l.is_int8(); })),
      gemv_x_(o.gemv_x),
      x_(batch_ * c.hidden, "activations"),
      xb_(batch_ * c.hidden, "activations"),
      q_(batch_ * q_dim_, "activations"),
      att_out_(batch_ * q_dim_, "activations"),
      k_(batch_ * kv_dim_, "activations"),
      v_(batch_ * kv_dim_, "activations"),
      proj_(batch_ * c.hidden, "activations"),
      gate_(batch_ * c.intermediate, "activations"),
      up_(batch_ * c.intermediate, "activations"),
      partials_(attention_scratch_floats(batch_, ctx_, c.heads, c.head_dim), "attention"),
      k16_(kv_ == KvType::f16 ? slots_ * c.layers * ctx_ * kv_dim_ : 0, "the KV cache"),
      v16_(kv_ == KvType::f16 ? slots_ * c.layers * ctx_ * kv_dim_ : 0, "the KV cache"),
      k32_(kv_ == KvType::f32 ? slots_ * c.layers * ctx_ * kv_dim_ : 0, "the KV cache"),
      v32_(kv_ == KvType::f32 ? slots_ * c.layers * ctx_ * kv_dim_ : 0, "the KV cache"),
      logits_(kGemvMaxBatch * c.vocab, "logits"),
      token_(slots_, "the greedy tokens"),
      inv_freq_(c.head_dim / 2, "RoPE"),
      norms_((2 * c.layers + 1) * c.hidden, "norm weights"),
      qk_norms_(c.qk_norm ? 2 * c.layers * c.head_dim : 0, "norm weights"),
      bias_(w.linears.size(), nullptr),
      embed_rows_(batch_ * c.hidden),
      logits_host_(kGemvMaxBatch * c.vocab),
      token_host_(slots_),
      ids_(batch_),
      prefill_w_(prefill_scratch(w, batch_, o.bf16_cache), "the prefill dequantization scratch"),
      blas_(batch_ * widest_input(c)) {
  const std::vector<float> inv = rope_inv_freq(c);
  inv_freq_.upload(inv.data(), inv.size());
  const std::vector<uint16_t> norms = gather_norms(c, w);
  norms_.upload(norms.data(), norms.size());
  const std::vector<uint16_t> qk_norms = gather_qk_norms(c, w);
  if (!qk_norms.empty()) qk_norms_.upload(qk_norms.data(), qk_norms.size());
  std::vector<uint16_t> biases;
  std::vector<uint64_t> at(w.linears.size(), ~0ull);
  for (size_t id = 0; id < w.linears.size(); ++id)
    if (const uint16_t* bias = w.biases[id]) {
      at[id] = biases.size();
      biases.insert(biases.end(), bias, bias + w.linears[id].rows);
    }
  if (!biases.empty()) {
    biases_ = DeviceArray<uint16_t>(biases.size(), "biases");
    biases_.upload(biases.data(), biases.size());
    for (size_t id = 0; id < at.size(); ++id)
      if (at[id] != ~0ull) bias_[id] = biases_.get() + at[id];
  }
  // What the cache may take: everything free now (after the state above), or what
  // --vram-limit leaves once the memory in use on the card (this process's and others') is
  // counted against it.
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  uint64_t available = free_b;
  if (o.vram_limit) {
    const uint64_t used = total_b - free_b;
    if (o.vram_limit <= used + o.auto_margin)
      throw Error(
          Setting::vram_limit,
          fmt::format(
              "a device memory limit of {} leaves nothing for the weight cache: the KV cache, "
              "activations and the CUDA context already take {}; raise it, or lower the context or "
              "the prefill batch",
              human_bytes(double(o.vram_limit)), human_bytes(double(used))));
    available = std::min<uint64_t>(available, o.vram_limit - used);
  }
  backend_ = std::make_shared<CudaBackend>(o.device, stream_.s, o.bf16_cache ? staging_bytes(w) : 0,
                                           available, o.auto_margin, o.pin_host);
}

// y = W x (+ b), or y += W x (+ b) with GemvStore::add (the residual adds of o and down), for a
// held weight. At decode an INT4 or INT8 weight runs its GEMV with bias and residual in its store
// (one launch); the other paths run the product into y, or into proj_ first for add, then
// add_bias and add.
void CudaForward::product(const Linear& l, uint32_t id, const float* x, uint64_t n, float* y,
                          GemvStore store) {
  if (l.is_int4() && n <= kGemvMaxBatch) {
    const GemvOut out{l.q4, y, bias_[id]};
    return gemv_int4_fused_cuda(&out, 1, x, n, store, gemv_x_, stream_.s);
  }
  if (l.is_int8() && n <= kGemvMaxBatch) {
    const GemvOut8 out{l.q8, y, bias_[id]};
    return gemv_int8_fused_cuda(&out, 1, x, n, store, stream_.s);
  }
  float* to = store == GemvStore::add ? proj_.get() : y;
  if (l.is_int4()) {
    dequant_int4_bf16_cuda(l.q4, prefill_w_.get(), stream_.s);
    blas_.matmul_bf16(prefill_w_.get(), l.rows, l.cols, x, n, to, stream_.s);
  } else if (l.is_int8()) {
    dequant_int8_bf16_cuda(l.q8, prefill_w_.get(), stream_.s);
    blas_.matmul_bf16(prefill_w_.get(), l.rows, l.cols, x, n, to, stream_.s);
  } else
    blas_.matmul_bf16(l.bf16, l.rows, l.cols, x, n, to, stream_.s);
  if (bias_[id]) add_bias_cuda(to, bias_[id], n, l.rows, stream_.s);
  if (store == GemvStore::add) add_cuda(y, to, n * l.rows, stream_.s);
}

void CudaForward::linear(WeightSource& src, uint32_t id, const float* x, uint64_t n, float* y,
                         GemvStore store) {
  HeldWeight held(src, id);  // the stream now waits for the entry's upload
  product(held.linear, id, x, n, y, store);
  held.release();  // records the entry's last use after the product
}

// Whether weights `ids` can share one fused launch: decode (n <= 8), at least `int4` of them INT4
// entries (the file's INT4 weights in the cache's INT4 format; INT8 and bf16 entries take their
// own products beside the launch), and a
// source that lets the caller hold them together (WeightSource::can_hold: always when reading in
// place or every weight is resident; a streaming cache only when its free arena guarantees it).
bool CudaForward::fusable(const WeightSource& src, uint64_t n, std::initializer_list<uint32_t> ids,
                          size_t int4) const {
  if (n > kGemvMaxBatch || bf16_cache_ ||
      !src.can_hold(std::span<const uint32_t>(ids.begin(), ids.size())))
    return false;
  size_t count = 0;
  for (uint32_t id : ids) count += w_.linears[id].is_int4();
  return count >= int4;
}

// q, k and v of xb_: one launch over the rows of the INT4 ones and one over the INT8 ones when
// two or more are of a kind (the default INT8 k_proj and v_proj beside an INT4 q_proj: two
// launches), biases in their stores, when the source lets the three be held together; the others
// a product each. All three are acquired before the launches and released after them.
void CudaForward::qkv(WeightSource& src, uint64_t layer, uint64_t n) {
  const uint32_t ids[3] = {linear_id(layer, kQ), linear_id(layer, kK), linear_id(layer, kV)};
  float* ys[3] = {q_.get(), k_.get(), v_.get()};
  size_t int4 = 0, int8 = 0;
  for (uint32_t id : ids) int4 += w_.linears[id].is_int4(), int8 += w_.linears[id].is_int8();
  if (!fusable(src, n, {ids[0], ids[1], ids[2]}, 0) || (int4 < 2 && int8 < 2)) {
    for (int i = 0; i < 3; ++i) linear(src, ids[i], xb_.get(), n, ys[i], GemvStore::set);
    return;
  }
  HeldWeight q(src, ids[0]), k(src, ids[1]), v(src, ids[2]);
  const Linear* ls[3] = {&q.linear, &k.linear, &v.linear};
  GemvOut outs4[3];
  GemvOut8 outs8[3];
  size_t fused4 = 0, fused8 = 0;
  for (int i = 0; i < 3; ++i) {
    if (ls[i]->is_int4()) outs4[fused4++] = {ls[i]->q4, ys[i], bias_[ids[i]]};
    if (ls[i]->is_int8()) outs8[fused8++] = {ls[i]->q8, ys[i], bias_[ids[i]]};
  }
  // A source that changed a weight's format may leave fewer than two of a kind: a product each.
  if (fused4 >= 2)
    gemv_int4_fused_cuda(outs4, fused4, xb_.get(), n, GemvStore::set, gemv_x_, stream_.s);
  if (fused8 >= 2) gemv_int8_fused_cuda(outs8, fused8, xb_.get(), n, GemvStore::set, stream_.s);
  for (int i = 0; i < 3; ++i) {
    const bool done = (ls[i]->is_int4() && fused4 >= 2) || (ls[i]->is_int8() && fused8 >= 2);
    if (!done) product(*ls[i], ids[i], xb_.get(), n, ys[i], GemvStore::set);
  }
  q.release();
  k.release();
  v.release();
}

// silu(gate xb_) * (up xb_) into gate_, the down projection's input: one launch over both
// weights' rows when fusable (no silu_mul launch); otherwise two products and silu_mul.
void CudaForward::gate_up(WeightSource& src, uint64_t layer, uint64_t n) {
  const uint32_t ig = linear_id(layer, kGate), iu = linear_id(layer, kUp);
  if (!fusable(src, n, {ig, iu}, 2) || bias_[ig] || bias_[iu]) {
    linear(src, ig, xb_.get(), n, gate_.get(), GemvStore::set);
    linear(src, iu, xb_.get(), n, up_.get(), GemvStore::set);
    silu_mul_cuda(gate_.get(), up_.get(), n * c_.intermediate, gate_.get(), stream_.s);
    return;
  }
  HeldWeight gate(src, ig), up(src, iu);
  if (gate.linear.is_int4() && up.linear.is_int4()) {
    gemv_int4_silu_mul_cuda(gate.linear.q4, up.linear.q4, xb_.get(), n, gate_.get(), gemv_x_,
                            stream_.s);
  } else {  // as in qkv
    product(gate.linear, ig, xb_.get(), n, gate_.get(), GemvStore::set);
    product(up.linear, iu, xb_.get(), n, up_.get(), GemvStore::set);
    silu_mul_cuda(gate_.get(), up_.get(), n * c_.intermediate, gate_.get(), stream_.s);
  }
  gate.release();
  up.release();
}

// As attend() of runtime/forward_cpu.cpp: one sequence's rows (from `row`) rotated to its
// positions, its keys and values into its slot's cache rows pos .. pos+n-1, then attention over
// that cache in its element type.
void CudaForward::attend(uint64_t layer, const SeqChunk& seq, uint64_t row) {
  const uint64_t n = seq.tokens.size(), pos = seq.pos;
  float *q = q_.get() + row * q_dim_, *k = k_.get() + row * kv_dim_;
  const float* v = v_.get() + row * kv_dim_;
  float* out = att_out_.get() + row * q_dim_;
  const float scale = rope_attention_factor(c_);
  const uint64_t count = n * kv_dim_, base = (seq.slot * c_.layers + layer) * ctx_ * kv_dim_,
                 at = base + pos * kv_dim_;
  if (kv_ == KvType::f16) {  // q and k rotated, k and v stored to the cache: one launch
    rope_kv_cuda(q, k, v, n, c_.heads, c_.kv_heads, c_.head_dim, pos, inv_freq_.get(), scale,
                 k16_.get() + at, v16_.get() + at, stream_.s);
    attention_cuda(q, k16_.get() + base, v16_.get() + base, n, pos, c_.heads, c_.kv_heads,
                   c_.head_dim, partials_.get(), out, stream_.s);
    return;
  }
  rope_kv_cuda(q, k, v, n, c_.heads, c_.kv_heads, c_.head_dim, pos, inv_freq_.get(), scale, nullptr,
               nullptr, stream_.s);
  const uint64_t bytes = count * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(k32_.get() + at, k, bytes, cudaMemcpyDeviceToDevice, stream_.s));
  CUDA_CHECK(cudaMemcpyAsync(v32_.get() + at, v, bytes, cudaMemcpyDeviceToDevice, stream_.s));
  attention_cuda(q, k32_.get() + base, v32_.get() + base, n, pos, c_.heads, c_.kv_heads,
                 c_.head_dim, partials_.get(), out, stream_.s);
}

void CudaForward::attention_block(WeightSource& src, uint64_t layer, std::span<const SeqChunk> seqs,
                                  uint64_t n) {
  rmsnorm_cuda(x_.get(), norm(layer, 0), float(c_.rms_eps), n, c_.hidden, xb_.get(), stream_.s);
  qkv(src, layer, n);
  if (c_.qk_norm) {  // Qwen3: each head of q and k normed on its own, before RoPE
    const float eps = float(c_.rms_eps);
    rmsnorm_cuda(q_.get(), qk_norm(layer, 0), eps, n * c_.heads, c_.head_dim, q_.get(), stream_.s);
    rmsnorm_cuda(k_.get(), qk_norm(layer, 1), eps, n * c_.kv_heads, c_.head_dim, k_.get(),
                 stream_.s);
  }
  for (uint64_t i = 0, row = 0; i < seqs.size(); row += seqs[i++].tokens.size())
    attend(layer, seqs[i], row);
  linear(src, linear_id(layer, kO), att_out_.get(), n, x_.get(), GemvStore::add);
}

void CudaForward::mlp_block(WeightSource& src, uint64_t layer, uint64_t n) {
  rmsnorm_cuda(x_.get(), norm(layer, 1), float(c_.rms_eps), n, c_.hidden, xb_.get(), stream_.s);
  gate_up(src, layer, n);
  linear(src, linear_id(layer, kDown), gate_.get(), n, x_.get(), GemvStore::add);
}

void CudaForward::forward_seqs(WeightSource& src, std::span<const SeqChunk> seqs,
                               std::span<float> logits, int32_t* argmax, LogitRows rows) {
  const uint64_t n =
      check_forward_seqs(c_, PassShape{ctx_, batch_, slots_, kv_}, seqs, logits, argmax, rows);
  CUDA_CHECK(cudaSetDevice(device_));
  try {
    run_pass(src, seqs, n, logits, argmax, rows);
  } catch (...) {
    // Work of this call may still be queued (an upload from embed_rows_, kernels reading held
    // entries): let it drain before the caller retries or frees anything. Errors of the drain
    // itself are the one being thrown, seen again.
    cudaStreamSynchronize(stream_.s);
    cudaGetLastError();
    backend_->collect_device_waits();  // frees this call's timing events for the next
    throw;
  }
}

// The host's part first (the batch's embedding rows), then every kernel of the pass enqueued on
// the compute stream, then one wait for what comes back. A decode step whose weights are all
// resident (no upload to wait for, no last use to signal: WeightSource::resident) is recorded
// instead and launched as one graph with --cuda-graph; the same calls build it, so it does what
// the stream would, launch for launch.
void CudaForward::run_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                           std::span<float> logits, int32_t* argmax, LogitRows rows) {
  uint64_t row = 0;
  for (const SeqChunk& q : seqs) {
    std::copy(q.tokens.begin(), q.tokens.end(), ids_.begin() + ptrdiff_t(row));
    row += q.tokens.size();
  }
  embed_rows_cpu(w_.embed, ids_.data(), n, c_.hidden, embed_rows_.get());
  if (graph_wanted(src, n, argmax != nullptr))
    graphed_pass(src, seqs, n, logits, argmax, rows);
  else
    enqueue_pass(src, seqs, n, logits, argmax, rows);
  // The rows with logits; the last group of them (output_logits) is what the last copy holds.
  const uint64_t out = rows == LogitRows::all ? n : seqs.size();
  copy_back(out, logits, argmax, (out - 1) / kGemvMaxBatch * kGemvMaxBatch);
  backend_->collect_device_waits();
}

// Whether this pass is recorded as a graph: --cuda-graph, up to 8 tokens over INT4 and INT8
// weights only (cuBLASLt's bf16 GEMM stays on the stream), every weight resident for good, and
// a pass of this shape (tokens, greedy or not) run on the stream once before, so that the
// kernels it launches are loaded before a recording meets them (drivers before CUDA 12.3 cannot
// load a module during a capture).
bool CudaForward::graph_wanted(WeightSource& src, uint64_t n, bool greedy) {
  if (!use_graph_ || !all_quantized_ || bf16_cache_ || n > kGemvMaxBatch) return false;
  const uint32_t shape = 1u << (2 * (n - 1) + (greedy ? 1 : 0));
  if (!(stream_shapes_ & shape)) {
    stream_shapes_ |= shape;
    return false;
  }
  return src.resident();
}

// Records the pass and launches it as one graph. A recording that fails (an operation the
// capture refused, a graph that cannot be made) has run nothing: the same pass then goes on the
// stream, where a real error throws again; after 4 failures graphs are off for good, and
// --stats says why.
void CudaForward::graphed_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                               std::span<float> logits, int32_t* argmax, LogitRows rows) {
  try {
    graph_.begin(stream_.s);
    enqueue_pass(src, seqs, n, logits, argmax, rows);
    graph_.launch(stream_.s);
    return;
  } catch (const std::exception& e) {
    graph_.abandon(stream_.s);
    graph_error_ = e.what();
    if (++graph_failures_ >= 4) use_graph_ = false;
  }
  enqueue_pass(src, seqs, n, logits, argmax, rows);
}

// Enqueues the pass up to the copy back of its last group of logits (or of its greedy tokens).
void CudaForward::enqueue_pass(WeightSource& src, std::span<const SeqChunk> seqs, uint64_t n,
                               std::span<float> logits, int32_t* argmax, LogitRows rows) {
  CUDA_CHECK(cudaMemcpyAsync(x_.get(), embed_rows_.get(), n * c_.hidden * sizeof(float),
                             cudaMemcpyHostToDevice, stream_.s));
  for (uint64_t l = 0; l < c_.layers; ++l) {
    attention_block(src, l, seqs, n);
    mlp_block(src, l, n);
  }
  // The rows that get logits, normed into xb_: every row (perplexity) or each sequence's last.
  const float eps = float(c_.rms_eps);
  if (rows == LogitRows::all) {
    rmsnorm_cuda(x_.get(), norm(c_.layers, 0), eps, n, c_.hidden, xb_.get(), stream_.s);
    return output_logits(src, n, logits, nullptr);
  }
  for (uint64_t i = 0, last = 0; i < seqs.size(); ++i) {
    last += seqs[i].tokens.size();
    rmsnorm_cuda(x_.get() + (last - 1) * c_.hidden, norm(c_.layers, 0), eps, 1, c_.hidden,
                 xb_.get() + i * c_.hidden, stream_.s);
  }
  output_logits(src, seqs.size(), logits, argmax);
}

// lm_head over the first `rows` rows of xb_, in groups of up to kGemvMaxBatch through the INT4
// GEMV (a GEMM would need the whole lm_head dequantized: 1.56 GB for Qwen2-32B). Greedy: the
// argmax of each row is made on the device and only the ids cross the bus (4 bytes a sequence
// instead of 608 KB for Qwen2's 152,064 logits); otherwise each group's logits are copied back
// as it is done, every group but the last waited for here (they share logits_host_), the last
// by copy_back.
void CudaForward::output_logits(WeightSource& src, uint64_t rows, std::span<float> logits,
                                int32_t* argmax) {
  for (uint64_t r = 0; r < rows; r += kGemvMaxBatch) {
    const uint64_t g = std::min<uint64_t>(kGemvMaxBatch, rows - r);
    linear(src, lm_head_id(c_.layers), xb_.get() + r * c_.hidden, g, logits_.get(), GemvStore::set);
    if (argmax) {
      for (uint64_t i = 0; i < g; ++i)
        argmax_cuda(logits_.get() + i * c_.vocab, c_.vocab, token_.get() + r + i, stream_.s);
      continue;
    }
    CUDA_CHECK(cudaMemcpyAsync(logits_host_.get(), logits_.get(), g * c_.vocab * sizeof(float),
                               cudaMemcpyDeviceToHost, stream_.s));
    if (r + g < rows) copy_back(rows, logits, nullptr, r);  // never in a graph: rows <= 8 there
  }
  if (argmax)
    CUDA_CHECK(cudaMemcpyAsync(token_host_.get(), token_.get(), rows * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream_.s));
}

// Waits for the stream (which also surfaces a failed kernel of the call) and hands out what its
// last copy brought back: the greedy tokens, or the logits of the group of rows from `r`.
void CudaForward::copy_back(uint64_t rows, std::span<float> logits, int32_t* argmax, uint64_t r) {
  CUDA_CHECK(cudaStreamSynchronize(stream_.s));
  if (argmax) return (void)std::copy_n(token_host_.get(), rows, argmax);
  const uint64_t g = std::min<uint64_t>(kGemvMaxBatch, rows - r);
  std::copy_n(logits_host_.get(), g * c_.vocab, logits.begin() + ptrdiff_t(r * c_.vocab));
}

}  // namespace

DeviceFactory cuda_forward_factory(const CudaForwardOptions& o) {
  probe_gpu(o.device);  // one clear line now, before anything is loaded, when it cannot run
  return [o](const ModelConfig& c, const ModelWeights& w, const PassShape& shape) {
    return std::unique_ptr<ForwardPass>(new CudaForward(o, c, w, shape));
  };
}

}  // namespace ferry
