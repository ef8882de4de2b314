// Next-token choice from logits: greedy at temperature 0, otherwise temperature, then top-k,
// top-p (nucleus) and min-p filtering, sampled with a seeded generator. Buffers are allocated
// once (vocab-sized), not per token.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace ferry {

struct SamplerOptions {
  float temperature = 0;         // 0: greedy
  uint32_t top_k = 0;            // 0: off
  float top_p = 1;               // 1: off
  float min_p = 0;               // 0: off; keep tokens with p >= min_p * p_max
  float repetition_penalty = 1;  // > 1 discourages tokens already in the context (CTRL-style)
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(SamplerOptions o, uint64_t vocab);
  // `logits` is modified (penalty, temperature); `context` holds the ids seen so far.
  int32_t sample(std::span<float> logits, std::span<const int32_t> context);
  // The choice is the largest logit as it comes (temperature 0, no penalty): a device can make
  // it itself, and only the token need cross the bus.
  bool plain_greedy() const { return o_.temperature == 0 && o_.repetition_penalty == 1; }

 private:
  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // [vocab] candidate ids
  std::vector<float> probs_;    // [vocab]
};

}  // namespace ferry
