// Allocate at load, never per token: after a warm-up, decode steps of the CPU forward pass make
// no heap allocation on any thread, with the weights read in place and through the paging cache
// (lru and pin below the whole model, both cache formats: the prefetch thread included); nor
// does the sampler choosing from the logits, whatever its filters.
#include <gtest/gtest.h>

#include <string>

#include "quantizer/synth_packed.hpp"
#include "runtime/engine.hpp"
#include "runtime/sampler.hpp"
#include "tests/alloc_counter.hpp"

namespace ferry {
namespace {

PackedFile qwen2_tiny() {
  SynthOptions o;
  o.preset = "qwen2-tiny";
  return PackedFile::from_mapping(
      synth_packed_image(o, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {}));
}

// Allocations made by `steps` decode steps after a prompt and `warm` steps of warm-up.
uint64_t allocations_per_decode(const CacheOptions& cache, uint64_t warm, uint64_t steps) {
  Engine e(qwen2_tiny(), {.model = {}, .ctx = 64, .batch = 8, .threads = 2, .cache = cache});
  const std::vector<int32_t> prompt = {1, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77};
  int32_t token = e.eval_greedy(prompt, 0);
  uint64_t pos = prompt.size();
  for (uint64_t i = 0; i < warm; ++i) token = e.eval_greedy(std::span(&token, 1), pos++);
  const uint64_t before = test::allocations();
  for (uint64_t i = 0; i < steps; ++i) token = e.eval_greedy(std::span(&token, 1), pos++);
  return test::allocations() - before;
}

TEST(SteadyState, DecodeAllocatesNothing) {
#ifndef FERRY_COUNT_ALLOCATIONS
  GTEST_SKIP() << "allocations are not counted under AddressSanitizer";
#endif
  struct Case {
    const char* name;
    CacheOptions cache;
  };
  const Case cases[] = {
      {"in place", {}},
      {"lru 50% int4", {.enabled = true, .budget_fraction = 0.5}},
      {"pin 50% int4", {.enabled = true, .budget_fraction = 0.5, .policy = CachePolicy::pin}},
      {"pin 50% bf16",
       {.enabled = true,
        .budget_fraction = 0.5,
        .policy = CachePolicy::pin,
        .format = CacheFormat::bf16}},
      {"lru all int4", {.enabled = true, .budget_fraction = 1.0}},
  };
  for (const Case& c : cases) EXPECT_EQ(allocations_per_decode(c.cache, 3, 8), 0u) << c.name;
}

TEST(SteadyState, SamplingAllocatesNothing) {
#ifndef FERRY_COUNT_ALLOCATIONS
  GTEST_SKIP() << "allocations are not counted under AddressSanitizer";
#endif
  const uint64_t vocab = 1000;
  std::vector<float> logits(vocab);
  const std::vector<int32_t> context = {3, 5, 7};
  for (const SamplerOptions& o :
       {SamplerOptions{}, SamplerOptions{.temperature = 0.8f, .top_k = 40, .top_p = 0.9f},
        SamplerOptions{.temperature = 1.0f, .min_p = 0.05f, .repetition_penalty = 1.1f}}) {
    Sampler sampler(o, vocab);
    const uint64_t before = test::allocations();
    for (int step = 0; step < 20; ++step) {
      for (uint64_t i = 0; i < vocab; ++i) logits[i] = float((i * 7919 + step * 31) % 97) / 10;
      sampler.sample(logits, context);
    }
    EXPECT_EQ(test::allocations() - before, 0u) << o.temperature << " " << o.top_k;
  }
}

}  // namespace
}  // namespace ferry
