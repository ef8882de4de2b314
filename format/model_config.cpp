#include "format/model_config.hpp"

#include <cmath>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {
namespace {

uint64_t require_uint(const nlohmann::json& c, const char* key, std::string_view what) {
  if (!c.contains(key) || !c[key].is_number_integer() || c[key].get<int64_t>() <= 0)
    throw Error(fmt::format("{}: \"{}\" must be a positive integer", what, key));
  return c[key].get<uint64_t>();
}

double number_or(const nlohmann::json& c, const char* key, double fallback, std::string_view what) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_number()) throw Error(fmt::format("{}: \"{}\" must be a number", what, key));
  return c[key].get<double>();
}

// config.json's optional values: absent or null gives the fallback (HF writes null for unset
// fields); any other type is an error naming the key, not a JSON library exception.
bool bool_or(const nlohmann::json& c, const char* key, bool fallback, std::string_view what) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_boolean()) throw Error(fmt::format("{}: \"{}\" must be true or false", what, key));
  return c[key].get<bool>();
}

std::string string_or(const nlohmann::json& c, const char* key, const std::string& fallback,
                      std::string_view what) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  if (!c[key].is_string()) throw Error(fmt::format("{}: \"{}\" must be a string", what, key));
  return c[key].get<std::string>();
}

Family family_of(const std::string& arch, std::string_view what) {
  if (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM") return Family::llama;
  if (arch == "Qwen2ForCausalLM") return Family::qwen2;
  throw Error(fmt::format(
      "{}: unsupported architecture '{}': ferry runs the Llama family (LlamaForCausalLM, "
      "MistralForCausalLM) and the Qwen2 family (Qwen2ForCausalLM)",
      what, arch));
}

RopeScaling parse_rope_scaling(const nlohmann::json& c, std::string_view what) {
  RopeScaling r;
  if (!c.contains("rope_scaling") || c["rope_scaling"].is_null()) return r;
  const auto& s = c["rope_scaling"];
  if (!s.is_object()) throw Error(fmt::format("{}: \"rope_scaling\" must be an object", what));
  const std::string type = string_or(s, "rope_type", string_or(s, "type", "", what), what);
  if (type == "default") return r;
  if (type != "llama3")
    throw Error(
        fmt::format("{}: rope_scaling type '{}' is not supported (only 'llama3')", what, type));
  r.type = type;
  r.factor = number_or(s, "factor", 0, what);
  r.low_freq_factor = number_or(s, "low_freq_factor", 0, what);
  r.high_freq_factor = number_or(s, "high_freq_factor", 0, what);
  r.original_max_position = require_uint(s, "original_max_position_embeddings", what);
  if (r.factor <= 0 || r.low_freq_factor <= 0 || r.high_freq_factor <= r.low_freq_factor)
    throw Error(fmt::format(
        "{}: rope_scaling llama3 needs factor > 0 and high_freq_factor > low_freq_factor", what));
  return r;
}

}  // namespace

std::string_view family_name(Family f) {
  return f == Family::llama ? "llama" : "qwen2";
}

ModelConfig parse_model_config(const nlohmann::json& c, std::string_view what) {
  if (!c.is_object()) throw Error(fmt::format("{}: config is not a JSON object", what));
  ModelConfig m;
  if (!c.contains("architectures") || !c["architectures"].is_array() ||
      c["architectures"].size() != 1 || !c["architectures"][0].is_string())
    throw Error(fmt::format("{}: \"architectures\" must list exactly one architecture", what));
  m.architecture = c["architectures"][0].get<std::string>();
  m.family = family_of(m.architecture, what);
  m.hidden = require_uint(c, "hidden_size", what);
  m.intermediate = require_uint(c, "intermediate_size", what);
  m.layers = require_uint(c, "num_hidden_layers", what);
  m.heads = require_uint(c, "num_attention_heads", what);
  m.kv_heads =
      c.contains("num_key_value_heads") ? require_uint(c, "num_key_value_heads", what) : m.heads;
  m.vocab = require_uint(c, "vocab_size", what);
  m.max_position = require_uint(c, "max_position_embeddings", what);
  m.head_dim = c.contains("head_dim") && !c["head_dim"].is_null()
                   ? require_uint(c, "head_dim", what)
                   : m.hidden / m.heads;
  if (!c.contains("head_dim") && m.hidden % m.heads != 0)
    throw Error(fmt::format("{}: hidden_size {} is not a multiple of num_attention_heads {}", what,
                            m.hidden, m.heads));
  if (m.heads % m.kv_heads != 0)
    throw Error(
        fmt::format("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", what,
                    m.heads, m.kv_heads));
  if (m.head_dim % 2 != 0)
    throw Error(fmt::format("{}: head_dim {} must be even for RoPE", what, m.head_dim));
  const std::string act = string_or(c, "hidden_act", "silu", what);
  if (act != "silu")
    throw Error(fmt::format("{}: hidden_act '{}' is not supported (only silu)", what, act));
  m.rope_theta = number_or(c, "rope_theta", 10000.0, what);
  m.rms_eps = number_or(c, "rms_norm_eps", 1e-6, what);
  // A theta <= 1 makes every RoPE frequency 1 or more per position (no position information, or
  // NaN below 0); an eps outside [0, 1) is no RMSNorm epsilon. Both are a damaged config.
  if (!(m.rope_theta > 1) || !std::isfinite(m.rope_theta))
    throw Error(
        fmt::format("{}: rope_theta {} must be a finite number above 1", what, m.rope_theta));
  if (!(m.rms_eps >= 0 && m.rms_eps < 1))
    throw Error(fmt::format("{}: rms_norm_eps {} must be in [0, 1)", what, m.rms_eps));
  m.rope_scaling = parse_rope_scaling(c, what);
  m.tied_embeddings = bool_or(c, "tie_word_embeddings", false, what);
  // Qwen2 always has q/k/v biases; Llama-family configs say so with attention_bias.
  m.qkv_bias = m.family == Family::qwen2 || bool_or(c, "attention_bias", false, what);
  if (bool_or(c, "mlp_bias", false, what))
    throw Error(fmt::format("{}: mlp_bias=true is not supported", what));
  return m;
}

std::vector<WeightSpec> model_weights(const ModelConfig& c) {
  const uint64_t q_out = c.heads * c.head_dim, kv_out = c.kv_heads * c.head_dim;
  std::vector<WeightSpec> w;
  w.push_back({"model.embed_tokens.weight", {c.vocab, c.hidden}, WeightRole::embedding, -1});
  for (uint64_t l = 0; l < c.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const int li = int(l);
    w.push_back({p + "input_layernorm.weight", {c.hidden}, WeightRole::norm, li});
    const std::pair<const char*, uint64_t> qkv[] = {{"q", q_out}, {"k", kv_out}, {"v", kv_out}};
    for (const auto& [n, out] : qkv) {
      w.push_back({p + "self_attn." + n + "_proj.weight", {out, c.hidden}, WeightRole::linear, li});
      if (c.qkv_bias)
        w.push_back({p + "self_attn." + n + "_proj.bias", {out}, WeightRole::bias, li});
    }
    w.push_back({p + "self_attn.o_proj.weight", {c.hidden, q_out}, WeightRole::linear, li});
    w.push_back({p + "post_attention_layernorm.weight", {c.hidden}, WeightRole::norm, li});
    w.push_back({p + "mlp.gate_proj.weight", {c.intermediate, c.hidden}, WeightRole::linear, li});
    w.push_back({p + "mlp.up_proj.weight", {c.intermediate, c.hidden}, WeightRole::linear, li});
    w.push_back({p + "mlp.down_proj.weight", {c.hidden, c.intermediate}, WeightRole::linear, li});
  }
  w.push_back({"model.norm.weight", {c.hidden}, WeightRole::norm, -1});
  w.push_back({"lm_head.weight", {c.vocab, c.hidden}, WeightRole::lm_head, -1});
  return w;
}

bool is_ignorable_tensor(std::string_view name) {
  return name.ends_with(".rotary_emb.inv_freq");
}

}  // namespace ferry
