// A packed model bound for the forward pass: pointers into a .ferry file's tensors (no copies)
// and the run state, allocated once at load (never per token).
#pragma once
#include <cstdint>
#include <vector>

#include "quantizer/model_spec.hpp"
#include "quantizer/packed_file.hpp"

namespace ferry {

// One linear layer y = W x (+ b), INT4 or bf16.
struct Linear {
  uint64_t rows = 0, cols = 0;       // out, in
  const uint8_t* q4 = nullptr;       // [rows, B*64] INT4 codes, or nullptr for bf16
  const uint16_t* scales = nullptr;  // [rows, B] f16
  const uint16_t* mins = nullptr;    // [rows, B] f16, asym schemes only
  const uint16_t* bf16 = nullptr;    // [rows, cols] when not quantized
  const uint16_t* bias = nullptr;    // [rows] bf16, Qwen2 q/k/v only
};

struct LayerWeights {
  const uint16_t* attn_norm;  // [hidden]
  Linear q, k, v, o;
  const uint16_t* mlp_norm;  // [hidden]
  Linear gate, up, down;
};

struct ModelWeights {
  const uint16_t* embed = nullptr;  // [vocab, hidden] bf16
  std::vector<LayerWeights> layers;
  const uint16_t* final_norm = nullptr;  // [hidden]
  Linear lm_head;
};

// Throws ferry::Error if a tensor the config implies is missing (PackedFile::open checked shapes).
ModelWeights bind_weights(const PackedFile& file);

// Activations and KV cache of one sequence, sized at load from the config and --ctx.
struct RunState {
  explicit RunState(const ModelConfig& c, uint64_t ctx);
  uint64_t ctx;
  std::vector<float> x;                 // [hidden] residual stream
  std::vector<float> xb;                // [hidden] normed input of a block
  std::vector<float> q;                 // [heads * head_dim]
  std::vector<float> att_out;           // [heads * head_dim]
  std::vector<float> proj;              // [hidden] attention / MLP output
  std::vector<float> gate, up;          // [intermediate]
  std::vector<float> scores;            // [ctx]
  std::vector<float> inv_freq;          // [head_dim / 2] RoPE frequencies (scaling applied)
  std::vector<float> k_cache, v_cache;  // [layers, ctx, kv_heads * head_dim]
  std::vector<float> logits;            // [vocab]
};

// RoPE inverse frequencies theta^(-2i/d), with Llama 3's frequency-dependent scaling if set.
std::vector<float> rope_inv_freq(const ModelConfig& c);

// Runs one token at position pos through the model; leaves the logits in s.logits.
// Throws ferry::Error when pos reaches the context size.
void forward(const ModelConfig& c, const ModelWeights& w, RunState& s, int32_t token, uint64_t pos);

}  // namespace ferry
