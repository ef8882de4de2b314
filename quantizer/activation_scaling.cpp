#include "quantizer/activation_scaling.hpp"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/threads.hpp"
#include "format/calib_stats.hpp"
#include "format/packed_file.hpp"
#include "quantizer/checkpoint.hpp"
#include "quantizer/convert.hpp"

namespace ferry {
namespace {

// The alpha grid: AWQ searches 20 points in [0, 1); 11 points cost half as much and the objective
// is flat near its minimum (SmolLM2: the chosen alphas' errors differ from their neighbours' by
// a few percent).
constexpr int kAlphaSteps = 11;
// Rows of each weight the search quantizes (evenly spaced): the ranking of alphas needs a sample,
// not every row, and this bounds the search's memory for any model (a 32B model's gate/up have
// 27648 rows: 256 of them at 5120 columns are 5 MB).
constexpr uint64_t kSampleRows = 256;
// s = mean|x|^alpha with mean|x| floored here: a channel that never fires would get s = 0.
constexpr float kMinMeanAbs = 1e-6f;

// One group of linears sharing an input, and the op its scale is folded into.
struct Group {
  std::string input;                 // calib_input_name
  std::vector<std::string> weights;  // columns multiplied by s
  std::string fold_norm;             // a norm divided by s (q/k/v, gate/up), or
  std::string fold_rows;             // a weight whose rows are divided by s (down: up, o: v)
  std::string fold_bias;             // o: v's bias, when the model has one
  std::vector<float> mean_abs;       // [cols] what s is made of (o: averaged over a GQA group)
  std::vector<float> mean_sq;        // [cols] the objective's weights
  uint64_t group_size = 1;           // o: query heads a kv channel serves; else 1
  uint64_t head_dim = 0;
};

// The o group (layer prefix p): one scale per kv channel, from mean |x| averaged over the query
// heads that share a kv head, then repeated to every head.
void share_across_query_heads(const ModelConfig& c, const std::string& p, Group& o) {
  o.group_size = c.heads / c.kv_heads;
  if (c.qkv_bias) o.fold_bias = p + "self_attn.v_proj.bias";
  std::vector<float> shared(c.heads * c.head_dim, 0.0f);
  for (uint64_t h = 0; h < c.heads; ++h)
    for (uint64_t d = 0; d < c.head_dim; ++d) {
      const uint64_t kv = h / o.group_size;
      float sum = 0;
      for (uint64_t k = 0; k < o.group_size; ++k)
        sum += o.mean_abs[((kv * o.group_size) + k) * c.head_dim + d];
      shared[h * c.head_dim + d] = sum / float(o.group_size);
    }
  o.mean_abs = std::move(shared);
}

std::vector<Group> make_groups(const ModelConfig& c, const CalibStats& st) {
  std::vector<Group> g;
  for (uint64_t l = 0; l < c.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    // False for an input the statistics leave out: a file holds every input (read_calib_stats
    // checks), the norms' proxy only those behind a norm.
    auto add = [&](CalibInput in, std::vector<std::string> w, std::string norm, std::string rows) {
      if (!st.inputs.contains(calib_input_name(l, in))) return false;
      const ChannelStats& s = st.at(calib_input_name(l, in), calib_input_cols(c, in));
      g.push_back({calib_input_name(l, in), std::move(w), std::move(norm), std::move(rows), "",
                   s.mean_abs, s.mean_sq, 1, c.head_dim});
      return true;
    };
    add(CalibInput::attn_in,
        {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
         p + "self_attn.v_proj.weight"},
        p + "input_layernorm.weight", "");
    if (add(CalibInput::o_in, {p + "self_attn.o_proj.weight"}, "", p + "self_attn.v_proj.weight"))
      share_across_query_heads(c, p, g.back());
    add(CalibInput::mlp_in, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"},
        p + "post_attention_layernorm.weight", "");
    add(CalibInput::down_in, {p + "mlp.down_proj.weight"}, "", p + "mlp.up_proj.weight");
  }
  return g;
}

std::vector<float> scales_for(const std::vector<float>& mean_abs, float alpha) {
  std::vector<float> s(mean_abs.size());
  float lo = INFINITY, hi = 0;
  for (size_t j = 0; j < s.size(); ++j) {
    s[j] = std::pow(std::max(mean_abs[j], kMinMeanAbs), alpha);
    lo = std::min(lo, s[j]);
    hi = std::max(hi, s[j]);
  }
  const float norm = 1.0f / std::sqrt(lo * hi);  // max(s) * min(s) = 1, as AWQ normalises
  for (float& x : s) x *= norm;
  return s;
}

// Evenly spaced rows of every weight of the group, as floats: [n, cols].
std::vector<float> sample_rows(const Checkpoint& ckpt, const Group& g, uint64_t cols, uint64_t& n) {
  std::vector<float> w;
  n = 0;
  for (const std::string& name : g.weights) {
    const TensorView* t = ckpt.find(name);
    if (!t || t->shape.size() != 2 || t->shape[1] != cols)
      throw Error(fmt::format("calibration: tensor {} missing or not [*, {}]", name, cols));
    const uint64_t rows = t->shape[0], step = std::max<uint64_t>(1, rows / kSampleRows);
    for (uint64_t r = 0; r < rows; r += step, ++n)
      for (uint64_t j = 0; j < cols; ++j) w.push_back(load_float(t->data, t->dtype, r * cols + j));
    // The sampled rows touched pages across the whole tensor: dropped, the conversion's memory
    // stays bounded by its chunks (a default quantize of qwen2-small peaked at 160 MB without).
    ckpt.release(*t, 0, t->nbytes);
  }
  return w;
}

// The activation-weighted error of storing w [n, cols] scaled by s: quantize w * s, dequantize,
// divide by s, compare. importance (optional) goes to quantize_int4.
double weighted_error(const std::vector<float>& w, uint64_t n, uint64_t cols,
                      const std::vector<float>& s, const std::vector<float>& mean_sq, Scheme scheme,
                      bool weighted) {
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<float> ws(w.size()), imp(cols);
  for (uint64_t i = 0; i < n; ++i)
    for (uint64_t j = 0; j < cols; ++j) ws[i * cols + j] = w[i * cols + j] * s[j];
  for (uint64_t j = 0; j < cols; ++j) imp[j] = mean_sq[j] / (s[j] * s[j]);
  std::vector<uint8_t> q(n * blocks * kBlockBytes);
  std::vector<uint16_t> sc(n * blocks), mn(n * blocks);
  const bool sym = !scheme_has_mins(scheme);
  quantize_int4(ws.data(), n, cols, scheme, q.data(), sc.data(), sym ? nullptr : mn.data(),
                weighted ? imp.data() : nullptr);
  double err = 0;
  for (uint64_t i = 0; i < n; ++i)
    for (uint64_t j = 0; j < cols; ++j) {
      const uint64_t b = i * blocks + j / kBlock, e = j % kBlock;
      const uint32_t code = int4_code(&q[b * kBlockBytes], e);
      const float scale = f16_to_float(sc[b]);
      const float dq =
          sym ? (float(code) - 8.0f) * scale : float(code) * scale + f16_to_float(mn[b]);
      const double d = double(w[i * cols + j]) - double(dq) / double(s[j]);
      err += double(mean_sq[j]) * d * d;
    }
  return err;
}

struct Searched {
  GroupChoice choice;
  std::vector<float> s;  // [cols]
};

Searched search_group(const Checkpoint& ckpt, const Group& g, const CalibOptions& o,
                      Scheme scheme) {
  const uint64_t cols = g.mean_abs.size();
  Searched best{{g.input, 0, 0, 0}, std::vector<float>(cols, 1.0f)};
  if (!o.scale) return best;
  uint64_t n = 0;
  const std::vector<float> w = sample_rows(ckpt, g, cols, n);
  std::vector<float> alphas;
  if (o.alpha)
    alphas = {*o.alpha};
  else
    for (int k = 0; k < kAlphaSteps; ++k) alphas.push_back(float(k) / float(kAlphaSteps - 1));
  best.choice.error_plain = weighted_error(w, n, cols, best.s, g.mean_sq, scheme, o.weighted);
  best.choice.error = o.alpha ? INFINITY : best.choice.error_plain;
  for (float a : alphas) {
    if (a == 0 && !o.alpha) continue;
    std::vector<float> s = scales_for(g.mean_abs, a);
    const double err = weighted_error(w, n, cols, s, g.mean_sq, scheme, o.weighted);
    if (err < best.choice.error) best = {{g.input, a, best.choice.error_plain, err}, std::move(s)};
  }
  return best;
}

// The checksum `ferry calibrate` recorded: xxh3-64 of the embedding's bf16 bytes, as the bf16
// .ferry file stores them.
std::string embedding_checksum(const Checkpoint& ckpt, const ModelConfig& c) {
  const std::vector<uint64_t> shape = {c.vocab, c.hidden};
  const TensorView& t = ckpt.require_float_tensor("model.embed_tokens.weight", shape);
  const std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                       XXH3_freeState);
  XXH3_64bits_reset(state.get());
  std::vector<uint16_t> row(c.hidden);
  for (uint64_t r = 0; r < c.vocab; ++r) {
    for (uint64_t j = 0; j < c.hidden; ++j)
      row[j] = float_to_bf16(load_float(t.data, t.dtype, r * c.hidden + j));
    XXH3_64bits_update(state.get(), row.data(), row.size() * 2);
  }
  return checksum_hex(XXH3_64bits_digest(state.get()));
}

void add_fold(FoldPlan& plan, const Group& g, const std::vector<float>& s, bool weighted) {
  const uint64_t cols = s.size();
  for (const std::string& name : g.weights) {
    TensorFold& f = plan.tensors[name];
    f.col_mul = s;
    if (weighted) {
      f.importance.resize(cols);
      for (uint64_t j = 0; j < cols; ++j) f.importance[j] = g.mean_sq[j] / (s[j] * s[j]);
    }
  }
  // o: one scale per kv channel (every query head of a group has the same one); for the other
  // groups group_size is 1 and compact is s itself.
  std::vector<float> compact(cols / g.group_size), inv_compact(compact.size());
  for (uint64_t i = 0; i < compact.size(); ++i) {
    compact[i] = s[(i / g.head_dim) * g.group_size * g.head_dim + i % g.head_dim];
    inv_compact[i] = 1.0f / compact[i];
  }
  if (!g.fold_norm.empty()) plan.tensors[g.fold_norm].col_mul = inv_compact;
  if (!g.fold_rows.empty()) plan.tensors[g.fold_rows].row_div = compact;
  if (!g.fold_bias.empty()) plan.tensors[g.fold_bias].col_mul = inv_compact;
}

}  // namespace

const TensorFold* FoldPlan::find(const std::string& name) const {
  const auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

void apply_fold(const TensorFold& f, uint64_t row0, uint64_t rows, uint64_t cols, float* w) {
  for (uint64_t r = 0; r < rows; ++r) {
    const float div = f.row_div.empty() ? 1.0f : f.row_div.at(row0 + r);
    float* row = w + r * cols;
    if (!f.col_mul.empty())
      for (uint64_t j = 0; j < cols; ++j) row[j] *= f.col_mul[j];
    if (div != 1.0f)
      for (uint64_t j = 0; j < cols; ++j) row[j] /= div;
  }
}

CalibStats norm_proxy_stats(const Checkpoint& ckpt, const ModelConfig& c) {
  CalibStats st;
  st.id.model = "the checkpoint's norms (no calibration data)";
  auto add = [&](const std::string& input, const std::string& norm) {
    const std::vector<uint64_t> shape = {c.hidden};
    const TensorView& t = ckpt.require_float_tensor(norm, shape);
    ChannelStats& s = st.inputs[input];
    s.mean_abs.resize(c.hidden);
    s.mean_sq.resize(c.hidden);
    for (uint64_t j = 0; j < c.hidden; ++j) {
      const float g = std::fabs(load_float(t.data, t.dtype, j));
      s.mean_abs[j] = g;
      s.mean_sq[j] = g * g;
    }
  };
  for (uint64_t l = 0; l < c.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(calib_input_name(l, CalibInput::attn_in), p + "input_layernorm.weight");
    add(calib_input_name(l, CalibInput::mlp_in), p + "post_attention_layernorm.weight");
  }
  add(kLmHeadInput, "model.norm.weight");
  return st;
}

FoldPlan plan_activation_scaling(const Checkpoint& ckpt, const ModelConfig& c,
                                 const std::string& config_json, const CalibOptions& o,
                                 Scheme scheme, unsigned threads) {
  const CalibStats st =
      o.norms ? norm_proxy_stats(ckpt, c) : read_calib_stats(o.stats, c, config_json);
  if (!o.norms && st.id.embed_checksum != embedding_checksum(ckpt, c))
    throw Error(
        fmt::format("{}: was made for another model ({}: its embedding differs from this "
                    "checkpoint's); run `ferry calibrate` on this checkpoint's bf16 "
                    "conversion",
                    o.stats.string(), st.id.model));
  const Scheme search_scheme = scheme_is_int4(scheme) ? scheme : kDefaultScheme;
  const std::vector<Group> groups = make_groups(c, st);
  std::vector<Searched> found(groups.size());
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
  run_threads(
      thread_count(threads),
      [&] {
        for (size_t i; (i = next.fetch_add(1)) < groups.size();) try {
            found[i] = search_group(ckpt, groups[i], o, search_scheme);
          } catch (...) {
            std::lock_guard lock(mu);
            if (!error) error = std::current_exception();
          }
      },
      [] {});
  if (error) std::rethrow_exception(error);
  FoldPlan plan;
  // Folds compose: up_proj's columns (gate/up group) and rows (down group) are both scaled, as
  // are v_proj's (q/k/v and o): add_fold sets each field once.
  for (size_t i = 0; i < groups.size(); ++i) {
    add_fold(plan, groups[i], found[i].s, o.weighted);
    plan.groups.push_back(found[i].choice);
  }
  if (o.weighted) {
    const ChannelStats& lm = st.at(kLmHeadInput, c.hidden);
    plan.tensors["lm_head.weight"].importance = lm.mean_sq;
  }
  return plan;
}

}  // namespace ferry
