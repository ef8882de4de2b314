// `ferry calibrate`: runs a bf16 model on the CPU over a calibration text and collects, per linear
// input, per input channel, the mean |x| and mean x^2 of the activations (quantizer/
// calib_stats.hpp holds the file they go to; `ferry quantize --calib` reads it, without the
// runtime). The text is cut as `ferry perplexity` cuts it (chunks of ctx tokens from position 0,
// BOS first where the model wants one), and every token of every chunk counts.
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>

#include "format/calib_stats.hpp"
#include "runtime/engine.hpp"

namespace ferry {

struct CalibrationOptions {
  uint64_t ctx = 512;    // tokens a chunk
  uint64_t chunks = 0;   // at most this many (0: every whole chunk of the text)
  uint64_t batch = 128;  // tokens a forward call
  std::function<void(uint64_t chunk, uint64_t chunks)> progress = {};  // after each chunk
};

// Throws ferry::Error with one line when the model is not a bf16 conversion (`ferry quantize
// --scheme bf16`: the statistics must be those of the unquantized weights) or the text holds
// fewer than one chunk of ctx tokens.
CalibStats run_calibration(Engine& e, std::string_view text, const CalibrationOptions& o);

}  // namespace ferry
