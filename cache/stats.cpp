#include "cache/stats.hpp"

#include <fmt/format.h>

#include "base/bytes.hpp"

namespace ferry {
namespace {

double percent(uint64_t part, uint64_t whole) {
  return whole ? 100.0 * double(part) / double(whole) : 0.0;
}

}  // namespace

const char* policy_name(CachePolicy p) {
  return p == CachePolicy::pin ? "pin" : "lru";
}

std::string format_cache_stats(const CacheStats& s, uint64_t tokens) {
  const double per_token = tokens ? double(s.uploaded_bytes) / double(tokens) : 0;
  return fmt::format(
      "cache: policy {}, arena {} ({:.0f}% of the {} of weights), pinned {} ({:.1f}%)\n"
      "cache: resident {}, high-water {}\n"
      "cache: {} weight uses: {} hits ({:.1f}%, {:.1f}% of bytes), {} prefetched, {} misses\n"
      "cache: uploaded {} ({} per token over {} tokens), {} evictions, {} preloaded\n"
      "cache: compute waited {:.3f} s for weights ({:.2f} ms per token{})\n",
      policy_name(s.policy), human_bytes(double(s.arena_bytes)),
      percent(s.arena_bytes, s.whole_bytes), human_bytes(double(s.whole_bytes)),
      human_bytes(double(s.pinned_bytes)), percent(s.pinned_bytes, s.whole_bytes),
      human_bytes(double(s.resident_bytes)), human_bytes(double(s.high_water)), s.acquires, s.hits,
      percent(s.hits, s.acquires), percent(s.hit_bytes, s.acquired_bytes), s.prefetched, s.misses,
      human_bytes(double(s.uploaded_bytes)), human_bytes(per_token), tokens, s.evictions,
      human_bytes(double(s.preloaded_bytes)), s.wait_seconds,
      tokens ? 1e3 * s.wait_seconds / double(tokens) : 0.0,
      s.device_wait_seconds > 0
          ? fmt::format("; {:.3f} s of it the GPU's stream on uploads", s.device_wait_seconds)
          : "");
}

}  // namespace ferry
