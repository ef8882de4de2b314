#include "runtime/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.hpp"

namespace ferry {

Sampler::Sampler(SamplerOptions o, uint64_t vocab)
    : o_(o), rng_(o.seed), order_(vocab), probs_(vocab) {
  if (o.temperature < 0 || o.top_p <= 0 || o.top_p > 1 || o.min_p < 0 || o.min_p >= 1 ||
      o.repetition_penalty <= 0)
    throw Error(
        "sampling options out of range: need temp >= 0, 0 < top-p <= 1, 0 <= min-p < 1, "
        "repeat-penalty > 0");
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> context) {
  if (o_.repetition_penalty != 1)
    for (int32_t id : context) {
      float& l = logits[size_t(id)];
      l = l > 0 ? l / o_.repetition_penalty : l * o_.repetition_penalty;
    }
  if (o_.temperature == 0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const size_t n = logits.size();
  std::iota(order_.begin(), order_.begin() + ptrdiff_t(n), 0);
  size_t keep = o_.top_k ? std::min<size_t>(o_.top_k, n) : n;
  std::partial_sort(order_.begin(), order_.begin() + ptrdiff_t(keep), order_.begin() + ptrdiff_t(n),
                    [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  const float max_logit = logits[size_t(order_[0])];
  double sum = 0;
  for (size_t i = 0; i < keep; ++i)
    sum += probs_[i] = std::exp((logits[size_t(order_[i])] - max_logit) / o_.temperature);
  // Candidates are sorted by probability: cut the tail by min-p, then by cumulative top-p.
  size_t cut = 0;
  double cum = 0;
  while (cut < keep && probs_[cut] >= o_.min_p * probs_[0] && (cut == 0 || cum < o_.top_p * sum))
    cum += probs_[cut++];
  std::uniform_real_distribution<double> u(0, cum);
  double r = u(rng_);
  for (size_t i = 0; i < cut; ++i)
    if ((r -= probs_[i]) <= 0) return order_[i];
  return order_[cut - 1];
}

}  // namespace ferry
