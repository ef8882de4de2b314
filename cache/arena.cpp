#include "cache/arena.hpp"

#include <algorithm>

#include "base/error.hpp"

namespace ferry {

ArenaAllocator::ArenaAllocator(uint64_t bytes, size_t max_entries) : size_(bytes) {
  free_.reserve(max_entries + 1);  // n placements leave at most n + 1 gaps
  if (bytes) free_.push_back({0, bytes});
}

std::optional<uint64_t> ArenaAllocator::allocate(uint64_t bytes) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->bytes < bytes) continue;
    const uint64_t offset = it->offset;
    it->offset += bytes;
    it->bytes -= bytes;
    if (it->bytes == 0) free_.erase(it);
    used_ += bytes;
    return offset;
  }
  return std::nullopt;
}

void ArenaAllocator::free(uint64_t offset, uint64_t bytes) {
  if (bytes > used_ || offset + bytes > size_)
    throw Error("internal error: freeing a range the cache arena did not hand out");
  used_ -= bytes;
  auto next = std::lower_bound(free_.begin(), free_.end(), offset,
                               [](const Range& r, uint64_t o) { return r.offset < o; });
  const bool joins_prev =
      next != free_.begin() && std::prev(next)->offset + std::prev(next)->bytes == offset;
  const bool joins_next = next != free_.end() && offset + bytes == next->offset;
  if (joins_prev && joins_next) {
    std::prev(next)->bytes += bytes + next->bytes;
    free_.erase(next);
  } else if (joins_prev) {
    std::prev(next)->bytes += bytes;
  } else if (joins_next) {
    next->offset = offset;
    next->bytes += bytes;
  } else {
    free_.insert(next, {offset, bytes});
  }
}

}  // namespace ferry
