// libFuzzer target for config.json: a .ferry file carries the checkpoint's config as text, from
// which the loader takes every shape. Any JSON must give a ModelConfig or throw ferry::Error; a
// config that is accepted must then give weight shapes whose element counts do not overflow.
//   ./fuzz_model_config CORPUS_COPY_DIR  (seeds: tests/fuzz_corpus/model_config)
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "format/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json config = nlohmann::json::parse(data, data + size, nullptr, false);
  if (config.is_discarded()) return 0;  // not JSON: the reader's own error, fuzzed elsewhere
  try {
    const ferry::ModelConfig c = ferry::parse_model_config(config, "fuzz");
    for (const ferry::WeightSpec& w : ferry::model_weights(c)) {
      unsigned __int128 n = 1;
      for (uint64_t d : w.shape) n *= d;
      if (n >> 64) __builtin_trap();  // a shape whose size overflows 64 bits was accepted
    }
  } catch (const ferry::Error&) {
  }
  return 0;
}
