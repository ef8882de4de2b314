// A tiny fork-join helper (the converter, the synthesizer, the host weight store): run one function
// on N threads and call `report` on the calling thread about ten times a second until they finish
// (that is where progress bars are drawn, never from a worker).
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>

namespace ferry {

// phase (e.g. "quantize", "checksum", "write"), bytes done, bytes total.
using ProgressFn = std::function<void(std::string_view phase, uint64_t done, uint64_t total)>;

// Throws ferry::Error when the system refuses to start `threads` threads (after joining the ones
// that started).
void run_threads(unsigned threads, const std::function<void()>& fn,
                 const std::function<void()>& report);

// The most threads a --threads option may ask for: far above any core count of today, low enough
// that a typo (--threads 100000) fails before any work instead of at thread creation mid-way.
inline constexpr unsigned kMaxThreads = 1024;
// Throws ferry::Error naming --threads when `requested` exceeds kMaxThreads.
void check_thread_request(unsigned requested);

// `requested`, or every core when 0.
unsigned thread_count(unsigned requested);

}  // namespace ferry
