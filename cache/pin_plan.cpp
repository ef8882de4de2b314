#include "cache/pin_plan.hpp"

#include <algorithm>

namespace ferry {
namespace {

// Pins the weights of at most `slot` bytes in schedule order, spreading `room` bytes evenly, then
// fills what the rounding left with any weight that still fits.
void spread(const Schedule& s, uint64_t slot, uint64_t room, PinPlan& p) {
  uint64_t candidates = 0;
  for (uint32_t id = 0; id < s.size(); ++id)
    if (!p.pinned[id] && s.arena_bytes(id) <= slot) candidates += s.arena_bytes(id);
  if (candidates == 0) return;
  const double share = std::min(1.0, double(room) / double(candidates));
  double credit = 0;
  uint64_t used = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (uint32_t id = 0; id < s.size(); ++id) {
      const uint64_t b = s.arena_bytes(id);
      if (p.pinned[id] || b > slot) continue;
      if (pass == 0) credit += share * double(b);
      if ((pass == 1 || credit >= double(b) / 2) && used + b <= room) {
        p.pinned[id] = true;
        used += b;
        if (pass == 0) credit -= double(b);
      }
    }
  p.pinned_bytes += used;
}

// The plan with ring slots of `slot` bytes, or pinned_bytes == ~0 when it does not fit.
PinPlan plan_with_slot(const Schedule& s, uint64_t arena, uint32_t slots, uint64_t slot) {
  PinPlan p;
  p.pinned.assign(s.size(), false);
  p.ring_slots = slots;
  p.slot_bytes = slot;
  p.ring_bytes = slots * slot;
  for (uint32_t id = 0; id < s.size(); ++id)
    if (s.arena_bytes(id) > slot) {
      p.pinned[id] = true;
      p.pinned_bytes += s.arena_bytes(id);
    }
  if (p.ring_bytes > arena || p.pinned_bytes > arena - p.ring_bytes) {
    p.pinned_bytes = ~0ull;
    return p;
  }
  spread(s, slot, arena - p.ring_bytes - p.pinned_bytes, p);
  return p;
}

}  // namespace

PinPlan plan_pin(const Schedule& s, uint64_t arena, uint32_t want_slots) {
  if (s.whole_bytes() <= arena) {
    PinPlan all;
    all.pinned.assign(s.size(), true);
    all.pinned_bytes = s.whole_bytes();
    return all;
  }
  std::vector<uint64_t> sizes;
  for (uint32_t id = 0; id < s.size(); ++id) sizes.push_back(s.arena_bytes(id));
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  for (uint32_t slots = std::max(want_slots, 1u); slots >= 1; --slots) {
    PinPlan best;
    for (uint64_t slot : sizes) {
      PinPlan p = plan_with_slot(s, arena, slots, slot);
      if (p.pinned_bytes != ~0ull && (best.pinned.empty() || p.pinned_bytes > best.pinned_bytes))
        best = std::move(p);
    }
    if (!best.pinned.empty()) {
      best.ring_bytes = arena - best.pinned_bytes;  // the ring gets whatever pinning left over
      return best;
    }
  }
  return {};  // unreachable for arena >= minimum_budget(): 1 slot of the largest always fits
}

}  // namespace ferry
