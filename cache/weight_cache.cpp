#include "cache/weight_cache.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

#include <fmt/format.h>

#include "quantizer/atomic_file.hpp"
#include "quantizer/error.hpp"

namespace ferry {
namespace {

constexpr uint64_t kAlign = 64;  // cache line; AVX loads of an entry never split one
constexpr uint32_t kStop = ~0u;

uint64_t aligned(uint64_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

}  // namespace

uint64_t WeightCache::minimum_budget(const std::vector<uint64_t>& sizes) {
  return sizes.empty() ? 0 : aligned(*std::max_element(sizes.begin(), sizes.end()));
}

WeightCache::WeightCache(std::vector<uint64_t> sizes, std::vector<uint32_t> layers, uint64_t budget,
                         CachePolicy policy, uint32_t lookahead, FillFn fill)
    : sizes_(std::move(sizes)),
      layers_(std::move(layers)),
      budget_(budget),
      policy_(policy),
      lookahead_(lookahead),
      fill_(std::move(fill)),
      entries_(sizes_.size()) {
  const uint64_t minimum = minimum_budget(sizes_);
  if (budget_ < minimum)
    throw Error(fmt::format(
        "cache budget {} is below the minimum of {} (the largest weight must fit); raise "
        "--cache-budget",
        human_bytes(budget_), human_bytes(minimum)));
  arena_.reset(new uint8_t[budget_ + kAlign]);  // the only allocation of the cache's memory
  base_ = reinterpret_cast<uint8_t*>(aligned(reinterpret_cast<uintptr_t>(arena_.get())));
  free_[0] = budget_ / kAlign * kAlign;
  stats_.budget = budget_;
  if (policy_ == CachePolicy::pin) choose_pinned();
  thread_ = std::thread([this] { prefetch_loop(); });
  if (policy_ == CachePolicy::pin) {  // load the resident set now, contiguous from offset 0
    std::unique_lock lock(mu_);
    for (uint32_t id = 0; id < entries_.size(); ++id)
      if (entries_[id].pinned) fill_entry(id, lock, true);
    if (!error_.empty()) throw Error(error_);
  }
}

WeightCache::~WeightCache() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  requests_.enqueue(kStop);
  thread_.join();
}

// Pin: after reserving one slot of the largest weight for streaming (prefetches ahead use what
// else is free), each layer keeps the same fraction of its bytes resident, weights taken in
// schedule order, so that streaming is spread over the whole pass instead of bunched at its end.
// Reserving lookahead + 1 slots instead left nothing to pin at 75% of qwen2-small, whose lm_head
// (27% of the weights) sets the slot size.
void WeightCache::choose_pinned() {
  const uint64_t largest = minimum_budget(sizes_);
  const uint64_t total = std::accumulate(sizes_.begin(), sizes_.end(), uint64_t(0),
                                         [](uint64_t a, uint64_t b) { return a + aligned(b); });
  if (total <= budget_) {
    for (Entry& e : entries_) e.pinned = true;
  } else {
    const uint64_t room = budget_ - largest;
    const double fraction = double(room) / double(total);
    std::map<uint32_t, uint64_t> layer_total, layer_pinned;
    for (size_t i = 0; i < sizes_.size(); ++i) layer_total[layers_[i]] += aligned(sizes_[i]);
    uint64_t pinned = 0;
    for (size_t i = 0; i < sizes_.size(); ++i) {
      const uint64_t s = aligned(sizes_[i]);
      if (pinned + s > room || double(layer_pinned[layers_[i]] + s) >
                                   fraction * double(layer_total[layers_[i]]) + double(largest) / 2)
        continue;
      entries_[i].pinned = true;
      layer_pinned[layers_[i]] += s;
      pinned += s;
    }
  }
  for (size_t i = 0; i < sizes_.size(); ++i)
    if (entries_[i].pinned) stats_.pinned_bytes += aligned(sizes_[i]);
}

std::vector<bool> WeightCache::pinned() const {
  std::vector<bool> p;
  for (const Entry& e : entries_) p.push_back(e.pinned);
  return p;
}

uint64_t WeightCache::take_range(uint64_t size) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < size) continue;
    const uint64_t offset = it->first, left = it->second - size;
    free_.erase(it);
    if (left) free_[offset + size] = left;
    return offset;
  }
  return ~0ull;
}

void WeightCache::free_range(uint64_t offset, uint64_t size) {
  auto it = free_.emplace(offset, size).first;
  if (auto next = std::next(it); next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
    }
  }
}

// Evicts the least recently used entry that is ready, not in use, not pinned and already used
// since it was filled (a prefetched entry waiting for its first use is kept, unless
// unconsumed_too: a synchronous fetch must not wait for space behind the prefetcher).
bool WeightCache::evict_one(bool unconsumed_too) {
  int64_t victim = -1;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (e.state != State::ready || e.in_use || e.pinned) continue;
    if (!e.used_since_fill && !unconsumed_too) continue;
    if (victim < 0 || e.last_use < entries_[size_t(victim)].last_use) victim = int64_t(i);
  }
  if (victim < 0) return false;
  Entry& e = entries_[size_t(victim)];
  free_range(e.offset, aligned(sizes_[size_t(victim)]));
  allocated_ -= aligned(sizes_[size_t(victim)]);
  e.state = State::absent;
  ++stats_.evictions;
  return true;
}

bool WeightCache::allocate(uint32_t id, bool unconsumed_too) {
  const uint64_t size = aligned(sizes_[id]);
  for (;;) {
    if (const uint64_t off = take_range(size); off != ~0ull) {
      entries_[id].offset = off;
      allocated_ += size;
      stats_.high_water = std::max(stats_.high_water, allocated_);
      return true;
    }
    if (!evict_one(unconsumed_too)) return false;
  }
}

// Places and fills entry `id`; the lock is released while the bytes are written.
void WeightCache::fill_entry(uint32_t id, std::unique_lock<std::mutex>& lock, bool on_demand) {
  Entry& e = entries_[id];
  e.state = State::filling;
  while (!allocate(id, on_demand)) {
    changed_.wait(lock);  // for a release: the space is held by entries in use
    if (stop_) {
      e.state = State::absent;
      return;
    }
  }
  lock.unlock();
  std::string failure;
  try {
    fill_(id, base_ + e.offset);
  } catch (const std::exception& ex) {
    failure = ex.what();
  }
  lock.lock();
  if (!failure.empty()) {
    if (error_.empty()) error_ = "filling weight " + std::to_string(id) + ": " + failure;
    free_range(e.offset, aligned(sizes_[id]));
    allocated_ -= aligned(sizes_[id]);
    e.state = State::absent;
  } else {
    e.state = State::ready;
    e.used_since_fill = false;
    ++stats_.uploads;
    stats_.uploaded_bytes += sizes_[id];
  }
  changed_.notify_all();
}

void WeightCache::prefetch_loop() {
  for (;;) {
    uint32_t id = kStop;
    requests_.wait_dequeue(id);
    std::unique_lock lock(mu_);
    if (stop_ || id == kStop) return;
    if (entries_[id].state == State::queued && error_.empty()) fill_entry(id, lock, false);
  }
}

// Asks for the `lookahead` ids after `id` in the cyclic schedule that are not resident or on
// their way.
void WeightCache::request_ahead(uint32_t id) {
  const size_t n = entries_.size();
  for (uint32_t k = 1; k <= lookahead_ && k < n; ++k) {
    const uint32_t next = uint32_t((id + k) % n);
    if (entries_[next].state != State::absent) continue;
    entries_[next].state = State::queued;
    requests_.enqueue(next);
  }
}

const uint8_t* WeightCache::acquire(uint32_t id) {
  std::unique_lock lock(mu_);
  if (id >= entries_.size()) throw Error("weight id " + std::to_string(id) + " is not scheduled");
  if (!error_.empty()) throw Error(error_);
  Entry& e = entries_[id];
  ++stats_.acquires;
  const bool hit = e.state == State::ready && e.used_since_fill;
  if (e.state == State::absent) {  // nobody asked for it: fetch it here, now
    ++stats_.sync_fetches;
    fill_entry(id, lock, true);
  }
  request_ahead(id);
  const auto t0 = std::chrono::steady_clock::now();
  changed_.wait(lock, [&] { return e.state == State::ready || !error_.empty() || stop_; });
  stats_.wait_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!error_.empty()) throw Error(error_);
  stats_.hits += hit;
  e.in_use = true;
  e.used_since_fill = true;
  e.last_use = ++clock_;
  return base_ + e.offset;
}

void WeightCache::release(uint32_t id) {
  std::lock_guard lock(mu_);
  Entry& e = entries_.at(id);
  e.in_use = false;
  e.last_use = ++clock_;
  if (policy_ == CachePolicy::pin && !e.pinned) {  // streamed: its slot goes to the next one
    free_range(e.offset, aligned(sizes_[id]));
    allocated_ -= aligned(sizes_[id]);
    e.state = State::absent;
    ++stats_.evictions;
  }
  changed_.notify_all();
}

CacheStats WeightCache::stats() const {
  std::lock_guard lock(mu_);
  CacheStats s = stats_;
  s.resident_bytes = allocated_;
  return s;
}

}  // namespace ferry
