// A tiny fork-join helper shared by the converter and the synthesizer: run one function on N
// threads and call `report` on the calling thread about ten times a second until they finish
// (that is where progress bars are drawn, never from a worker).
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>

namespace ferry {

// phase (e.g. "quantize", "checksum", "write"), bytes done, bytes total.
using ProgressFn = std::function<void(std::string_view phase, uint64_t done, uint64_t total)>;

void run_pool(unsigned threads, const std::function<void()>& fn,
              const std::function<void()>& report);

// `requested`, or every core when 0.
unsigned thread_count(unsigned requested);

}  // namespace ferry
