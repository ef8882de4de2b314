// ferry quantize: a Hugging Face checkpoint directory -> one .ferry packed file.
//
// Streams on all cores in bounded memory: the work is cut into units of at most
// ConvertOptions::chunk_bytes of source weights (whole rows); each worker converts one unit at a
// time into its own buffers, writes the result at its precomputed offset in the output and drops
// the unit's source pages from its resident set. Peak RSS is therefore about
// threads x (5 x chunk_bytes) plus the header, whatever the model size (README, "Memory").
// The output is written through AtomicFile: a kill at any moment leaves no partial file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "base/threads.hpp"
#include "format/model_config.hpp"
#include "format/packed_file.hpp"
#include "quantizer/activation_scaling.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {

// The default scheme: the one of lowest perplexity on SmolLM2 and TinyStories once the value
// projections are INT8 (docs/quantization.md: ratios to bf16 1.280 and 1.015, against asym-clip's
// 1.327 and 1.028); asym-clip has the lowest weight RMS error but not the best output.
inline constexpr Scheme kDefaultScheme = Scheme::asym_hqq;

struct ConvertOptions {
  Scheme scheme = kDefaultScheme;
  // --max-context: the longest context the packed model may run (meta::kMaxContext); 0: none.
  // Required for a model whose sliding window is shorter than its trained context.
  uint64_t max_context = 0;
  std::vector<KeepRule> keep = {};    // --keep PATTERN=int4|int8|bf16, in order (later wins)
  unsigned threads = 0;               // 0: every core
  uint64_t chunk_bytes = 4ull << 20;  // source bytes per work unit
  CalibOptions calib = {};            // --calib: activation-aware INT4 (off without a file)
};

struct WeightReport {
  std::string name;
  std::vector<uint64_t> shape;
  bool quantized = false;
  WeightStorage storage = WeightStorage::bf16;
  QuantError error;  // zero for weights kept in bf16 (their rounding error is not reported)
};

struct ConvertReport {
  ModelConfig config;
  std::vector<WeightReport> weights;
  QuantError total;          // over all quantized weights
  uint64_t input_bytes = 0;  // source tensor bytes read, each stored tensor once (tied: once)
  uint64_t output_bytes = 0;
  double seconds = 0;
  std::vector<GroupChoice> calib;  // per linear group, with --calib scaling
};

// Throws ferry::Error for missing or malformed inputs (config.json, tokenizer.json and, when
// present, tokenizer_config.json and generation_config.json must be JSON objects), an unsupported
// architecture, a tensor whose shape disagrees with config.json, an output path that is unusable
// (see check_output_path) or is one of the input files, a full disk; the output path is then
// untouched. The output path is checked before any work.
ConvertReport convert_checkpoint(const std::filesystem::path& hf_dir,
                                 const std::filesystem::path& out, const ConvertOptions& options,
                                 const ProgressFn& progress);

// Reads a whole small text file (config.json and friends); throws ferry::Error naming it.
std::string read_text_file(const std::filesystem::path& p);

}  // namespace ferry
