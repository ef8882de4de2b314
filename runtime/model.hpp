// A packed model bound for the forward pass: pointers into a .ferry file's tensors (no copies),
// the source the forward pass acquires each linear weight from (the file itself, or the paging
// cache), and the run state, allocated once at load (never per token).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "format/model_config.hpp"
#include "format/packed_file.hpp"
#include "kernels/ops.hpp"

namespace ferry {

class CpuPool;

// One linear layer y = W x (+ b), INT4 or bf16.
struct Linear {
  uint64_t rows = 0, cols = 0;       // out, in
  const uint8_t* q4 = nullptr;       // [rows, B*64] INT4 codes, or nullptr for bf16
  const uint16_t* scales = nullptr;  // [rows, B] f16
  const uint16_t* mins = nullptr;    // [rows, B] f16, asym schemes only
  const uint16_t* bf16 = nullptr;    // [rows, cols] when not quantized
  const uint16_t* bias = nullptr;    // [rows] bf16, Qwen2 q/k/v only
};

// The linear weights of one forward pass in the order it uses them: per layer q k v o gate up
// down, then lm_head. A weight's id is its index in that order; the paging cache's schedule is
// this list.
enum LinearSlot : uint32_t { kQ, kK, kV, kO, kGate, kUp, kDown, kLinearsPerLayer };
constexpr uint32_t linear_id(uint64_t layer, LinearSlot slot) {
  return uint32_t(layer * kLinearsPerLayer + slot);
}
constexpr uint32_t lm_head_id(uint64_t layers) {
  return uint32_t(layers * kLinearsPerLayer);
}

struct LayerWeights {
  const uint16_t* attn_norm = nullptr;  // [hidden]
  const uint16_t* mlp_norm = nullptr;   // [hidden]
};

struct ModelWeights {
  const uint16_t* embed = nullptr;       // [vocab, hidden] bf16
  std::vector<LayerWeights> layers;      // [layers] norms
  const uint16_t* final_norm = nullptr;  // [hidden]
  std::vector<Linear> linears;           // [layers * 7 + 1] by linear id, lm_head last
};

// Throws ferry::Error if a tensor the config implies is missing (PackedFile::open checked shapes).
ModelWeights bind_weights(const PackedFile& file);

// Where the forward pass gets each linear weight. acquire(id) returns the weight ready to read
// (waiting for it if it is still being fetched); the pointers stay valid until release(id).
// Ids are acquired in schedule order, one pass after another.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual Linear acquire(uint32_t id) = 0;
  virtual void release(uint32_t id) = 0;
};

// One weight acquired for one product. release() after the product; if the product throws
// instead, the destructor releases it, so that a failed forward call never leaves an entry held
// (a held entry can never be evicted: with a budget below the model every later call would fail).
class HeldWeight {
 public:
  HeldWeight(WeightSource& src, uint32_t id) : src_(src), id_(id), linear(src.acquire(id)) {}
  ~HeldWeight() {
    if (!held_) return;
    try {
      src_.release(id_);
    } catch (...) {  // unwinding already: the first error is the one reported
    }
  }
  HeldWeight(const HeldWeight&) = delete;
  HeldWeight& operator=(const HeldWeight&) = delete;
  void release() {
    held_ = false;
    src_.release(id_);
  }

 private:
  WeightSource& src_;
  uint32_t id_;
  bool held_ = true;

 public:
  const Linear linear;
};

// Every weight read in place from the file's memory: acquire never waits, release is a no-op.
class DirectWeights final : public WeightSource {
 public:
  explicit DirectWeights(const ModelWeights& w) : w_(w) {}
  Linear acquire(uint32_t id) override { return w_.linears.at(id); }
  void release(uint32_t) override {}

 private:
  const ModelWeights& w_;
};

// The keys and values of every layer in the cache's element type (kernels/ops.hpp): the pair of
// vectors of that type is sized, the other stays empty.
struct KvCache {
  KvCache(KvType type, uint64_t elements);  // elements of k (and of v)
  KvType type;
  std::vector<uint16_t> k16, v16;  // [layers, ctx, kv_heads * head_dim] f16 bits (type f16)
  std::vector<float> k32, v32;     // [layers, ctx, kv_heads * head_dim] (type f32)
};

// Activations and KV cache of one sequence, sized at load from the config, --ctx, --kv-type and
// the prefill batch (the most tokens one forward call takes). With host_compute false (the
// forward pass runs on a GPU, which holds its own) only the logits are allocated: a 32B model's
// KV cache alone is 256 MB of host memory at --ctx 1024 in f16.
struct RunState {
  RunState(const ModelConfig& c, uint64_t ctx, uint64_t batch, KvType kv, bool host_compute = true);
  uint64_t ctx, batch;
  std::vector<float> x;         // [batch, hidden] residual stream
  std::vector<float> xb;        // [batch, hidden] normed input of a block
  std::vector<float> q;         // [batch, heads * head_dim]
  std::vector<float> k, v;      // [batch, kv_heads * head_dim] before they enter the cache
  std::vector<float> att_out;   // [batch, heads * head_dim]
  std::vector<float> proj;      // [batch, hidden] attention / MLP output
  std::vector<float> gate, up;  // [batch, intermediate]
  std::vector<float> partials;  // [min(batch, 64), heads, attention_chunks(ctx), head_dim + 2]
  std::vector<float> inv_freq;  // [head_dim / 2] RoPE frequencies (scaling applied)
  KvCache kv;                   // [layers, ctx, kv_heads * head_dim] keys and values
  std::vector<float> logits;    // [vocab] of the last token of the last call
};

// Bytes of keys and values the KV cache holds per position, over every layer: what attention
// reads per position of context each token (Qwen2-32B in f16: 256 KB).
double kv_bytes_per_position(const ModelConfig& c, KvType kv);

// Bytes a RunState of these sizes allocates: the KV cache dominates (Qwen2-32B: 256 KB a token
// in f16), then the attention scratch and the activations. Only the logits without host_compute.
double run_state_bytes(const ModelConfig& c, uint64_t ctx, uint64_t batch, KvType kv,
                       bool host_compute);

// RoPE inverse frequencies theta^(-2i/d), with Llama 3's frequency-dependent scaling if set.
std::vector<float> rope_inv_freq(const ModelConfig& c);

// Throws ferry::Error when a forward call of `tokens` at position `pos` is not 1 to `batch`
// tokens, would pass the context of `ctx`, or holds an id outside the vocabulary. Every
// backend's forward pass checks its input with this one.
void check_forward_call(const ModelConfig& c, uint64_t ctx, uint64_t batch,
                        std::span<const int32_t> tokens, uint64_t pos);

// Runs tokens (1 .. s.batch of them) at positions pos, pos+1, ... through the model in one batch
// and leaves the logits of the last one in s.logits. Throws ferry::Error when the tokens would
// pass the context size, a token id is outside the vocabulary, or the batch is too large.
void forward(const ModelConfig& c, const ModelWeights& w, WeightSource& src, CpuPool& pool,
             RunState& s, std::span<const int32_t> tokens, uint64_t pos);

}  // namespace ferry
