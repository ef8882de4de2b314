// A packed model bound for the forward pass: pointers into a .ferry file's tensors (no copies),
// and the source the forward pass acquires each linear weight from (the file itself, or the
// paging cache). The passes themselves: runtime/forward_pass.hpp.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "format/int4.hpp"
#include "format/int8.hpp"
#include "format/model_config.hpp"
#include "format/packed_file.hpp"
#include "kernels/attention.hpp"

namespace ferry {

// One linear weight W [rows = out, cols = in], INT4, INT8 or bf16: what the paging cache moves and
// a matrix product reads. Its bias, if any, is not part of it (ModelWeights::biases): the cache
// moves weights only, and both passes find a bias by the weight's id.
struct Linear {
  Int4View q4;                     // INT4 codes, scales, mins; q4.q == nullptr unless INT4
  Int8View q8;                     // INT8 codes, scales; q8.q == nullptr unless INT8
  const uint16_t* bf16 = nullptr;  // [rows, cols] bf16, when not quantized
  uint64_t rows = 0, cols = 0;     // out, in (q4/q8.rows and .cols too, when quantized)
  bool is_int4() const { return q4.q != nullptr; }
  bool is_int8() const { return q8.q != nullptr; }
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
  const uint16_t* q_norm = nullptr;     // [head_dim] Qwen3 (ModelConfig::qk_norm), else nullptr
  const uint16_t* k_norm = nullptr;     // [head_dim]
};

struct ModelWeights {
  const uint16_t* embed = nullptr;       // [vocab, hidden] bf16
  std::vector<LayerWeights> layers;      // [layers] norms
  const uint16_t* final_norm = nullptr;  // [hidden]
  std::vector<Linear> linears;           // [layers * 7 + 1] by linear id, lm_head last
  std::vector<const uint16_t*> biases;   // [layers * 7 + 1] bf16 [rows] by id, or nullptr
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
  // Whether these weights (consecutive ids) can be held at once: the CPU and CUDA passes then
  // acquire q/k/v (gate/up) together for one fused product or launch. A source that reads in
  // place always can; a paging cache where its free arena guarantees the placement.
  virtual bool can_hold(std::span<const uint32_t> ids) const {
    (void)ids;
    return true;
  }
  // Whether every weight is on the pass's device for good, its upload done: acquire and release
  // then put nothing on a device stream (DeviceCache::resident). False where a pass reads the
  // weights in place on the host.
  virtual bool resident() { return false; }
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

// Bytes of keys and values the KV cache holds per position, over every layer: what attention
// reads per position of context each token (Qwen2-32B in f16: 256 KB).
double kv_bytes_per_position(const ModelConfig& c, KvType kv);

// RoPE inverse frequencies theta^(-2i/d) [head_dim / 2], with the config's scaling (linear,
// llama3, yarn) applied.
std::vector<float> rope_inv_freq(const ModelConfig& c);
// What RoPE multiplies cos and sin by: yarn's attention factor (1.14 for factor 4), else 1.
float rope_attention_factor(const ModelConfig& c);

// Throws ferry::Error when a forward call of `tokens` at position `pos` is not 1 to `batch`
// tokens, would pass the context of `ctx`, or holds an id outside the vocabulary. Every
// backend's forward pass checks its input with this one.
void check_forward_call(const ModelConfig& c, uint64_t ctx, uint64_t batch,
                        std::span<const int32_t> tokens, uint64_t pos);

}  // namespace ferry
