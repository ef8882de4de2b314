// The schedule of the paging cache: the weights one forward pass uses, in the order it uses them.
// A weight's id is its position in that order (runtime/model.hpp numbers the linear weights so:
// per layer q k v o gate up down, then lm_head), and passes follow one another, so the prefetcher
// walks it cyclically. The cache knows weights only by id, size and layer (DESIGN.md: "the cache
// knows a schedule of weight ids, not a model").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "format/int4.hpp"
#include "format/int8.hpp"

namespace ferry {

// Entries start on multiples of 256 bytes in the arena: cudaMalloc's alignment, so the CUDA
// kernels (128-byte coalesced loads) see an entry aligned as if it had a cudaMalloc of its own,
// and on the CPU every AVX load stays within cache lines. At most 255 bytes lost per entry
// (115 KB for the 449 weights of a 64-layer model).
inline constexpr uint64_t kEntryAlign = 256;
constexpr uint64_t entry_aligned(uint64_t n) {
  return (n + kEntryAlign - 1) / kEntryAlign * kEntryAlign;
}

// How an INT4 weight (format/int4.hpp) lies in a cache entry, and in the CUDA backend's staging
// buffer: codes, then scales, then mins, each starting on an entry_aligned() offset, as three
// cudaMallocs would align them. The host weight store lays a weight's parts out the same way, so
// one copy moves a whole entry.
struct Int4EntryLayout {
  uint64_t code_bytes = 0, scale_bytes = 0;  // scale_bytes: of the scales, and of the mins
  uint64_t scales_at = 0, mins_at = 0;       // offsets from the entry's start
  bool has_mins = false;
  constexpr uint64_t bytes() const {
    return has_mins ? mins_at + scale_bytes : scales_at + scale_bytes;
  }
};
constexpr Int4EntryLayout int4_entry_layout(uint64_t rows, uint64_t cols, bool has_mins) {
  Int4EntryLayout e{int4_code_bytes(rows, cols), int4_scale_count(rows, cols) * 2};
  e.scales_at = entry_aligned(e.code_bytes);
  e.mins_at = e.scales_at + entry_aligned(e.scale_bytes);
  e.has_mins = has_mins;
  return e;
}
// The view of an INT4 weight whose entry starts at p.
inline Int4View int4_entry_view(const Int4EntryLayout& e, const uint8_t* p, uint64_t rows,
                                uint64_t cols) {
  return {p, reinterpret_cast<const uint16_t*>(p + e.scales_at),
          e.has_mins ? reinterpret_cast<const uint16_t*>(p + e.mins_at) : nullptr, rows, cols};
}

// An INT8 weight (format/int8.hpp) lies in its entry as an INT4 one without mins: codes, then
// scales at the next entry_aligned() offset.
constexpr Int4EntryLayout int8_entry_layout(uint64_t rows, uint64_t cols) {
  Int4EntryLayout e{int8_code_bytes(rows, cols), int8_scale_count(rows, cols) * 2};
  e.scales_at = entry_aligned(e.code_bytes);
  e.mins_at = e.scales_at + entry_aligned(e.scale_bytes);
  return e;
}
inline Int8View int8_entry_view(const Int4EntryLayout& e, const uint8_t* p, uint64_t rows,
                                uint64_t cols) {
  return {reinterpret_cast<const int8_t*>(p), reinterpret_cast<const uint16_t*>(p + e.scales_at),
          rows, cols};
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
  // (runtime/forward_cpu.cpp acquires, runs and releases each Linear; it holds q/k/v or gate/up
  // together only where DeviceCache::can_hold says they fit), so one entry of the largest weight
  // must fit; everything else can be streamed through that space.
  uint64_t minimum_budget() const;
  uint32_t largest() const;  // id of the largest weight (the first of equals)
};

}  // namespace ferry
