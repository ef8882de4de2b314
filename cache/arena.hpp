// Placement of entries inside the cache arena: first fit over a list of free ranges kept sorted by
// offset, neighbours coalesced on free.
//
// Why first fit over a free list rather than fixed slots: weights of one model differ in size by
// up to 150x (qwen2-32b in INT4: k_proj 5120x1024 is 2.8 MB, lm_head 152064x5120 is 414 MB), so
// slots of the largest would leave most of an LRU budget unused. Sizes repeat with the schedule's
// period and the pin policy frees its streamed entries in the order it placed them, so the free
// list stays short. The list holds at most one range more than there are entries and is reserved at
// construction: placing and freeing never allocate (the per-token path), and a scan of at most 450
// ranges (a 64-layer model) costs well under a microsecond against milliseconds of compute per
// weight.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

namespace ferry {

class ArenaAllocator {
 public:
  // An arena of `bytes` that holds at most `max_entries` placements at once.
  ArenaAllocator(uint64_t bytes, size_t max_entries);
  // Offset of `bytes` free bytes at the lowest address that has them, or nullopt.
  std::optional<uint64_t> allocate(uint64_t bytes);
  void free(uint64_t offset, uint64_t bytes);
  uint64_t used() const { return used_; }
  uint64_t size() const { return size_; }

 private:
  struct Range {
    uint64_t offset, bytes;
  };
  uint64_t size_, used_ = 0;
  std::vector<Range> free_;  // [<= max_entries + 1] sorted by offset, never adjacent
};

}  // namespace ferry
