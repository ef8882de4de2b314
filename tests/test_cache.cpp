// The paging core on the CPU backend: eviction order of each policy on hand-built schedules, the
// budget never exceeded under random schedules, errors from the prefetch thread reaching the
// caller, clean shutdown, and logits bit-identical to the uncached run for every budget, policy
// and format on TinyStories and a synthesized Qwen2.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "cache/weight_cache.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/error.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

// Fills weight `id` with the byte id + 1 so that a reader can tell whose bytes it got.
FillFn pattern_fill(const std::vector<uint64_t>& sizes) {
  return [sizes](uint32_t id, uint8_t* dst) { std::memset(dst, int(id + 1), sizes[id]); };
}

void run_pass(WeightCache& c, const std::vector<uint64_t>& sizes) {
  for (uint32_t id = 0; id < sizes.size(); ++id) {
    const uint8_t* p = c.acquire(id);
    ASSERT_EQ(p[0], uint8_t(id + 1));
    ASSERT_EQ(p[sizes[id] - 1], uint8_t(id + 1));
    c.release(id);
  }
}

TEST(WeightCache, LruEvictsExactlyWhatTheCyclicScheduleNeedsNext) {
  const std::vector<uint64_t> sizes(4, 128);
  WeightCache c(sizes, {0, 0, 1, 1}, 256, CachePolicy::lru, 0, pattern_fill(sizes));
  for (int pass = 0; pass < 3; ++pass) run_pass(c, sizes);
  const CacheStats s = c.stats();
  EXPECT_EQ(s.acquires, 12u);
  EXPECT_EQ(s.hits, 0u);  // every weight was evicted just before its next use
  EXPECT_EQ(s.uploads, 12u);
  EXPECT_EQ(s.evictions, 10u);  // all but the first two fills evicted one
  EXPECT_LE(s.high_water, 256u);
}

TEST(WeightCache, PinKeepsItsResidentSetAndStreamsTheRest) {
  const std::vector<uint64_t> sizes(4, 128);
  // Budget 384: one slot of 128 reserved to stream (lookahead 0), two pinned, one per layer.
  WeightCache c(sizes, {0, 0, 1, 1}, 384, CachePolicy::pin, 0, pattern_fill(sizes));
  EXPECT_EQ(c.pinned(), (std::vector<bool>{true, false, true, false}));
  for (int pass = 0; pass < 3; ++pass) run_pass(c, sizes);
  const CacheStats s = c.stats();
  EXPECT_EQ(s.hits, 4u);     // the two pinned weights in passes 2 and 3
  EXPECT_EQ(s.uploads, 8u);  // 2 pinned once, 2 streamed every pass
  EXPECT_EQ(s.pinned_bytes, 256u);
  EXPECT_LE(s.high_water, 384u);
}

TEST(WeightCache, BudgetBelowTheLargestWeightIsAnErrorThatStatesTheMinimum) {
  const std::vector<uint64_t> sizes = {1000, 5000, 300};
  try {
    WeightCache c(sizes, {0, 0, 0}, 4000, CachePolicy::lru, 1, pattern_fill(sizes));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("minimum of 5.06 KB"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--cache-budget"), std::string::npos) << e.what();
  }
}

TEST(WeightCache, RandomSchedulesNeverExceedTheBudgetAndReadTheRightBytes) {
  std::mt19937 rng(42);
  for (int round = 0; round < 200; ++round) {
    const size_t n = 2 + rng() % 30;
    std::vector<uint64_t> sizes(n);
    std::vector<uint32_t> layers(n);
    uint64_t total = 0;
    for (size_t i = 0; i < n; ++i) {
      sizes[i] = 1 + rng() % 5000;
      layers[i] = uint32_t(i / 7);
      total += sizes[i];
    }
    const uint64_t minimum = WeightCache::minimum_budget(sizes);
    const uint64_t budget = minimum + rng() % (total + 64 * n);
    const auto policy = rng() % 2 ? CachePolicy::pin : CachePolicy::lru;
    WeightCache c(sizes, layers, budget, policy, uint32_t(rng() % 4), pattern_fill(sizes));
    for (int pass = 0; pass < 3; ++pass) run_pass(c, sizes);
    ASSERT_LE(c.stats().high_water, budget) << "round " << round;
  }
}

TEST(WeightCache, AnErrorOnThePrefetchThreadReachesTheCaller) {
  const std::vector<uint64_t> sizes(6, 256);
  auto fill = [&](uint32_t id, uint8_t* dst) {
    if (id == 3) throw Error("injected read failure");
    std::memset(dst, int(id + 1), sizes[id]);
  };
  WeightCache c(sizes, std::vector<uint32_t>(6, 0), 1024, CachePolicy::lru, 2, fill);
  // The failure happens on the prefetch thread, ahead of the compute; whichever acquire comes
  // after it (at the latest, that of weight 3) reports it instead of waiting forever.
  std::string error;
  try {
    for (uint32_t id = 0; id < 6; ++id) c.release((c.acquire(id), id));
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("injected read failure"), std::string::npos) << error;
  EXPECT_NE(error.find("weight 3"), std::string::npos) << error;
}

TEST(WeightCache, ShutdownWhilePrefetchingIsPrompt) {
  const std::vector<uint64_t> sizes(8, 1024);
  auto slow = [&](uint32_t id, uint8_t* dst) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::memset(dst, int(id + 1), sizes[id]);
  };
  const auto t0 = std::chrono::steady_clock::now();
  {
    WeightCache c(sizes, std::vector<uint32_t>(8, 0), 2048, CachePolicy::lru, 7, slow);
    c.release((c.acquire(0), 0));  // queues 7 slow fills; the destructor must not wait for all
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(150));
}

// --- paging invariance on real models ------------------------------------------------------

std::vector<float> logits_after(const PackedFile& f, const CacheOptions& c) {
  Engine e(PackedFile::from_mapping(f.file.mapping()),
           {.model = {}, .ctx = 32, .batch = 8, .threads = 2, .cache = c});
  const std::vector<int32_t> prompt = {1, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77};
  e.eval(prompt, 0);
  std::vector<float> out = e.state.logits;
  for (uint64_t i = 0; i < 4; ++i) {  // and a few decode steps over the paged cache
    const int32_t t = int32_t(100 + i);
    e.eval(std::span(&t, 1), prompt.size() + i);
    out.insert(out.end(), e.state.logits.begin(), e.state.logits.end());
  }
  return out;
}

// Budgets from the minimum the schedule needs (its largest weight) to the whole model.
void expect_invariant(const PackedFile& f, const std::string& name) {
  const std::vector<float> direct = logits_after(f, {});
  const ModelWeights w = bind_weights(f);
  for (CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const std::vector<uint64_t> sizes = PagedWeights::entry_sizes(w, format);
    const uint64_t minimum = WeightCache::minimum_budget(sizes);
    uint64_t total = 0;
    for (uint64_t s : sizes) total += (s + 63) / 64 * 64;
    std::vector<float> reference;  // int4: the uncached run; bf16: the whole-model cache
    if (format == CacheFormat::int4) reference = direct;
    for (double t : {1.0, 0.75, 0.5, 0.25, 0.1, 0.0})
      for (CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
        const uint64_t budget = minimum + uint64_t(t * double(total - minimum));
        const CacheOptions c{.enabled = true,
                             .budget_fraction = 0,
                             .budget_bytes = budget,
                             .policy = policy,
                             .format = format,
                             .lookahead = 2};
        const std::vector<float> got = logits_after(f, c);
        if (reference.empty()) reference = got;
        EXPECT_EQ(got, reference) << name << " format " << int(format) << " budget " << budget
                                  << " of " << total << " policy " << int(policy);
      }
  }
}

TEST(PagingInvariance, SynthesizedQwen2LogitsAreBitIdenticalForEveryBudget) {
  SynthOptions o;
  o.preset = "qwen2-tiny";
  const PackedFile f = PackedFile::from_mapping(
      synth_packed_image(o, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {}));
  expect_invariant(f, "qwen2-tiny");
}

TEST(PagingInvariance, TinyStoriesLogitsAreBitIdenticalForEveryBudget) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "t.ferry", {}, [](std::string_view, uint64_t, uint64_t) {});
  expect_invariant(PackedFile::open(tmp / "t.ferry"), "tinystories");
}

}  // namespace
}  // namespace ferry
