// Statistics of the paging cache, for `ferry run --stats` and `ferry bench`.
#pragma once
#include <cstdint>
#include <string>

namespace ferry {

enum class CachePolicy { lru, pin };
const char* policy_name(CachePolicy p);

struct CacheStats {
  CachePolicy policy = CachePolicy::lru;
  // Every weight use (acquire) is exactly one of: a hit (the entry was resident before the use
  // asked for it), prefetched (uploaded ahead by the prefetch thread for this use) or a miss
  // (not requested ahead, or evicted before its use: uploaded by the compute thread itself).
  uint64_t acquires = 0, hits = 0, prefetched = 0, misses = 0;
  uint64_t acquired_bytes = 0, hit_bytes = 0;  // the same uses weighted by entry size
  uint64_t uploads = 0;          // entries filled after load (prefetched or on a miss)
  uint64_t uploaded_bytes = 0;   // their bytes
  uint64_t preloaded_bytes = 0;  // filled at load (pin's resident set)
  uint64_t evictions = 0;
  // Time the compute waited for weights: in acquire, on entries not ready on arrival, and on a
  // GPU also the compute stream's waits on uploads still in flight (CacheBackend).
  double wait_seconds = 0;
  double device_wait_seconds = 0;  // the part of wait_seconds the GPU's compute stream waited
  uint64_t resident_bytes = 0;     // in the arena now
  uint64_t high_water = 0;         // most bytes ever placed in the arena at once
  uint64_t arena_bytes = 0;        // the arena (the budget, or the whole model when that is less)
  uint64_t budget = 0;             // as asked
  uint64_t whole_bytes = 0;        // every weight in the cache's format
  uint64_t pinned_bytes = 0;       // pin: the resident set
};

// Text for `ferry run --stats`: one fact per line, each starting "cache: "; `tokens` is the
// number of tokens the uploads are divided by for the per-token figure.
std::string format_cache_stats(const CacheStats& s, uint64_t tokens);

}  // namespace ferry
