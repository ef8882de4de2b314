// The pin policy's choice, made once at load: which weights stay resident for good and how much of
// the arena is left as the ring the others stream through.
#pragma once
#include <cstdint>
#include <vector>

#include "cache/schedule.hpp"

namespace ferry {

struct PinPlan {
  std::vector<bool> pinned;  // [ids] resident for good
  uint64_t pinned_bytes = 0;
  uint64_t ring_bytes = 0;  // arena bytes left for the streamed weights
  uint64_t slot_bytes = 0;  // the largest streamed weight (0: nothing streams)
  uint32_t ring_slots = 0;  // how many of those the ring holds: 2 double-buffers, 1 cannot overlap
};

// For an arena of `arena` bytes (at least schedule.minimum_budget()). `want_slots` is 2 when a
// prefetcher runs ahead (one slot read by the compute while the next is filled), 1 when not.
//
// Every weight larger than the ring's slot must be pinned; the slot size is chosen among the
// schedule's sizes to pin the most bytes (a 2-slot ring of lm_head would take 54% of qwen2-small's
// INT4 weights, a ring of two gate/up-sized slots 5%, with lm_head pinned). The rest of the room is
// pinned spread evenly along the schedule (error diffusion: after any prefix of the pass, the
// pinned share of its bytes is within one weight of the overall share), so that every layer keeps
// the same fraction and streaming runs beside the compute over the whole pass instead of bunching
// at one end. A 2-slot ring is used whenever one fits; 1 slot only at budgets below that.
PinPlan plan_pin(const Schedule& s, uint64_t arena, uint32_t want_slots);

}  // namespace ferry
