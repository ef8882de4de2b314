// The paging core (DESIGN.md): a byte-budgeted cache of weights keyed by id, filled ahead of the
// compute by a prefetch thread that walks the schedule `lookahead` entries ahead, with the
// `lru` and `pin` policies and statistics. It knows ids and sizes, not a model: how a weight's
// bytes are produced (a copy, or a copy and a dequantization) is the `fill` callback's business.
//
// On the CPU backend one arena of exactly the budget, allocated once, stands in for device
// memory, and the prefetch thread does the copies itself. Entries are placed by a first-fit
// allocator over the arena (free ranges coalesced), 64-byte aligned.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <concurrentqueue/blockingconcurrentqueue.h>

namespace ferry {

enum class CachePolicy { lru, pin };

struct CacheStats {
  uint64_t acquires = 0;  // weight uses by the compute
  uint64_t hits = 0;      // uses of an entry resident from an earlier use (no upload)
  uint64_t uploads = 0;   // entries filled (by the prefetcher or on demand)
  uint64_t uploaded_bytes = 0;
  uint64_t evictions = 0;
  uint64_t sync_fetches = 0;    // acquires that found their weight not even requested
  double wait_seconds = 0;      // time the compute waited in acquire
  uint64_t resident_bytes = 0;  // now
  uint64_t high_water = 0;      // most bytes ever allocated in the arena at once
  uint64_t budget = 0;
  uint64_t pinned_bytes = 0;  // pin policy: bytes chosen to stay resident
};

// fill(id, dst): writes weight `id` (sizes[id] bytes) to dst. Called on the prefetch thread (or
// on the compute thread for a synchronous fetch); may throw, and the error reaches acquire.
using FillFn = std::function<void(uint32_t id, uint8_t* dst)>;

class WeightCache {
 public:
  // sizes: bytes of each weight id in schedule order. layers: the layer of each id (for pin's
  // spreading). Throws ferry::Error when `budget` is below the minimum (the largest weight),
  // stating the minimum.
  WeightCache(std::vector<uint64_t> sizes, std::vector<uint32_t> layers, uint64_t budget,
              CachePolicy policy, uint32_t lookahead, FillFn fill);
  ~WeightCache();  // stops the prefetch thread, even mid-fill
  WeightCache(const WeightCache&) = delete;
  WeightCache& operator=(const WeightCache&) = delete;

  // The entry's bytes, ready; requests the next `lookahead` ids. Waits if it is being filled.
  const uint8_t* acquire(uint32_t id);
  void release(uint32_t id);
  CacheStats stats() const;
  static uint64_t minimum_budget(const std::vector<uint64_t>& sizes);
  // The ids pin keeps resident for a budget (exposed for tests).
  std::vector<bool> pinned() const;

 private:
  enum class State { absent, queued, filling, ready };
  struct Entry {
    State state = State::absent;
    uint64_t offset = 0;
    bool in_use = false, used_since_fill = false, pinned = false;
    uint64_t last_use = 0;  // LRU clock
  };

  void prefetch_loop();
  void request_ahead(uint32_t id);
  bool allocate(uint32_t id, bool unconsumed_too);
  bool evict_one(bool unconsumed_too);
  void fill_entry(uint32_t id, std::unique_lock<std::mutex>& lock, bool on_demand);
  uint64_t take_range(uint64_t size);
  void free_range(uint64_t offset, uint64_t size);
  void choose_pinned();

  const std::vector<uint64_t> sizes_;
  const std::vector<uint32_t> layers_;
  const uint64_t budget_;
  const CachePolicy policy_;
  const uint32_t lookahead_;
  const FillFn fill_;
  std::unique_ptr<uint8_t[]> arena_;  // [budget_ + 64] bytes; the stand-in for device memory
  uint8_t* base_ = nullptr;           // arena_ rounded up to 64 bytes

  mutable std::mutex mu_;
  std::condition_variable changed_;    // any state change
  std::vector<Entry> entries_;         // [ids]
  std::map<uint64_t, uint64_t> free_;  // offset -> size of free ranges
  std::string error_;                  // first fill error, rethrown by acquire
  uint64_t clock_ = 0, allocated_ = 0;
  CacheStats stats_;
  bool stop_ = false;
  // Requests travel to the prefetch thread through this queue, in schedule order; kStop ends it.
  moodycamel::BlockingConcurrentQueue<uint32_t> requests_;
  std::thread thread_;
};

}  // namespace ferry
