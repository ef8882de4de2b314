// The paging core (DESIGN.md): a cache of weights keyed by schedule id in one preallocated arena
// of at most the byte budget, filled ahead of the compute by a prefetch thread that walks the
// schedule `lookahead` weights ahead (cyclically, pass after pass), under the `lru` or `pin`
// policy, with statistics. How a weight's bytes are produced (a copy, or a copy and a
// dequantization) is the `fill` callback's business; the cache knows ids, sizes and layers.
//
// An entry is absent, queued (requested from the prefetch thread), filling (its bytes being
// written, by the prefetch thread or, on a miss, by the compute thread) or ready. The compute
// waits only on an entry being filled: one it finds absent or still queued it fetches itself (a
// miss), so the compute never waits on the prefetcher's queue and the prefetcher, which waits for
// room only while holding nothing, can never block it. An entry is evicted only when ready with
// no reader; its memory is reused only after the backend's last-use signal. An entry that will
// never be evicted (pinned, or any entry when the arena holds the whole model) signals no last
// use: on a GPU that is one event record fewer per linear per token, and a resident entry's
// acquire enqueues no wait once its upload is done (cache/backend_cuda.cpp), so a fully resident
// decode step makes no event calls at all.
//
// Policies. lru: when a placement needs room, evict the least recently used entry that was
// released and already used since it was filled (the prefetcher never evicts an entry it fetched
// for a use still to come; a miss may, the one needed last first). With the cyclic schedule and a
// budget below the model this evicts exactly the weight needed soonest: ~0% hits, shown, not
// hidden. pin: the plan of pin_plan.hpp keeps a fixed set resident, filled at load; every other
// weight is placed in the rest of the arena (the ring) and evicted as soon as it is released.
//
// Errors. A failure while filling (a failed copy, an allocation failure, an injected fault) on
// either thread is kept, and acquire throws it as ferry::Error, then and on every later call: no
// caller waits for an entry that will never come. The destructor stops the prefetch thread after
// at most the fill in progress (one weight's copy).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <concurrentqueue/blockingconcurrentqueue.h>

#include "cache/arena.hpp"
#include "cache/backend.hpp"
#include "cache/pin_plan.hpp"
#include "cache/schedule.hpp"
#include "cache/stats.hpp"

namespace ferry {

struct CacheConfig {
  uint64_t budget = 0;  // bytes of arena at most
  CachePolicy policy = CachePolicy::lru;
  uint32_t lookahead = 2;  // weights requested ahead of the one being acquired
  // Tests: called under the cache's lock with each evicted id, in eviction order.
  std::function<void(uint32_t id)> on_evict;
};

// Writes weight `id`'s entry (schedule.weights[id].bytes) to `dst` through the backend's copy or
// dequantization. Runs on the prefetch thread, on the compute thread for a miss, or at load; may
// throw.
using FillFn = std::function<void(uint32_t id, uint8_t* dst)>;

class DeviceCache {
 public:
  // Throws ferry::Error when the budget is below schedule.minimum_budget() (stating the minimum
  // and the flag that raises it) or the arena cannot be allocated; pin fills its resident set
  // here, so a failure there is thrown here too.
  DeviceCache(CacheBackend& backend, Schedule schedule, const CacheConfig& config, FillFn fill);
  ~DeviceCache();
  DeviceCache(const DeviceCache&) = delete;
  DeviceCache& operator=(const DeviceCache&) = delete;

  // Weight `id`'s entry, ready to read until release(id). Requests the next `lookahead` weights.
  const uint8_t* acquire(uint32_t id);
  void release(uint32_t id);
  // Whether the caller can hold these weights at once whatever else the arena holds: all of the
  // model fits, or the room past the pinned entries (placed first, a prefix of the arena) leaves,
  // beside g - 1 held entries of at most M bytes each, g * M free in at most g gaps, so one gap
  // takes the next entry (first fit): (2g - 1) * M. Below that the caller acquires one at a time
  // (schedule.minimum_budget() counts one weight held).
  bool can_hold(std::span<const uint32_t> ids) const;
  // Whether every weight is in the arena with its fill complete and will stay there (lru with the
  // whole model in the budget, or every entry pinned: nothing is evicted, no last use signalled),
  // so that a pass acquires each without any wait or signal (the CUDA pass then records its
  // decode step as a graph). Under lru false until a pass has filled everything; once true, true
  // for good.
  bool resident();

  CacheStats stats() const;
  // Cancels the prefetches not yet started and waits for the one in flight, so that until the
  // next acquire stats() agrees with the backend's own counters: a transfer is counted when it
  // starts and an upload when its fill ends, and the prefetch of the next pass's first weights
  // (requested ahead from the last) may lie between the two when a pass returns.
  void settle();
  const Schedule& schedule() const { return schedule_; }
  const PinPlan& pin_plan() const { return plan_; }  // empty under lru

 private:
  enum class State : uint8_t { absent, queued, filling, ready };
  struct Entry {
    State state = State::absent;
    bool pinned = false;
    bool fresh = false;     // filled for a use that has not come yet
    uint32_t readers = 0;   // acquires not yet released
    uint64_t offset = 0;    // in the arena, while filling or ready
    uint64_t last_use = 0;  // LRU clock
  };
  using Lock = std::unique_lock<std::mutex>;

  void load_pinned();
  void prefetch_loop();
  void prefetch(uint32_t id, Lock& lock);
  void request_ahead(uint32_t id);
  void fetch_now(uint32_t id, Lock& lock);
  bool place(uint32_t id, bool take_fresh);
  int64_t victim(bool take_fresh) const;
  void evict(uint32_t id);
  bool fill(uint32_t id, Lock& lock, bool preload);
  void fail(uint32_t id, const std::string& what);
  void throw_if_failed() const;

  CacheBackend& backend_;
  const Schedule schedule_;
  const CacheConfig config_;
  const FillFn fill_;
  const uint64_t arena_bytes_;  // the budget, or the whole model when that is less
  const bool
      whole_fits_;  // arena_bytes_ >= the whole model: computed once, asked per acquire group
  // lru and whole_fits_: nothing is ever evicted (entries are never freed, so they lie end to end
  // and each placement fits), and releases signal no last use.
  const bool holds_all_;
  Memory arena_;  // [arena_bytes_] the stand-in for, or the real, device memory
  PinPlan plan_;
  ArenaAllocator allocator_;

  mutable std::mutex mu_;
  std::condition_variable changed_;  // an entry's state, a reader count or the error changed
  std::vector<Entry> entries_;       // [ids]
  uint32_t cursor_ = 0;              // the id the compute acquired last
  int64_t prefetching_ = -1;         // the id the prefetch thread is filling, or -1
  uint64_t clock_ = 0;
  std::string error_;  // the first fill failure; thrown by every acquire from then on
  std::atomic<bool> resident_{false};  // resident() said true: checked entry by entry until then
  CacheStats stats_;
  bool stop_ = false;
  // Requests to the prefetch thread, in schedule order; kStop ends it. Sized for two passes of
  // requests at construction, so that enqueueing does not allocate on the per-token path.
  moodycamel::BlockingConcurrentQueue<uint32_t> requests_;
  std::thread thread_;
};

}  // namespace ferry
