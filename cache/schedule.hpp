// The schedule of the paging cache: the weights one forward pass uses, in the order it uses them.
// A weight's id is its position in that order (runtime/model.hpp numbers the linear weights so:
// per layer q k v o gate up down, then lm_head), and passes follow one another, so the prefetcher
// walks it cyclically. The cache knows weights only by id, size and layer (DESIGN.md: "the cache
// knows a schedule of weight ids, not a model").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ferry {

// Entries start on multiples of 256 bytes in the arena: cudaMalloc's alignment, so the CUDA
// kernels (128-byte coalesced loads) see an entry aligned as if it had a cudaMalloc of its own,
// and on the CPU every AVX load stays within cache lines. At most 255 bytes lost per entry
// (115 KB for the 449 weights of a 64-layer model).
inline constexpr uint64_t kEntryAlign = 256;
constexpr uint64_t entry_aligned(uint64_t n) {
  return (n + kEntryAlign - 1) / kEntryAlign * kEntryAlign;
}

struct ScheduledWeight {
  uint64_t bytes = 0;  // size of the entry in the cache's format
  uint32_t layer = 0;  // for pin's even spread
  std::string name;    // for messages only
};

struct Schedule {
  std::vector<ScheduledWeight> weights;  // [ids] in use order

  size_t size() const { return weights.size(); }
  uint64_t arena_bytes(uint32_t id) const { return entry_aligned(weights[id].bytes); }
  // Every entry resident at once (the budget `all` stands for).
  uint64_t whole_bytes() const;
  // The smallest budget the cache runs with: the compute holds one weight at a time
  // (runtime/forward.cpp acquires, runs and releases each Linear), so one entry of the largest
  // weight must fit; everything else can be streamed through that space.
  uint64_t minimum_budget() const;
  uint32_t largest() const;  // id of the largest weight (the first of equals)
};

}  // namespace ferry
