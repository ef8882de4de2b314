// The model families ferry runs, read from a Hugging Face config.json, and the list of weights
// each one has (names, shapes, roles) in the order the packed file stores them.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry {

enum class Family : uint8_t { llama, qwen2 };

struct RopeScaling {
  std::string type;  // "" (none) or "llama3"
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4;
  uint64_t original_max_position = 8192;
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
};

// Accepts LlamaForCausalLM / MistralForCausalLM (Llama family) and Qwen2ForCausalLM (Qwen2
// family). Throws ferry::Error naming the architecture for anything else, and naming the key
// for a missing or inconsistent value. `what` names the source in messages.
ModelConfig parse_model_config(const nlohmann::json& config, std::string_view what);
std::string_view family_name(Family f);

enum class WeightRole : uint8_t { embedding, norm, bias, linear, lm_head };

struct WeightSpec {
  std::string name;             // Hugging Face tensor name
  std::vector<uint64_t> shape;  // [out, in] for linear weights
  WeightRole role;
  int layer;  // decoder layer index, -1 for the embedding, final norm and lm_head
};

// Every weight of the model in storage order: embedding; per layer input norm, q/k/v (and their
// biases), o, post-attention norm, gate, up, down; final norm; lm_head (listed even when tied).
std::vector<WeightSpec> model_weights(const ModelConfig& c);

// Tensors some checkpoints carry that ferry recomputes and may ignore (rotary inv_freq buffers).
bool is_ignorable_tensor(std::string_view name);

}  // namespace ferry
