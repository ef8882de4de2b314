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
  if (arch == "Qwen3ForCausalLM") return Family::qwen3;
  throw Error(fmt::format(
      "{}: unsupported architecture '{}': ferry runs the Llama family (LlamaForCausalLM, "
      "MistralForCausalLM) and the Qwen family (Qwen2ForCausalLM, Qwen3ForCausalLM)",
      what, arch));
}

// The object at `key`, or nullptr when absent or null; any other type is an error.
const nlohmann::json* object_or_null(const nlohmann::json& c, const char* key,
                                     std::string_view what) {
  if (!c.contains(key) || c[key].is_null()) return nullptr;
  if (!c[key].is_object()) throw Error(fmt::format("{}: \"{}\" must be an object", what, key));
  return &c[key];
}

// A value that may be given at the top level (transformers 4) or inside rope_parameters
// (transformers 5): either, or both when they agree.
double rope_number(const nlohmann::json& c, const nlohmann::json* rp, const char* key,
                   double fallback, std::string_view what) {
  const double top = number_or(c, key, NAN, what);
  const double inner = rp ? number_or(*rp, key, NAN, what) : NAN;
  if (!std::isnan(top) && !std::isnan(inner) && top != inner)
    throw Error(fmt::format("{}: \"{}\" is {} at the top level and {} in rope_parameters", what,
                            key, top, inner));
  return !std::isnan(inner) ? inner : !std::isnan(top) ? top : fallback;
}

void parse_llama3(const nlohmann::json& s, RopeScaling& r, std::string_view what) {
  r.low_freq_factor = number_or(s, "low_freq_factor", 0, what);
  r.high_freq_factor = number_or(s, "high_freq_factor", 0, what);
  r.original_max_position = require_uint(s, "original_max_position_embeddings", what);
  if (r.low_freq_factor <= 0 || r.high_freq_factor <= r.low_freq_factor)
    throw Error(
        fmt::format("{}: rope scaling llama3 needs high_freq_factor > low_freq_factor > 0", what));
}

// transformers' _compute_yarn_parameters: original_max_position_embeddings defaults to
// max_position_embeddings; attention_factor, when absent, from factor (and mscale/mscale_all_dim).
void parse_yarn(const nlohmann::json& s, uint64_t max_position, RopeScaling& r,
                std::string_view what) {
  r.original_max_position = s.contains("original_max_position_embeddings")
                                ? require_uint(s, "original_max_position_embeddings", what)
                                : max_position;
  r.beta_fast = number_or(s, "beta_fast", 32, what);
  r.beta_slow = number_or(s, "beta_slow", 1, what);
  r.truncate = bool_or(s, "truncate", true, what);
  const auto mscale = [](double scale, double m) {
    return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
  };
  const double m = number_or(s, "mscale", 0, what), m_all = number_or(s, "mscale_all_dim", 0, what);
  const double inferred =
      m != 0 && m_all != 0 ? mscale(r.factor, m) / mscale(r.factor, m_all) : mscale(r.factor, 1);
  r.attention_factor = number_or(s, "attention_factor", inferred, what);
  if (!(r.beta_fast > 0 && r.beta_slow > 0 && r.attention_factor > 0))
    throw Error(
        fmt::format("{}: rope scaling yarn needs beta_fast, beta_slow and "
                    "attention_factor above 0",
                    what));
}

// The scaling of rope_parameters (transformers 5) or rope_scaling (4); refuses any type ferry
// does not implement by name, rather than run plain RoPE on a model trained with another.
RopeScaling parse_rope_scaling(const nlohmann::json& c, const nlohmann::json* rp,
                               uint64_t max_position, std::string_view what) {
  const nlohmann::json* rs = object_or_null(c, "rope_scaling", what);
  const auto type_of = [&](const nlohmann::json& s) {
    return string_or(s, "rope_type", string_or(s, "type", "default", what), what);
  };
  if (rp && rs && type_of(*rp) != type_of(*rs))
    throw Error(fmt::format("{}: rope_parameters says rope type '{}' and rope_scaling '{}'", what,
                            type_of(*rp), type_of(*rs)));
  const nlohmann::json* s = rp ? rp : rs;
  RopeScaling r;
  if (!s || type_of(*s) == "default") return r;
  r.type = type_of(*s);
  if (r.type != "linear" && r.type != "llama3" && r.type != "yarn")
    throw Error(
        fmt::format("{}: rope type '{}' ({}) is not implemented: ferry runs default, "
                    "linear, llama3 and yarn",
                    what, r.type, rp ? "rope_parameters" : "rope_scaling"));
  r.factor = number_or(*s, "factor", 0, what);
  if (!(r.factor >= 1) || !std::isfinite(r.factor))
    throw Error(fmt::format("{}: rope scaling {} needs a finite factor of at least 1, got {}", what,
                            r.type, r.factor));
  if (r.type == "llama3") parse_llama3(*s, r, what);
  if (r.type == "yarn") parse_yarn(*s, max_position, r, what);
  return r;
}

// rope_theta, the scaling and partial_rotary_factor, from either spelling.
void parse_rope(const nlohmann::json& c, ModelConfig& m, std::string_view what) {
  const nlohmann::json* rp = object_or_null(c, "rope_parameters", what);
  // Per-layer-type parameters (Gemma 3's {"full_attention": {...}, "sliding_attention": {...}}).
  if (rp && !rp->contains("rope_type") && !rp->contains("type") && !rp->contains("rope_theta"))
    throw Error(fmt::format("{}: rope_parameters per layer type is not supported", what));
  // A theta <= 1 makes every RoPE frequency 1 or more per position (no position information, or
  // NaN below 0): a damaged config. 10000 when neither spelling gives one: transformers' default.
  m.rope_theta = rope_number(c, rp, "rope_theta", 10000.0, what);
  if (!(m.rope_theta > 1) || !std::isfinite(m.rope_theta))
    throw Error(
        fmt::format("{}: rope_theta {} must be a finite number above 1", what, m.rope_theta));
  const double partial = rope_number(c, rp, "partial_rotary_factor", 1.0, what);
  if (partial != 1)
    throw Error(
        fmt::format("{}: partial_rotary_factor {} is not supported (RoPE over the whole "
                    "head only)",
                    what, partial));
  m.rope_scaling = parse_rope_scaling(c, rp, m.max_position, what);
}

// The window when one applies to any layer: Mistral's sliding_window (null when off), Qwen's only
// with use_sliding_window true, or a layer_types list naming sliding_attention (transformers 5).
uint64_t parse_sliding_window(const nlohmann::json& c, std::string_view what) {
  bool sliding_layers = false;
  if (c.contains("layer_types") && !c["layer_types"].is_null()) {
    if (!c["layer_types"].is_array())
      throw Error(fmt::format("{}: \"layer_types\" must be a list", what));
    for (const auto& t : c["layer_types"]) {
      if (!t.is_string()) throw Error(fmt::format("{}: \"layer_types\" must list strings", what));
      if (t == "sliding_attention")
        sliding_layers = true;
      else if (t != "full_attention")
        throw Error(
            fmt::format("{}: layer_types '{}' is not supported", what, t.get<std::string>()));
    }
  }
  const bool use = bool_or(c, "use_sliding_window", true, what) || sliding_layers;
  if (!use || !c.contains("sliding_window") || c["sliding_window"].is_null()) {
    if (sliding_layers)
      throw Error(
          fmt::format("{}: layer_types names sliding_attention and no sliding_window is "
                      "given",
                      what));
    return 0;
  }
  return require_uint(c, "sliding_window", what);
}

// torch_dtype (transformers 4) or dtype (5): the checkpoint's element type, shown by inspect.
std::string parse_dtype(const nlohmann::json& c, std::string_view what) {
  const std::string a = string_or(c, "torch_dtype", "", what), b = string_or(c, "dtype", "", what);
  if (!a.empty() && !b.empty() && a != b)
    throw Error(fmt::format("{}: torch_dtype '{}' and dtype '{}' disagree", what, a, b));
  const std::string d = b.empty() ? a : b;
  if (!d.empty() && d != "float32" && d != "bfloat16" && d != "float16")
    throw Error(fmt::format("{}: dtype '{}' is not float32, bfloat16 or float16", what, d));
  return d;
}

std::vector<int64_t> parse_eos(const nlohmann::json& c, std::string_view what) {
  std::vector<int64_t> ids;
  if (!c.contains("eos_token_id") || c["eos_token_id"].is_null()) return ids;
  const nlohmann::json& v = c["eos_token_id"];
  const auto bad = [&] {
    return Error(fmt::format("{}: \"eos_token_id\" must be a token id or a list of them", what));
  };
  for (const auto& e : v.is_array() ? v : nlohmann::json::array({v})) {
    if (!e.is_number_integer() || e.get<int64_t>() < 0) throw bad();
    ids.push_back(e.get<int64_t>());
  }
  return ids;
}

// Biases: Qwen2's q/k/v always; attention_bias (Llama, Mistral, Qwen3) would also put one on
// o_proj, and mlp_bias on the MLP, which ferry does not run.
void parse_biases(const nlohmann::json& c, ModelConfig& m, std::string_view what) {
  m.qkv_bias = m.family == Family::qwen2;
  if (bool_or(c, "attention_bias", false, what))
    throw Error(
        fmt::format("{}: attention_bias=true (biases on q/k/v and o_proj) is not supported", what));
  if (bool_or(c, "mlp_bias", false, what))
    throw Error(fmt::format("{}: mlp_bias=true is not supported", what));
}

}  // namespace

std::string_view family_name(Family f) {
  switch (f) {
    case Family::llama:
      return "llama";
    case Family::qwen2:
      return "qwen2";
    case Family::qwen3:
      return "qwen3";
  }
  return "unknown";
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
  const bool explicit_head_dim = c.contains("head_dim") && !c["head_dim"].is_null();
  m.head_dim = explicit_head_dim ? require_uint(c, "head_dim", what) : m.hidden / m.heads;
  if (!explicit_head_dim && m.hidden % m.heads != 0)
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
  m.rms_eps = number_or(c, "rms_norm_eps", 1e-6, what);
  // An eps outside [0, 1) is no RMSNorm epsilon: a damaged config.
  if (!(m.rms_eps >= 0 && m.rms_eps < 1))
    throw Error(fmt::format("{}: rms_norm_eps {} must be in [0, 1)", what, m.rms_eps));
  parse_rope(c, m, what);
  m.tied_embeddings = bool_or(c, "tie_word_embeddings", false, what);
  parse_biases(c, m, what);
  m.qk_norm = m.family == Family::qwen3;
  m.sliding_window = parse_sliding_window(c, what);
  m.dtype = parse_dtype(c, what);
  m.eos_token_ids = parse_eos(c, what);
  return m;
}

GenerationConfig parse_generation_config(const nlohmann::json& j, std::string_view what) {
  if (!j.is_object()) throw Error(fmt::format("{}: not a JSON object", what));
  GenerationConfig g;
  g.present = true;
  g.eos_token_ids = parse_eos(j, what);
  g.do_sample = bool_or(j, "do_sample", false, what);
  g.temperature = number_or(j, "temperature", 1.0, what);
  g.top_p = number_or(j, "top_p", 1.0, what);
  if (j.contains("top_k") && !j["top_k"].is_null() &&
      (!j["top_k"].is_number_integer() || j["top_k"].get<int64_t>() < 0))
    throw Error(fmt::format("{}: \"top_k\" must be a whole number of 0 or more", what));
  g.top_k = j.contains("top_k") && !j["top_k"].is_null() ? j["top_k"].get<uint64_t>() : 50;
  if (!(g.temperature >= 0) || !(g.top_p > 0 && g.top_p <= 1))
    throw Error(fmt::format("{}: temperature {} must be 0 or more and top_p {} in (0, 1]", what,
                            g.temperature, g.top_p));
  return g;
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
    if (c.qk_norm) {
      w.push_back({p + "self_attn.q_norm.weight", {c.head_dim}, WeightRole::norm, li});
      w.push_back({p + "self_attn.k_norm.weight", {c.head_dim}, WeightRole::norm, li});
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
