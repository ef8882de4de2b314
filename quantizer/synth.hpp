// Synthesized Hugging Face checkpoints for tests and benchmarks: the config.json of a named
// preset (tiny shapes, or the real shapes of large models), random bf16 weights with a realistic
// spread (Gaussian-like, std 0.02, about 1 value in 4096 an 8x outlier, as real LLM weights have
// outlier features), and a small byte-level BPE tokenizer.json trained on a built-in text.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/threads.hpp"

namespace ferry {

struct SynthPresetInfo {
  std::string_view name;
  std::string_view description;
};
const std::vector<SynthPresetInfo>& synth_presets();

// The config.json of a preset; `layers` overrides num_hidden_layers (to size a model).
// Throws ferry::Error listing the presets for an unknown name.
nlohmann::json synth_config(std::string_view preset, std::optional<uint64_t> layers = std::nullopt);

// A byte-level BPE tokenizer in the Hugging Face format (Qwen2 or Llama 3 pre-tokenizer pattern
// and special tokens by family): 256 byte tokens, merges learned from a built-in English text,
// then the special tokens; fewer tokens than the model's vocab_size, as real checkpoints pad
// their embedding tables. (synth_tokenizer.cpp)
struct SynthTokenizer {
  std::string tokenizer_json;
  std::string tokenizer_config_json;          // chat template and special tokens
  nlohmann::json bos_token_id, eos_token_id;  // null when the family has no BOS
};
SynthTokenizer synth_tokenizer(const nlohmann::json& config);

struct SynthOptions {
  std::string preset = "qwen2-tiny";
  std::optional<uint64_t> layers;
  uint64_t shard_bytes = 2'000'000'000;  // a new shard starts when the next tensor would pass this
  uint64_t seed = 1;
  unsigned threads = 0;  // 0: every core
};

struct SynthReport {
  uint64_t bytes = 0;  // weight bytes written
  int shards = 0;
  double seconds = 0;
};

// Writes config.json, generation_config.json, tokenizer.json, tokenizer_config.json and the
// weights (model.safetensors, or model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json) into `dir`. Deterministic for a given seed.
// `dir` may be absent (it is created, with missing parents), empty, or hold only files synth
// writes (an earlier run's output, replaced whole: no stale shard or index survives); anything
// else there is an error before any work. The checkpoint is built in a hidden sibling directory
// and renamed into place at the end, so a failure leaves `dir` as it was (and removes the parents
// it created). Throws ferry::Error.
SynthReport synth_checkpoint(const std::filesystem::path& dir, const SynthOptions& options,
                             const ProgressFn& progress);

}  // namespace ferry
