#include "cache/device_cache.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"

namespace ferry {
namespace {

constexpr uint32_t kStop = ~0u;

// The arena: the budget rounded down to whole entry alignments, and no more than every weight at
// once (a larger one could never be used). Throws below the minimum.
uint64_t arena_bytes_for(const Schedule& s, uint64_t budget) {
  if (s.size() == 0 || s.size() >= kStop) throw Error("the cache schedule has no weights");
  const uint64_t minimum = s.minimum_budget();
  if (budget < minimum)
    throw Error(
        Setting::cache_budget,
        fmt::format(
            "a cache budget of {} is below the minimum of {} ({} bytes) for this model: its "
            "largest weight ({}) must fit; raise it to at least {}",
            human_bytes(double(budget)), human_bytes(double(minimum)), minimum,
            s.weights[s.largest()].name, human_bytes(double(minimum))));
  return std::min(budget / kEntryAlign * kEntryAlign, s.whole_bytes());
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

DeviceCache::DeviceCache(CacheBackend& backend, Schedule schedule, const CacheConfig& config,
                         FillFn fill)
    : backend_(backend),
      schedule_(std::move(schedule)),
      config_(config),
      fill_(std::move(fill)),
      arena_bytes_(arena_bytes_for(schedule_, config.budget)),
      whole_fits_(arena_bytes_ >= schedule_.whole_bytes()),
      // pin streams its unpinned weights through the ring even then (and pins all when they fit)
      holds_all_(config.policy == CachePolicy::lru && whole_fits_),
      arena_(backend.allocate_device(arena_bytes_, "the cache arena")),
      allocator_(arena_bytes_, schedule_.size()),
      entries_(schedule_.size()),
      requests_(2 * schedule_.size() + 8) {
  backend_.create_signals(uint32_t(schedule_.size()));
  stats_.policy = config.policy;
  stats_.arena_bytes = arena_bytes_;
  stats_.budget = config.budget;
  stats_.whole_bytes = schedule_.whole_bytes();
  if (config.policy == CachePolicy::pin) load_pinned();
  thread_ = std::thread([this] { prefetch_loop(); });
}

DeviceCache::~DeviceCache() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  requests_.enqueue(kStop);
  thread_.join();
}

// Pin's resident set, filled at load on the calling thread in schedule order: placed first, it
// lies contiguous from offset 0, so the ring is one free range.
void DeviceCache::load_pinned() {
  plan_ = plan_pin(schedule_, arena_bytes_, config_.lookahead ? 2 : 1);
  stats_.pinned_bytes = plan_.pinned_bytes;
  Lock lock(mu_);
  for (uint32_t id = 0; id < schedule_.size(); ++id) {
    if (!plan_.pinned[id]) continue;
    entries_[id].pinned = true;
    try {
      if (!place(id, false))
        throw Error("internal error: the pin plan does not fit the cache arena");
    } catch (const std::exception& ex) {
      fail(id, ex.what());
      throw Error(error_);
    }
    entries_[id].state = State::filling;
    if (!fill(id, lock, true)) throw Error(error_);
  }
}

void DeviceCache::throw_if_failed() const {
  if (!error_.empty()) throw Error(error_);
}

// Keeps the first failure; the entry goes back to absent and its memory back to the arena.
void DeviceCache::fail(uint32_t id, const std::string& what) {
  if (error_.empty())
    error_ = fmt::format("loading weight {} ({}) into the cache: {}", id,
                         schedule_.weights[id].name, what);
  entries_[id].state = State::absent;
  changed_.notify_all();
}

// Under lru any released, non-pinned entry; the prefetcher (take_fresh false) spares entries
// fetched for a use still to come. Among those: least recently used; among fresh ones (a miss
// that found nothing else): the one whose use comes last from the compute's position.
int64_t DeviceCache::victim(bool take_fresh) const {
  const size_t n = entries_.size();
  int64_t best = -1, best_fresh = -1;
  for (size_t i = 0; i < n; ++i) {
    const Entry& e = entries_[i];
    if (e.state != State::ready || e.readers || e.pinned) continue;
    if (!e.fresh) {
      if (best < 0 || e.last_use < entries_[size_t(best)].last_use) best = int64_t(i);
    } else if (take_fresh) {
      const auto ahead = [&](size_t j) { return (j + n - cursor_) % n; };
      if (best_fresh < 0 || ahead(i) > ahead(size_t(best_fresh))) best_fresh = int64_t(i);
    }
  }
  return best >= 0 ? best : best_fresh;
}

void DeviceCache::evict(uint32_t id) {
  Entry& e = entries_[id];
  if (holds_all_ || e.pinned)  // they signalled no last use: reuse could overwrite a reader
    throw Error(
        fmt::format("internal error: cache entry {} evicted, which it never should be", id));
  backend_.wait_last_use(id);  // the copy side waits for the last reader before reusing
  backend_.evicted(arena_.get() + e.offset, schedule_.arena_bytes(id));
  allocator_.free(e.offset, schedule_.arena_bytes(id));
  e.state = State::absent;
  e.fresh = false;
  ++stats_.evictions;
  if (config_.on_evict) config_.on_evict(id);
}

// Finds room for `id`, evicting as the policy says; false when nothing more can be evicted.
// Throws when the backend fails the placement (injected fault).
bool DeviceCache::place(uint32_t id, bool take_fresh) {
  const uint64_t bytes = schedule_.arena_bytes(id);
  for (;;) {
    if (const auto offset = allocator_.allocate(bytes)) {
      try {
        backend_.place(bytes, "a cache entry");
      } catch (...) {
        allocator_.free(*offset, bytes);
        throw;
      }
      entries_[id].offset = *offset;
      stats_.high_water = std::max(stats_.high_water, allocator_.used());
      return true;
    }
    const int64_t v = victim(take_fresh);
    if (v < 0) return false;
    evict(uint32_t(v));
  }
}

// Writes the bytes of a placed entry (state filling) with the lock released; true when they are
// ready. On failure the entry is absent again, its memory free, and the error kept.
bool DeviceCache::fill(uint32_t id, Lock& lock, bool preload) {
  Entry& e = entries_[id];
  uint8_t* dst = arena_.get() + e.offset;
  std::string failure;
  lock.unlock();
  try {
    fill_(id, dst);
    backend_.record_ready(id);
  } catch (const std::exception& ex) {
    failure = ex.what();
  }
  lock.lock();
  if (!failure.empty()) {
    allocator_.free(e.offset, schedule_.arena_bytes(id));
    fail(id, failure);
    return false;
  }
  e.state = State::ready;
  e.fresh = !preload;
  (preload ? stats_.preloaded_bytes : stats_.uploaded_bytes) += schedule_.weights[id].bytes;
  stats_.uploads += !preload;
  changed_.notify_all();
  return true;
}

void DeviceCache::prefetch_loop() {
  for (;;) {
    uint32_t id = kStop;
    requests_.wait_dequeue(id);
    Lock lock(mu_);
    if (stop_ || id == kStop) return;
    if (entries_[id].state != State::queued) continue;  // fetched by a miss meanwhile
    if (!error_.empty()) {
      entries_[id].state = State::absent;
      continue;
    }
    try {
      prefetch(id, lock);
    } catch (const std::exception& ex) {  // nothing may escape a thread: keep it for acquire
      fail(id, ex.what());
    }
  }
}

// Waits for room without holding anything (so the compute, which never waits for a queued entry,
// cannot be blocked by it), then fills. Gives the entry up if the compute fetched it meanwhile.
void DeviceCache::prefetch(uint32_t id, Lock& lock) {
  Entry& e = entries_[id];
  try {
    while (!place(id, false)) {
      changed_.wait(lock);
      if (stop_ || e.state != State::queued) return;
    }
  } catch (const std::exception& ex) {
    fail(id, ex.what());
    return;
  }
  e.state = State::filling;
  prefetching_ = id;
  fill(id, lock, false);
  prefetching_ = -1;
  changed_.notify_all();
}

void DeviceCache::request_ahead(uint32_t id) {
  const uint32_t n = uint32_t(entries_.size());
  for (uint32_t k = 1; k <= config_.lookahead && k < n; ++k) {
    const uint32_t next = (id + k) % n;
    if (entries_[next].state != State::absent) continue;
    entries_[next].state = State::queued;
    requests_.enqueue(next);
  }
}

// A miss: the compute thread places and fills the entry itself. It may evict entries fetched
// ahead, and waits only for the prefetcher's fill in progress, which ends on its own; if even
// then there is no room, the entries the caller holds take it, which no wait can change.
void DeviceCache::fetch_now(uint32_t id, Lock& lock) {
  Entry& e = entries_[id];
  e.state = State::filling;  // the prefetcher skips it from now on
  for (;;) {
    bool placed = false;
    try {
      placed = place(id, true);
    } catch (const std::exception& ex) {
      fail(id, ex.what());
      throw Error(error_);
    }
    if (placed) break;
    if (prefetching_ < 0) {
      e.state = State::absent;
      throw Error(
          Setting::cache_budget,
          fmt::format(
              "weight {} ({}, {}) does not fit the cache beside the weights the caller holds; "
              "raise the cache budget",
              id, schedule_.weights[id].name, human_bytes(double(schedule_.weights[id].bytes))));
    }
    changed_.wait(lock);
  }
  if (!fill(id, lock, false)) throw Error(error_);
}

// Never evicted: every entry under lru with the whole model in the budget (holds_all_), or a
// pinned one. The entries are checked under the lock, their fills on the backend outside it (a
// GPU event query each: ~300 for Qwen2-7B, once); after the first true answer one atomic load.
bool DeviceCache::resident() {
  if (resident_.load(std::memory_order_acquire)) return true;
  {
    Lock lock(mu_);
    throw_if_failed();
    for (const Entry& e : entries_)
      if (e.state != State::ready || !(holds_all_ || e.pinned)) return false;
  }
  for (uint32_t id = 0; id < entries_.size(); ++id)
    if (!backend_.ready_now(id)) return false;
  resident_.store(true, std::memory_order_release);
  return true;
}

bool DeviceCache::can_hold(std::span<const uint32_t> ids) const {
  if (whole_fits_) return true;
  // Under lru nothing is pinned (plan_ is empty); the pinned flags are set at load only.
  const uint64_t pinned = plan_.pinned_bytes;
  uint64_t largest = 0, count = 0;
  for (uint32_t id : ids) {
    if (id >= entries_.size()) return false;
    if (entries_[id].pinned) continue;
    largest = std::max(largest, schedule_.arena_bytes(id));
    ++count;
  }
  return count == 0 ||
         (pinned <= arena_bytes_ && arena_bytes_ - pinned >= (2 * count - 1) * largest);
}

const uint8_t* DeviceCache::acquire(uint32_t id) {
  if (id >= entries_.size())
    throw Error(fmt::format("weight id {} is not in the cache's schedule of {} weights", id,
                            entries_.size()));
  Lock lock(mu_);
  throw_if_failed();
  Entry& e = entries_[id];
  cursor_ = id;
  request_ahead(id);  // first, so that the prefetcher works while this one is waited for
  const bool hit = e.state == State::ready && !e.fresh;
  bool miss = false;
  if (e.state != State::ready) {
    const auto t0 = std::chrono::steady_clock::now();
    while (e.state != State::ready) {
      if (e.state == State::absent || e.state == State::queued) {
        miss = true;
        fetch_now(id, lock);
      } else {
        changed_.wait(lock);
        throw_if_failed();
      }
    }
    stats_.wait_seconds += seconds_since(t0);
  }
  const uint64_t bytes = schedule_.weights[id].bytes;
  ++stats_.acquires;
  stats_.acquired_bytes += bytes;
  stats_.hits += hit;
  stats_.hit_bytes += hit ? bytes : 0;
  stats_.misses += miss;
  stats_.prefetched += !hit && !miss;
  ++e.readers;
  e.fresh = false;
  e.last_use = ++clock_;
  const uint64_t offset = e.offset;
  lock.unlock();
  try {
    backend_.wait_ready(id);
  } catch (...) {  // not acquired after all: a reader left behind could never be evicted
    std::lock_guard relock(mu_);
    --e.readers;
    changed_.notify_all();
    throw;
  }
  return arena_.get() + offset;
}

void DeviceCache::release(uint32_t id) {
  if (id >= entries_.size()) throw Error(fmt::format("release of unknown weight id {}", id));
  if (!holds_all_ && !entries_[id].pinned) backend_.record_last_use(id);  // pinned: set at load
  Lock lock(mu_);
  Entry& e = entries_[id];
  if (e.readers == 0)
    throw Error(fmt::format("internal error: weight {} released without an acquire", id));
  --e.readers;
  e.last_use = ++clock_;
  if (config_.policy == CachePolicy::pin && !e.pinned && e.readers == 0)
    evict(id);  // streamed: its ring space goes to the weights that follow
  changed_.notify_all();
}

void DeviceCache::settle() {
  Lock lock(mu_);
  for (Entry& e : entries_)
    if (e.state == State::queued) e.state = State::absent;  // the prefetcher skips it now
  changed_.notify_all();  // a prefetch waiting for room sees its entry given up
  changed_.wait(lock, [&] { return prefetching_ < 0; });
}

CacheStats DeviceCache::stats() const {
  std::lock_guard lock(mu_);
  CacheStats s = stats_;
  s.resident_bytes = allocator_.used();
  s.device_wait_seconds = backend_.device_wait_seconds();
  s.wait_seconds += s.device_wait_seconds;
  return s;
}

}  // namespace ferry
