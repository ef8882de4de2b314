// The model families ferry runs, read from a Hugging Face config.json, and the list of weights
// each one has (names, shapes, roles) in the order the packed file stores them.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry {

// Mistral is the Llama layout (MistralForCausalLM); Qwen3 is Qwen2 without q/k/v biases and with
// an RMSNorm over each head of q and k before RoPE.
enum class Family : uint8_t { llama, qwen2, qwen3 };

// RoPE frequency scaling (transformers' ROPE_INIT_FUNCTIONS of the same names).
struct RopeScaling {
  std::string type;  // "" (none), "linear", "llama3" or "yarn"
  double factor = 1;
  double low_freq_factor = 1, high_freq_factor = 4;  // llama3
  double beta_fast = 32, beta_slow = 1;              // yarn: the ramp's rotation bounds
  double attention_factor = 1;  // yarn: cos and sin are multiplied by it (0.1 ln(factor) + 1)
  bool truncate = true;         // yarn: the ramp's bounds rounded outwards to whole dims
  uint64_t original_max_position = 8192;  // llama3, yarn
};

struct ModelConfig {
  Family family = Family::llama;
  std::string architecture;  // e.g. "Qwen2ForCausalLM"
  uint64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  uint64_t vocab = 0, max_position = 0;
  double rope_theta = 10000, rms_eps = 1e-6;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;
  bool qkv_bias = false;  // Qwen2: q/k/v projections carry biases
  bool qk_norm = false;   // Qwen3: per-head RMSNorm of q and k (q_norm, k_norm [head_dim])
  // Tokens a query sees when a sliding window is in force (Mistral v0.1: 4096); 0 when none. ferry
  // attends over the whole context, which is the same only for contexts up to the window.
  uint64_t sliding_window = 0;
  // The longest context the packed file allows (quantize --max-context, meta::kMaxContext); 0 when
  // none. Set by PackedFile::open, not by config.json: it is how a model whose sliding window is
  // shorter than its trained context is packed at all (ferry attends over the whole context).
  uint64_t context_limit = 0;
  std::string dtype;                   // torch_dtype / dtype as given, "" when absent
  std::vector<int64_t> eos_token_ids;  // config.json's eos_token_id, a number or a list
};

// Accepts LlamaForCausalLM / MistralForCausalLM (Llama family), Qwen2ForCausalLM and
// Qwen3ForCausalLM, as transformers 4 (top-level rope_theta / rope_scaling, torch_dtype) and 5
// (rope_parameters, dtype) write config.json. Throws ferry::Error naming the architecture for
// anything else, and naming the key for a missing or inconsistent value or one that changes the
// math in a way ferry does not implement (rope types other than linear, llama3 and yarn; a partial
// rotary factor; activations other than silu; o_proj or MLP biases). `what` names the source.
ModelConfig parse_model_config(const nlohmann::json& config, std::string_view what);
std::string_view family_name(Family f);

// generation_config.json: what transformers' generate() does by default for this model.
struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;  // a number or a list in the file
  bool do_sample = false;              // false (or absent): greedy, whatever the values below say
  double temperature = 1, top_p = 1;   // when absent, transformers' defaults (1.0, 50, 1.0)
  uint64_t top_k = 50;
  bool present = false;  // the checkpoint had one (a .ferry file keeps it, docs/format.md)
};
// Throws ferry::Error naming the key for a value of the wrong type or range.
GenerationConfig parse_generation_config(const nlohmann::json& j, std::string_view what);

enum class WeightRole : uint8_t { embedding, norm, bias, linear, lm_head };

struct WeightSpec {
  std::string name;             // Hugging Face tensor name
  std::vector<uint64_t> shape;  // [out, in] for linear weights
  WeightRole role;
  int layer;  // decoder layer index, -1 for the embedding, final norm and lm_head
};

// Every weight of the model in storage order: embedding; per layer input norm, q/k/v (and their
// biases), q_norm and k_norm (Qwen3), o, post-attention norm, gate, up, down; final norm; lm_head
// (listed even when tied).
std::vector<WeightSpec> model_weights(const ModelConfig& c);

// Tensors some checkpoints carry that ferry recomputes and may ignore (rotary inv_freq buffers).
bool is_ignorable_tensor(std::string_view name);

}  // namespace ferry
