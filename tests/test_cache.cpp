// The paging core on the CPU backend, without a model: the arena allocator, the pin plan, the
// eviction order of each policy on hand-built schedules, the budget never exceeded under random
// schedules and access orders, errors and injected faults on the prefetch thread reaching the
// caller, prompt shutdown, the backend's signal checks and the host weight store.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "base/error.hpp"
#include "cache/arena.hpp"
#include "cache/backend_cpu.hpp"
#include "cache/device_cache.hpp"
#include "cache/host_store.hpp"
#include "cache/pin_plan.hpp"
#include "format/packed_file.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

Schedule make_schedule(const std::vector<uint64_t>& sizes, const std::vector<uint32_t>& layers) {
  Schedule s;
  for (size_t i = 0; i < sizes.size(); ++i)
    s.weights.push_back({sizes[i], layers.empty() ? 0 : layers[i], "w" + std::to_string(i)});
  return s;
}

// Fills weight `id` with the byte id + 1, so that a reader can tell whose bytes it got.
FillFn pattern_fill(const Schedule& s) {
  return [&s](uint32_t id, uint8_t* dst) { std::memset(dst, int(id + 1), s.weights[id].bytes); };
}

bool holds_pattern(const uint8_t* p, uint32_t id, uint64_t bytes) {
  for (uint64_t i = 0; i < bytes; ++i)
    if (p[i] != uint8_t(id + 1)) return false;
  return true;
}

// Acquires, checks and releases every weight in schedule order, `passes` times.
void run_passes(DeviceCache& c, int passes) {
  const Schedule& s = c.schedule();
  for (int pass = 0; pass < passes; ++pass)
    for (uint32_t id = 0; id < s.size(); ++id) {
      const uint8_t* p = c.acquire(id);
      ASSERT_TRUE(holds_pattern(p, id, s.weights[id].bytes)) << "weight " << id;
      c.release(id);
    }
}

CacheConfig config(uint64_t budget, CachePolicy policy, uint32_t lookahead,
                   std::vector<uint32_t>* evicted = nullptr) {
  CacheConfig c{.budget = budget, .policy = policy, .lookahead = lookahead, .on_evict = {}};
  if (evicted) c.on_evict = [evicted](uint32_t id) { evicted->push_back(id); };
  return c;
}

std::vector<uint32_t> repeat(const std::vector<uint32_t>& v, int times) {
  std::vector<uint32_t> out;
  for (int i = 0; i < times; ++i) out.insert(out.end(), v.begin(), v.end());
  return out;
}

// --- arena, schedule, pin plan -------------------------------------------------------------

TEST(CacheArena, FirstFitCoalescesNeighboursOnFree) {
  ArenaAllocator a(1000, 8);
  EXPECT_EQ(a.allocate(300), 0u);
  EXPECT_EQ(a.allocate(300), 300u);
  EXPECT_EQ(a.allocate(300), 600u);
  EXPECT_EQ(a.allocate(200), std::nullopt);  // 100 left
  a.free(300, 300);
  EXPECT_EQ(a.allocate(200), 300u);  // the first range that fits: the hole, not the tail
  a.free(0, 300);                    // [0, 300) and the hole's rest [500, 600) are not adjacent
  EXPECT_EQ(a.allocate(350), std::nullopt);
  a.free(300, 200);  // joins [0, 300) and [500, 600): one range of 600
  EXPECT_EQ(a.used(), 300u);
  EXPECT_EQ(a.allocate(600), 0u);
  EXPECT_EQ(a.allocate(100), 900u);
  EXPECT_EQ(a.used(), 1000u);
  EXPECT_THROW(a.free(0, 2000), Error);
}

TEST(CacheSchedule, MinimumIsTheLargestWeightAligned) {
  const Schedule s = make_schedule({1000, 5000, 300}, {});
  EXPECT_EQ(s.minimum_budget(), 5120u);  // 5000 rounded up to 256
  EXPECT_EQ(s.whole_bytes(), 1024u + 5120u + 512u);
  EXPECT_EQ(s.largest(), 1u);
}

TEST(CachePinPlan, EverythingPinnedWhenTheModelFits) {
  const Schedule s = make_schedule({256, 512, 256}, {0, 0, 1});
  const PinPlan p = plan_pin(s, 1024, 2);
  EXPECT_EQ(p.pinned, (std::vector<bool>{true, true, true}));
  EXPECT_EQ(p.ring_bytes, 0u);
}

TEST(CachePinPlan, SpreadsEvenlyAndPinsWhatIsLargerThanTheRingSlot) {
  // 4 layers of 7 weights of 256 bytes and an lm_head of 4096: pinning lm_head and streaming
  // through two 256-byte slots pins far more than a ring of two lm_head-sized slots could.
  std::vector<uint64_t> sizes;
  std::vector<uint32_t> layers;
  for (uint32_t l = 0; l < 4; ++l)
    for (int k = 0; k < 7; ++k) sizes.push_back(256), layers.push_back(l);
  sizes.push_back(4096), layers.push_back(4);
  const Schedule s = make_schedule(sizes, layers);
  const uint64_t arena = 4096 + 512 + 14 * 256;  // lm_head, 2 slots, half the rest
  const PinPlan p = plan_pin(s, arena, 2);
  EXPECT_TRUE(p.pinned.back());
  EXPECT_EQ(p.slot_bytes, 256u);
  EXPECT_EQ(p.ring_slots, 2u);
  EXPECT_EQ(p.pinned_bytes, 4096u + 14 * 256);
  for (uint32_t l = 0; l < 4; ++l) {  // each layer keeps 3 or 4 of its 7
    int n = 0;
    for (int k = 0; k < 7; ++k) n += p.pinned[l * 7 + k];
    EXPECT_GE(n, 3) << "layer " << l;
    EXPECT_LE(n, 4) << "layer " << l;
  }
  // Below lm_head plus two slots only one slot is left, and then only lm_head-sized slots fit.
  const PinPlan tight = plan_pin(s, 4096 + 256, 2);
  EXPECT_EQ(tight.ring_slots, 1u);
  EXPECT_GE(tight.ring_bytes, tight.slot_bytes);
}

TEST(CachePinPlan, RandomSchedulesFitTheArena) {
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    const size_t n = 1 + rng() % 40;
    std::vector<uint64_t> sizes(n);
    std::vector<uint32_t> layers(n);
    for (size_t i = 0; i < n; ++i) sizes[i] = 1 + rng() % 9000, layers[i] = uint32_t(i / 7);
    const Schedule s = make_schedule(sizes, layers);
    const uint64_t arena = s.minimum_budget() + rng() % (s.whole_bytes() + 1);
    const PinPlan p = plan_pin(s, arena, 1 + rng() % 2);
    ASSERT_EQ(p.pinned.size(), n);
    uint64_t pinned = 0, largest_streamed = 0;
    for (uint32_t id = 0; id < n; ++id)
      p.pinned[id] ? void(pinned += s.arena_bytes(id))
                   : void(largest_streamed = std::max(largest_streamed, s.arena_bytes(id)));
    ASSERT_EQ(pinned, p.pinned_bytes) << "round " << round;
    ASSERT_LE(pinned + largest_streamed, arena) << "round " << round;
  }
}

// --- eviction order -------------------------------------------------------------------------

TEST(CacheEviction, LruEvictsExactlyWhatTheCyclicScheduleNeedsNext) {
  const Schedule s = make_schedule(std::vector<uint64_t>(4, 256), {0, 0, 1, 1});
  for (uint32_t lookahead : {0u, 1u}) {
    std::vector<uint32_t> evicted;
    CacheStats st;
    {
      CpuBackend b;
      DeviceCache c(b, s, config(512, CachePolicy::lru, lookahead, &evicted), pattern_fill(s));
      run_passes(c, 3);
      st = c.stats();
    }  // joined: the prefetch of the next pass's first weight may have evicted one more
    evicted.resize(std::min<size_t>(evicted.size(), 10));
    // Two slots: each fill evicts the weight used longest ago, which the cycle needs soonest.
    EXPECT_EQ(evicted, (std::vector<uint32_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1}))
        << "lookahead " << lookahead;
    EXPECT_EQ(st.acquires, 12u);
    EXPECT_EQ(st.hits, 0u);
    EXPECT_GE(st.uploads, 12u);
    EXPECT_EQ(st.hits + st.prefetched + st.misses, st.acquires);
    if (lookahead == 0) {
      EXPECT_EQ(st.misses, 12u);  // nobody fetches ahead
    }
  }
}

TEST(CacheEviction, LruKeepsTheRecentlyUsedOutOfScheduleOrder) {
  const Schedule s = make_schedule(std::vector<uint64_t>(4, 256), {});
  CpuBackend b;
  std::vector<uint32_t> evicted;
  DeviceCache c(b, s, config(512, CachePolicy::lru, 0, &evicted), pattern_fill(s));
  for (uint32_t id : {0u, 1u, 0u, 2u, 0u, 3u, 2u, 1u}) c.release((c.acquire(id), id));
  // 2 evicts 1 (0 was used since), 3 evicts 2, 2 evicts 0, 1 evicts 3.
  EXPECT_EQ(evicted, (std::vector<uint32_t>{1, 2, 0, 3}));
  EXPECT_EQ(c.stats().hits, 2u);  // the second and third use of 0
}

TEST(CacheEviction, PinKeepsItsResidentSetAndStreamsTheRestInOrder) {
  const Schedule s = make_schedule(std::vector<uint64_t>(6, 256), {0, 0, 0, 1, 1, 1});
  struct Case {
    uint32_t lookahead;
    std::vector<bool> pinned;
    std::vector<uint32_t> streamed;
  };
  // Budget of 4 entries. Lookahead 0: one ring slot, 3 pinned, every other weight. Lookahead 1:
  // two ring slots (one filled while the other is read), 2 pinned, one per layer.
  for (const Case& k : {Case{0, {true, false, true, false, true, false}, {1, 3, 5}},
                        Case{1, {false, true, false, false, true, false}, {0, 2, 3, 5}}}) {
    std::vector<uint32_t> evicted;
    CacheStats st;
    {
      CpuBackend b;
      DeviceCache c(b, s, config(1024, CachePolicy::pin, k.lookahead, &evicted), pattern_fill(s));
      EXPECT_EQ(c.pin_plan().pinned, k.pinned) << "lookahead " << k.lookahead;
      run_passes(c, 3);
      st = c.stats();
    }
    // Streamed weights leave at their release, so the prefetches of the next pass evict nothing.
    EXPECT_EQ(evicted, repeat(k.streamed, 3)) << "lookahead " << k.lookahead;
    EXPECT_EQ(st.hits, 3 * (6 - k.streamed.size()));  // the pinned ones, every pass
    EXPECT_GE(st.uploads, 3 * k.streamed.size());
    EXPECT_LE(st.uploads, 3 * k.streamed.size() + 1);  // + the next pass's first, fetched ahead
    EXPECT_EQ(st.preloaded_bytes, 256 * (6 - k.streamed.size()));
    EXPECT_LE(st.high_water, 1024u);
  }
}

TEST(CacheEviction, BudgetBelowTheLargestWeightStatesTheMinimum) {
  const Schedule s = make_schedule({1000, 5000, 300}, {});
  CpuBackend b;
  try {
    DeviceCache c(b, s, config(4000, CachePolicy::lru, 1), pattern_fill(s));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("minimum of 5.12 KB (5120 bytes)"), std::string::npos) << m;
    EXPECT_NE(m.find("w1"), std::string::npos) << m;  // the weight that sets it
    EXPECT_NE(m.find("raise it to at least 5.12 KB"), std::string::npos) << m;
    EXPECT_EQ(e.setting, Setting::cache_budget);  // the CLI names its option for it
  }
  EXPECT_NO_THROW(DeviceCache(b, s, config(5120, CachePolicy::pin, 2), pattern_fill(s)));
}

// --- the budget holds under random schedules ---------------------------------------------------

// A random schedule of at least `min_weights` weights of 1 to 5000 bytes, 7 to a layer, and a
// budget from its minimum to past the whole model, under a random policy.
struct RandomCase {
  std::vector<uint64_t> sizes;
  Schedule s;
  uint64_t budget;
  CachePolicy policy;
};

RandomCase random_case(std::mt19937& rng, size_t min_weights) {
  const size_t n = min_weights + rng() % 30;
  std::vector<uint64_t> sizes(n);
  std::vector<uint32_t> layers(n);
  for (size_t i = 0; i < n; ++i) sizes[i] = 1 + rng() % 5000, layers[i] = uint32_t(i / 7);
  Schedule s = make_schedule(sizes, layers);
  const uint64_t budget = s.minimum_budget() + rng() % (s.whole_bytes() + 256 * n);
  const auto policy = rng() % 2 ? CachePolicy::pin : CachePolicy::lru;
  return {std::move(sizes), std::move(s), budget, policy};
}

TEST(CacheProperty, RandomSchedulesAndBudgetsNeverExceedTheBudget) {
  std::mt19937 rng(42);
  for (int round = 0; round < 300; ++round) {
    const auto [sizes, s, budget, policy] = random_case(rng, 2);
    const size_t n = sizes.size();
    CpuBackend b;
    DeviceCache c(b, s, config(budget, policy, uint32_t(rng() % 5)), pattern_fill(s));
    // Mostly the schedule's order, with jumps: a jump is a use nobody fetched ahead.
    uint32_t id = 0;
    for (int use = 0; use < int(3 * n); ++use) {
      id = rng() % 5 == 0 ? uint32_t(rng() % n) : (id + 1) % uint32_t(n);
      const uint8_t* p = c.acquire(id);
      ASSERT_TRUE(holds_pattern(p, id, sizes[id])) << "round " << round << " use " << use;
      std::this_thread::yield();  // let the prefetcher run while the entry is held
      ASSERT_TRUE(holds_pattern(p, id, sizes[id])) << "overwritten while held, round " << round;
      c.release(id);
    }
    const CacheStats st = c.stats();
    ASSERT_LE(st.high_water, budget) << "round " << round;
    ASSERT_LE(st.resident_bytes, st.arena_bytes) << "round " << round;
    ASSERT_EQ(st.hits + st.prefetched + st.misses, st.acquires) << "round " << round;
  }
}

// can_hold is the CPU pass's licence to hold q/k/v (or gate/up) at once: whenever it says yes,
// acquiring the group in order must succeed, whatever the arena held before, under both policies;
// it says yes when the model fits and no where the arena takes one weight only.
TEST(CacheProperty, GroupsThatCanHoldAreAcquiredTogether) {
  std::mt19937 rng(7);
  int held_groups = 0, streamed = 0;  // streamed: groups held below the whole model's budget
  for (int round = 0; round < 200; ++round) {
    const auto [sizes, s, budget, policy] = random_case(rng, 3);
    const size_t n = sizes.size();
    CpuBackend b;
    DeviceCache c(b, s, config(budget, policy, uint32_t(rng() % 3)), pattern_fill(s));
    if (budget >= s.whole_bytes()) {
      const std::vector<uint32_t> all = {0, 1, 2};
      EXPECT_TRUE(c.can_hold(all)) << "round " << round;
    }
    for (uint32_t id = 0; id < 3 * n;) {  // passes in schedule order, in groups of 1 to 3
      const uint32_t first = id % uint32_t(n), g = std::min<uint32_t>(1 + rng() % 3, n - first);
      std::vector<uint32_t> ids(g);
      for (uint32_t i = 0; i < g; ++i) ids[i] = first + i;
      const bool together = c.can_hold(ids);
      held_groups += together && g > 1;
      streamed += together && g > 1 && budget < s.whole_bytes();
      for (uint32_t i = 0; i < g; ++i) {
        const uint32_t w = ids[i];
        const uint8_t* p = nullptr;
        ASSERT_NO_THROW(p = c.acquire(w)) << "round " << round << " weight " << w;
        ASSERT_TRUE(holds_pattern(p, w, sizes[w])) << "round " << round;
        if (!together) c.release(w);
      }
      if (together)
        for (uint32_t w : ids) c.release(w);
      id += g;
    }
  }
  EXPECT_GT(held_groups, 100);  // the property was exercised,
  EXPECT_GT(streamed, 20);      // also where entries are evicted
  const Schedule s = make_schedule(std::vector<uint64_t>(4, 1024), {});
  CpuBackend b;
  DeviceCache one(b, s, config(s.minimum_budget(), CachePolicy::lru, 1), pattern_fill(s));
  const std::vector<uint32_t> pair = {0, 1}, single = {2};
  EXPECT_FALSE(one.can_hold(pair));
  EXPECT_TRUE(one.can_hold(single));
}

// --- errors, faults, shutdown ---------------------------------------------------------------

TEST(CacheErrors, AFillErrorOnThePrefetchThreadReachesTheCaller) {
  const Schedule s = make_schedule(std::vector<uint64_t>(6, 256), {});
  std::atomic<bool> attempted{false}, on_prefetch_thread{false};
  const auto caller = std::this_thread::get_id();
  auto fill = [&](uint32_t id, uint8_t* dst) {
    if (id == 3) {
      on_prefetch_thread = std::this_thread::get_id() != caller;
      attempted = true;
      throw Error("injected read failure");
    }
    std::memset(dst, int(id + 1), 256);
  };
  CpuBackend b;
  DeviceCache c(b, s, config(1024, CachePolicy::lru, 2), fill);
  std::string error;
  try {
    // acquire(1) requests 2 and 3; wait (up to 10 s) for the prefetcher to try 3, or the compute
    // could reach 3 first and fetch it itself, and the failure would not be the prefetcher's.
    for (uint32_t id = 0; id < 2; ++id) c.release((c.acquire(id), id));
    for (int i = 0; i < 10000 && !attempted; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (uint32_t id = 2; id < 6; ++id) c.release((c.acquire(id), id));
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("injected read failure"), std::string::npos) << error;
  EXPECT_NE(error.find("weight 3 (w3)"), std::string::npos) << error;
  EXPECT_TRUE(on_prefetch_thread.load());
  EXPECT_THROW(c.acquire(0), Error);  // and it stays: the caller never waits on a dead cache
}

// The backend's injected faults, N-th transfer and N-th allocation, for a sweep of N: each
// reaches the caller as an Error (from the constructor or from acquire), never a hang. A fault in
// a prefetch for the next pass (after the last use) surfaces at that pass's first uses.
TEST(CacheErrors, InjectedFaultsForEveryNReachTheCaller) {
  const Schedule s = make_schedule({512, 256, 768, 256, 512, 256}, {0, 0, 0, 1, 1, 1});
  std::vector<uint8_t> host(1024, 0x5a);
  for (const bool transfers : {false, true})
    for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin})
      for (uint64_t n = 1; n <= 40; ++n) {
        CpuBackend b;
        transfers ? b.fail_transfer_at(n) : b.fail_allocation_at(n);
        auto fill = [&](uint32_t id, uint8_t* dst) {
          b.copy(dst, host.data(), s.weights[id].bytes);
        };
        auto count = [&] { return transfers ? b.transfers() : b.allocations(); };
        std::string error;
        uint64_t counted = 0;
        try {
          DeviceCache c(b, s, config(1280, policy, 2), fill);
          try {
            for (int pass = 0; pass < 4; ++pass)
              for (uint32_t id = 0; id < s.size(); ++id) c.release((c.acquire(id), id));
          } catch (const Error&) {
            counted = count();
            throw;
          }
          counted = count();  // what happened up to here must surface by the next pass's start
          c.release((c.acquire(0), 0));
          c.release((c.acquire(1), 1));
        } catch (const Error& e) {
          error = e.what();
          if (!counted) counted = count();
        }
        if (n > counted) continue;  // past what ran: nothing to check
        EXPECT_NE(error.find(fmt::format("injected fault at {} {}",
                                         transfers ? "transfer" : "allocation", n)),
                  std::string::npos)
            << "n " << n << ": " << error;
      }
}

TEST(CacheShutdown, DestructorDoesNotWaitForQueuedFills) {
  const Schedule s = make_schedule(std::vector<uint64_t>(8, 1024), {});
  std::atomic<int> fills{0};
  auto slow = [&](uint32_t id, uint8_t* dst) {
    ++fills;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::memset(dst, int(id + 1), 1024);
  };
  const auto t0 = Clock::now();
  {
    CpuBackend b;
    DeviceCache c(b, s, config(8192, CachePolicy::lru, 7), slow);
    c.release((c.acquire(0), 0));  // a miss (200 ms), and 7 fills queued (1.4 s)
  }
  const auto took = Clock::now() - t0;
  EXPECT_LT(took, std::chrono::milliseconds(1000));  // the miss and at most one fill
  EXPECT_LE(fills.load(), 3);
}

TEST(CacheShutdown, DestructorWakesAPrefetcherWaitingForRoom) {
  const Schedule s = make_schedule(std::vector<uint64_t>(4, 256), {});
  CpuBackend b;
  const auto t0 = Clock::now();
  {
    DeviceCache c(b, s, config(256, CachePolicy::lru, 3), pattern_fill(s));
    c.acquire(0);  // held: the arena is full, the prefetcher waits for room for weight 1
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    c.release(0);
    c.acquire(1);  // the prefetcher's or our own fill; the next ones wait behind the held 1
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }  // destroyed while holding 1 and with requests queued
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(1000));
}

TEST(CacheErrors, AWeightThatCannotFitBesideTheHeldOnesIsAnErrorNotAHang) {
  const Schedule s = make_schedule(std::vector<uint64_t>(3, 256), {});
  CpuBackend b;
  DeviceCache c(b, s, config(512, CachePolicy::lru, 0), pattern_fill(s));
  c.acquire(0);
  c.acquire(1);
  try {
    c.acquire(2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("beside the weights the caller holds"), std::string::npos)
        << e.what();
  }
  c.release(0);
  c.release(1);
  EXPECT_NO_THROW(c.release((c.acquire(2), 2)));
}

// Only an entry that may be evicted signals its last use: none when lru's arena holds the whole
// model, only the streamed ones under pin, every release when lru streams.
TEST(CacheBackendSignals, LastUseIsSignalledOnlyForEntriesThatCanBeEvicted) {
  const Schedule s = make_schedule(std::vector<uint64_t>(6, 256), {0, 0, 0, 1, 1, 1});
  struct Case {
    uint64_t budget;
    CachePolicy policy;
    uint64_t records;  // of 3 passes x 6 acquires
  };
  // pin at 4 entries, lookahead 1: 2 pinned, 4 streamed per pass (CacheEviction above).
  for (const Case& k : {Case{6 * 256, CachePolicy::lru, 0}, Case{8 * 256, CachePolicy::lru, 0},
                        Case{6 * 256, CachePolicy::pin, 0}, Case{1024, CachePolicy::pin, 3 * 4},
                        Case{512, CachePolicy::lru, 3 * 6}}) {
    CpuBackend b;
    std::vector<uint32_t> evicted;
    {
      DeviceCache c(b, s, config(k.budget, k.policy, 1, &evicted), pattern_fill(s));
      run_passes(c, 3);
    }
    EXPECT_EQ(b.last_use_records(), k.records)
        << "budget " << k.budget << " " << policy_name(k.policy);
    if (k.records == 0) {
      EXPECT_TRUE(evicted.empty());
    }
  }
}

// resident() (the CUDA pass's condition for a decode step as one graph) holds once every weight
// is filled and can never be evicted: lru with the whole model in the budget after a pass, pin
// with every weight pinned from the start (loaded at construction); never where an entry can
// still be evicted or refilled (below the whole model).
TEST(CacheBackendSignals, ResidentOnlyOnceEveryWeightIsFilledForGood) {
  const Schedule s = make_schedule(std::vector<uint64_t>(6, 256), {0, 0, 0, 1, 1, 1});
  struct Case {
    uint64_t budget;
    CachePolicy policy;
    bool before, after;  // after one acquire, after two passes
  };
  for (const Case& k :
       {Case{6 * 256, CachePolicy::lru, false, true}, Case{8 * 256, CachePolicy::lru, false, true},
        Case{6 * 256, CachePolicy::pin, true, true}, Case{1024, CachePolicy::pin, false, false},
        Case{512, CachePolicy::lru, false, false}}) {
    CpuBackend b;
    DeviceCache c(b, s, config(k.budget, k.policy, 1), pattern_fill(s));
    const std::string what = fmt::format("budget {} {}", k.budget, policy_name(k.policy));
    const uint8_t* first = c.acquire(0);  // weight 0 filled, the rest at most requested ahead
    EXPECT_EQ(c.resident(), k.before) << what;
    ASSERT_TRUE(holds_pattern(first, 0, 256));
    c.release(0);
    run_passes(c, 2);
    EXPECT_EQ(c.resident(), k.after) << what;
    EXPECT_EQ(c.resident(), k.after) << what << " (asked again)";
    if (k.after)
      EXPECT_EQ(c.stats().evictions, 0u) << what;
    else
      EXPECT_GT(c.stats().evictions, 0u) << what;
  }
}

TEST(CacheBackendSignals, CpuBackendChecksTheProtocol) {
  CpuBackend b;
  b.create_signals(2);
  EXPECT_THROW(b.wait_ready(0), Error);  // read before its copy finished
  b.record_ready(0);
  b.wait_ready(0);
  EXPECT_THROW(b.wait_last_use(0), Error);  // reused while read
  b.record_last_use(0);
  b.wait_last_use(0);
  EXPECT_THROW(b.wait_ready(0), Error);  // reused memory is not ready any more
  EXPECT_THROW(b.record_ready(2), Error);
}

// Poison: at the moment an entry is evicted (the on_evict hook runs right after, under the lock,
// before its memory can be reused) its bytes are all 0xFF; race: each last-use signal is delayed
// by delay_us (the fills here are the test's memset, not the backend's copy, whose delay
// tests/test_paging.cpp's stress test meets). Every reader still sees its own weight's pattern.
TEST(CacheStress, PoisonFillsEvictedMemoryAndRaceDelaysEachFillAndRelease) {
  const Schedule s = make_schedule(std::vector<uint64_t>(4, 256), {0, 0, 1, 1});
  CpuBackend b;
  b.set_stress({.race = true, .poison = true, .delay_us = 2000});
  std::vector<const uint8_t*> seen(s.size(), nullptr);
  std::vector<uint32_t> poisoned, evicted;
  CacheConfig cfg = config(512, CachePolicy::lru, 0);
  cfg.on_evict = [&](uint32_t id) {
    evicted.push_back(id);
    bool all_ff = true;
    for (uint64_t i = 0; i < s.weights[id].bytes; ++i) all_ff &= seen[id][i] == 0xFF;
    if (all_ff) poisoned.push_back(id);
  };
  DeviceCache c(b, s, cfg, pattern_fill(s));
  const auto t0 = Clock::now();
  for (int pass = 0; pass < 2; ++pass)
    for (uint32_t id = 0; id < s.size(); ++id) {
      const uint8_t* p = c.acquire(id);
      seen[id] = p;
      ASSERT_TRUE(holds_pattern(p, id, s.weights[id].bytes)) << "weight " << id;
      c.release(id);
    }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(evicted.size(), 6u);
  EXPECT_EQ(poisoned, evicted);
  EXPECT_GE(seconds, 8 * 0.002);  // 8 releases, each after 2 ms
}

// --- host store -----------------------------------------------------------------------------

TEST(CacheHostStore, CopiesEveryPieceAlignedAndVerifiesChecksums) {
  std::vector<std::vector<uint8_t>> data;
  std::vector<HostPiece> pieces;
  std::mt19937 rng(3);
  for (uint64_t n : {100u, 5u << 20, 7u, 3000u}) {
    data.emplace_back(n);
    for (uint8_t& x : data.back()) x = uint8_t(rng());
  }
  for (size_t i = 0; i < data.size(); ++i)
    pieces.push_back({"t" + std::to_string(i), data[i].data(), data[i].size(),
                      checksum_hex(data[i].data(), data[i].size())});
  CpuBackend b;
  uint64_t last_done = 0, last_total = 0;
  HostWeightStore store(b, pieces,
                        {.threads = 2, .verify = true, .progress = [&](auto, auto d, auto t) {
                           last_done = d, last_total = t;
                         }});
  for (size_t i = 0; i < data.size(); ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(store.piece(i)) % kEntryAlign, 0u);
    EXPECT_EQ(std::memcmp(store.piece(i), data[i].data(), data[i].size()), 0);
  }
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, 100u + (5u << 20) + 7u + 3000u);

  data[1][12345] ^= 1;  // damage one tensor
  data[3][0] ^= 1;      // and another
  try {
    HostWeightStore bad(b, pieces, {.threads = 2, .verify = true, .progress = {}});
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("t1 and 1 more tensors do not match their checksums"), std::string::npos) << m;
    EXPECT_NE(m.find("load it without checking the checksums"), std::string::npos) << m;
    EXPECT_EQ(e.setting, Setting::verify);
  }
  HostWeightStore unchecked(b, pieces, {.threads = 1, .verify = false, .progress = {}});
  EXPECT_EQ(unchecked.piece(1)[12345], data[1][12345]);

  b.fail_allocation_at(1);
  EXPECT_THROW(HostWeightStore(b, pieces, {.threads = 1, .verify = false, .progress = {}}), Error);
}

}  // namespace
}  // namespace ferry
