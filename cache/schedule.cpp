#include "cache/schedule.hpp"

namespace ferry {

uint64_t Schedule::whole_bytes() const {
  uint64_t total = 0;
  for (uint32_t id = 0; id < weights.size(); ++id) total += arena_bytes(id);
  return total;
}

uint32_t Schedule::largest() const {
  uint32_t best = 0;
  for (uint32_t id = 1; id < weights.size(); ++id)
    if (weights[id].bytes > weights[best].bytes) best = id;
  return best;
}

uint64_t Schedule::minimum_budget() const {
  return weights.empty() ? 0 : arena_bytes(largest());
}

}  // namespace ferry
