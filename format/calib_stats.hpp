// The calibration statistics file (`ferry calibrate` writes it, `ferry quantize --calib` reads
// it): per linear input of a model, per input channel, the mean |x| and mean x^2 of the
// activations that entered it while the bf16 model ran over a calibration text. Inputs shared by
// several linears are stored once: q/k/v share the attention block's normed input, gate/up the
// MLP's. A safetensors file (any reader opens it): tensors NAME.mean_abs and NAME.mean_sq, F32
// [cols], NAME one of model.layers.L.{attn_in, o_in, mlp_in, down_in} or lm_head_in; its
// __metadata__ names the model (a hash of config.json, the checksum of the bf16 embedding) and
// the text (hash, tokens, ctx), so that a file made for another model is refused.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "format/model_config.hpp"

namespace ferry {

// The linear inputs of one decoder layer whose statistics are kept.
enum class CalibInput : uint8_t { attn_in, o_in, mlp_in, down_in };
inline constexpr CalibInput kCalibInputs[] = {CalibInput::attn_in, CalibInput::o_in,
                                              CalibInput::mlp_in, CalibInput::down_in};
std::string calib_input_name(uint64_t layer, CalibInput in);  // "model.layers.3.mlp_in"
inline constexpr const char* kLmHeadInput = "lm_head_in";
uint64_t calib_input_cols(const ModelConfig& c, CalibInput in);  // hidden, q dim or intermediate

struct ChannelStats {
  std::vector<float> mean_abs;  // [cols] E|x_j|
  std::vector<float> mean_sq;   // [cols] E[x_j^2], the diagonal of the inputs' Hessian / rows
};

// What identifies the model and the text a file was made from.
struct CalibIdentity {
  std::string model;             // the .ferry file's name (informative)
  std::string config_hash;       // xxh3-64 hex of config.json's text, as stored in the .ferry file
  std::string embed_checksum;    // xxh3-64 hex of model.embed_tokens.weight in bf16
  std::string text_hash;         // xxh3-64 hex of the calibration text
  uint64_t tokens = 0, ctx = 0;  // tokens run, chunk length
};

struct CalibStats {
  CalibIdentity id;
  std::map<std::string, ChannelStats> inputs;  // by calib_input_name / kLmHeadInput
  // The input's statistics; throws ferry::Error when absent or of another size.
  const ChannelStats& at(const std::string& name, uint64_t cols) const;
};

// Writes atomically; throws ferry::Error.
void write_calib_stats(const std::filesystem::path& path, const CalibStats& stats);
// Reads and checks every tensor against `config` (names, F32, [cols]) and config.json's text
// against the hash the file holds; throws ferry::Error naming the file ("was made for another
// model").
CalibStats read_calib_stats(const std::filesystem::path& path, const ModelConfig& config,
                            const std::string& config_json);

std::string xxh3_hex(std::string_view bytes);

}  // namespace ferry
