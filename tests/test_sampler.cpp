#include <gtest/gtest.h>

#include <map>

#include "base/error.hpp"
#include "runtime/sampler.hpp"

namespace ferry {
namespace {

std::vector<float> logits() {
  return {0.1f, 2.0f, 1.5f, -1.0f, 1.9f};
}

TEST(Sampler, GreedyAndDegenerateFiltersPickTheArgmax) {
  for (SamplerOptions o : {SamplerOptions{}, SamplerOptions{.temperature = 1, .top_k = 1},
                           SamplerOptions{.temperature = 1, .top_p = 0.01f},
                           SamplerOptions{.temperature = 1, .min_p = 0.99f}}) {
    Sampler s(o, 5);
    for (int i = 0; i < 20; ++i) {
      auto l = logits();
      EXPECT_EQ(s.sample(l, {}), 1);
    }
  }
}

TEST(Sampler, SeededAndConfinedToTopK) {
  const SamplerOptions o{.temperature = 1, .top_k = 3, .seed = 42};
  Sampler a(o, 5), b(o, 5);
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) {
    auto la = logits(), lb = logits();
    const int32_t x = a.sample(la, {});
    EXPECT_EQ(x, b.sample(lb, {}));
    ++counts[x];
  }
  EXPECT_EQ(counts.size(), 3u);  // ids 1, 4, 2
  EXPECT_GT(counts[1], counts[2]);
  // p(1)/p(2) = e^0.5 = 1.65 at temperature 1
  EXPECT_NEAR(double(counts[1]) / counts[2], 1.65, 0.3);
}

TEST(Sampler, RepetitionPenaltyDemotesSeenTokens) {
  Sampler s(SamplerOptions{.repetition_penalty = 2}, 5);
  auto l = logits();
  const std::vector<int32_t> seen = {1};
  EXPECT_EQ(s.sample(l, seen), 4);  // 2.0 / 2 = 1.0 < 1.9
}

TEST(Sampler, OutOfRangeOptionsAreErrors) {
  EXPECT_THROW(Sampler(SamplerOptions{.temperature = -1}, 5), Error);
  EXPECT_THROW(Sampler(SamplerOptions{.top_p = 0}, 5), Error);
  EXPECT_THROW(Sampler(SamplerOptions{.min_p = 1}, 5), Error);
}

}  // namespace
}  // namespace ferry
