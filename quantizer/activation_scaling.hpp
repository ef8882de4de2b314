// Activation-aware INT4 from calibration statistics (format/calib_stats.hpp), without the
// runtime:
// - AWQ's per-input-channel scaling (Lin et al., "AWQ: Activation-aware Weight Quantization",
//   2023): a linear group's weight columns are multiplied by s_j = mean|x_j|^alpha (normalised
//   so that max(s) * min(s) = 1) and its input divided by s_j, the division folded into the op
//   before it, so the bf16 model computes the same function while the channels that carry large
//   activations get more of the INT4 grid. alpha is searched per group on a grid of 0, 0.1 .. 1
//   (0 is no scaling, so the chosen alpha never raises the objective) to minimise the
//   activation-weighted error sum_ij E[x_j^2] (W_ij - Q(W s)_ij / s_j)^2, the diagonal of the
//   output error's Hessian. Groups and where each s is folded:
//     q/k/v    columns * s, input_layernorm / s
//     gate/up  columns * s, post_attention_layernorm / s
//     down     columns * s, up_proj rows / s (silu(gate) * up is linear in up)
//     o        columns * s, v_proj rows (and bias) / s: attention output channel d of query head h
//              is a mix of v channel d of kv head h / group, so the scale must be shared by the
//              `heads / kv_heads` query heads of a group; it is computed from their averaged
//              mean |x|. This holds for every GQA and MHA grouping ferry runs (no skip needed).
//   lm_head is not scaled: tied to the embedding, its columns are the embedding's.
// - The activation-weighted objective: E[x_j^2] (divided by s_j^2 for a scaled weight) becomes
//   the column importance of the clip search and asym-hqq's offset fit (quantize_int4).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/calib_stats.hpp"
#include "format/model_config.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {

class Checkpoint;

struct CalibOptions {
  std::filesystem::path stats = {};  // `ferry calibrate`'s file; empty: no calibration
  // Without data: each norm's weights as the mean |x| of the linears behind it (norm_proxy_stats);
  // the default of the INT4 schemes (docs/quantization.md, "Norm-aware scaling"). Ignores stats.
  bool norms = false;
  bool scale = true;                // AWQ scaling, alpha searched per group
  bool weighted = true;             // E[x^2] as the objective of the scale/offset searches
  std::optional<float> alpha = {};  // a fixed alpha for every group instead of the search
};

// How one tensor of the checkpoint is changed before it is stored: w[r][c] * col_mul[c] /
// row_div[r] (either may be empty: 1), then quantized with `importance` as column weights.
struct TensorFold {
  std::vector<float> col_mul;     // [cols]
  std::vector<float> row_div;     // [rows]
  std::vector<float> importance;  // [cols] E[x^2] of the input the stored weight sees
};

// One group's search result.
struct GroupChoice {
  std::string input;       // calib_input_name
  float alpha = 0;         // chosen
  double error_plain = 0;  // the activation-weighted error at alpha 0, summed over sampled rows
  double error = 0;        // at the chosen alpha
};

struct FoldPlan {
  std::map<std::string, TensorFold> tensors;  // by Hugging Face tensor name
  std::vector<GroupChoice> groups;
  const TensorFold* find(const std::string& name) const;
};

// The statistics without data, from what the checkpoint says about its inputs: the linears
// behind a norm (q/k/v after input_layernorm, gate/up after post_attention_layernorm, lm_head
// after model.norm) see x_j = gamma_j * h_j / rms(h), so |gamma_j| stands for mean |x_j| and
// gamma_j^2 for E[x_j^2] (the normalised h taken as alike across channels). o and down have no
// norm in front: they are left out, and plan_activation_scaling leaves them unscaled and
// unweighted.
CalibStats norm_proxy_stats(const Checkpoint& ckpt, const ModelConfig& config);

// Reads the statistics (refused with one line when made for another model: config.json's hash,
// the embedding's checksum, every input's size), or with options.norms makes them
// (norm_proxy_stats), and searches the scales. `scheme` is the one the
// weights will be stored in (for bf16, the default INT4 scheme the scales are chosen for).
FoldPlan plan_activation_scaling(const Checkpoint& ckpt, const ModelConfig& config,
                                 const std::string& config_json, const CalibOptions& options,
                                 Scheme scheme, unsigned threads);

// Applies a fold to rows [row0, row0 + rows) of a [*, cols] tensor held as floats.
void apply_fold(const TensorFold& f, uint64_t row0, uint64_t rows, uint64_t cols, float* w);

}  // namespace ferry
