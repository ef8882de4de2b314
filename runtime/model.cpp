#include "runtime/model.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

#include <fmt/format.h>

#include "base/error.hpp"

namespace ferry {
namespace {

const TensorView& tensor(const PackedFile& f, const std::string& name) {
  const TensorView* t = f.file.find(name);
  if (!t) throw Error(fmt::format("{}: tensor {} is missing", f.file.path().string(), name));
  return *t;
}

const uint16_t* u16(const TensorView& t) {
  return reinterpret_cast<const uint16_t*>(t.data);
}

// cols comes from the config: the q4 tensor's shape holds the padded column count.
Linear bind_linear(const PackedFile& f, const std::string& name, uint64_t cols) {
  Linear l;
  l.cols = cols;
  if (const TensorView* q = f.file.find(name + ".q8")) {
    l.rows = q->shape[0];
    l.q8 = {reinterpret_cast<const int8_t*>(q->data), u16(tensor(f, name + ".scales")), l.rows,
            cols};
  } else if (const TensorView* q = f.file.find(name + ".q4")) {
    l.rows = q->shape[0];
    l.q4 = {q->data, u16(tensor(f, name + ".scales")),
            scheme_has_mins(f.scheme) ? u16(tensor(f, name + ".mins")) : nullptr, l.rows, cols};
  } else {
    const TensorView& t = tensor(f, name);
    l.bf16 = u16(t);
    l.rows = t.shape[0];
  }
  return l;
}

// Appends the weight `name` ("....weight") and its bias ("....bias") when `with_bias`.
void add_linear(const PackedFile& f, ModelWeights& w, const std::string& name, uint64_t cols,
                bool with_bias = false) {
  w.linears.push_back(bind_linear(f, name, cols));
  const std::string bias = name.substr(0, name.size() - 6) + "bias";  // "...weight" -> "...bias"
  w.biases.push_back(with_bias ? u16(tensor(f, bias)) : nullptr);
}

}  // namespace

ModelWeights bind_weights(const PackedFile& f) {
  const ModelConfig& c = f.config;
  ModelWeights w;
  w.embed = u16(tensor(f, "model.embed_tokens.weight"));
  const uint64_t q_dim = c.heads * c.head_dim;
  for (uint64_t i = 0; i < c.layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    w.layers.push_back({.attn_norm = u16(tensor(f, p + "input_layernorm.weight")),
                        .mlp_norm = u16(tensor(f, p + "post_attention_layernorm.weight"))});
    if (c.qk_norm) {
      w.layers.back().q_norm = u16(tensor(f, p + "self_attn.q_norm.weight"));
      w.layers.back().k_norm = u16(tensor(f, p + "self_attn.k_norm.weight"));
    }
    // Schedule order (runtime/model.hpp): q k v o gate up down.
    add_linear(f, w, p + "self_attn.q_proj.weight", c.hidden, c.qkv_bias);
    add_linear(f, w, p + "self_attn.k_proj.weight", c.hidden, c.qkv_bias);
    add_linear(f, w, p + "self_attn.v_proj.weight", c.hidden, c.qkv_bias);
    add_linear(f, w, p + "self_attn.o_proj.weight", q_dim);
    add_linear(f, w, p + "mlp.gate_proj.weight", c.hidden);
    add_linear(f, w, p + "mlp.up_proj.weight", c.hidden);
    add_linear(f, w, p + "mlp.down_proj.weight", c.intermediate);
  }
  w.final_norm = u16(tensor(f, "model.norm.weight"));
  // A tied lm_head stored once (docs/format.md): the embedding's matrix is lm_head.
  const bool tied = c.tied_embeddings && f.storage.lm_head == LmHeadStorage::embedding;
  add_linear(f, w, tied ? "model.embed_tokens.weight" : "lm_head.weight", c.hidden);
  return w;
}

namespace {

// Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
// interpolated (transformers' _compute_llama3_parameters).
double llama3_freq(const RopeScaling& r, double inv) {
  const double wavelen = 2 * std::numbers::pi / inv;
  const double low = double(r.original_max_position) / r.low_freq_factor;
  const double high = double(r.original_max_position) / r.high_freq_factor;
  if (wavelen > low) return inv / r.factor;
  if (wavelen < high) return inv;
  const double smooth = (double(r.original_max_position) / wavelen - r.low_freq_factor) /
                        (r.high_freq_factor - r.low_freq_factor);
  return (1 - smooth) * inv / r.factor + smooth * inv;
}

// YaRN (transformers' _compute_yarn_parameters): dimensions that turn more than beta_fast times
// over the original context keep their frequency, those that turn fewer than beta_slow times are
// slowed by `factor`, and a linear ramp over the dimension index blends the band between.
std::pair<double, double> yarn_range(const RopeScaling& r, double theta, uint64_t dim) {
  const auto correction_dim = [&](double rotations) {
    return double(dim) *
           std::log(double(r.original_max_position) / (rotations * 2 * std::numbers::pi)) /
           (2 * std::log(theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0), high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // as transformers: no division by zero
  return {low, high};
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  std::vector<float> f(c.head_dim / 2);
  const RopeScaling& r = c.rope_scaling;
  const auto [low, high] =
      r.type == "yarn" ? yarn_range(r, c.rope_theta, c.head_dim) : std::pair<double, double>{0, 1};
  for (size_t i = 0; i < f.size(); ++i) {
    double inv = std::pow(c.rope_theta, -double(2 * i) / double(c.head_dim));
    if (r.type == "linear") inv /= r.factor;  // positions divided by factor
    if (r.type == "llama3") inv = llama3_freq(r, inv);
    if (r.type == "yarn") {
      const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
      inv = inv / r.factor * ramp + inv * (1 - ramp);
    }
    f[i] = float(inv);
  }
  return f;
}

float rope_attention_factor(const ModelConfig& c) {
  return c.rope_scaling.type == "yarn" ? float(c.rope_scaling.attention_factor) : 1.0f;
}

double kv_bytes_per_position(const ModelConfig& c, KvType kv) {
  return 2.0 * double(c.layers) * double(c.kv_heads * c.head_dim) * double(kv_type_bytes(kv));
}

void check_forward_call(const ModelConfig& c, uint64_t ctx, uint64_t batch,
                        std::span<const int32_t> tokens, uint64_t pos) {
  if (tokens.empty() || tokens.size() > batch)
    throw Error(fmt::format("a forward call takes 1 to {} tokens, got {}", batch, tokens.size()));
  if (pos + tokens.size() > ctx)
    throw Error(Setting::ctx, fmt::format("position {} is past the context of {} tokens; raise it",
                                          pos + tokens.size() - 1, ctx));
  for (int32_t t : tokens)
    if (t < 0 || uint64_t(t) >= c.vocab)
      throw Error(fmt::format("token id {} is outside the vocabulary of {}", t, c.vocab));
}

}  // namespace ferry
