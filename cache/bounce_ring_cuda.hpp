// Uploads from pageable host memory through a ring of pinned buffers, for when the host store
// could not be pinned (cudaHostAlloc failed) or the user asked for pageable memory.
//
// Why: a cudaMemcpyAsync from pageable memory is synchronous for the calling thread and goes
// through the driver's own small staging buffer, about half the pinned bandwidth. Here the
// calling thread copies a chunk into a free slot (host memcpy, ~10 GB/s a core) while the DMA
// engine drains the previous slots, so the upload runs near the pinned rate, and the copy
// stream's lock is held only to enqueue each chunk, never while the stream drains (waiting on a
// slot holds that slot's mutex alone).
//
// Ordering: each chunk's DMA is enqueued on the copy stream under the caller's lock, so a ready
// event recorded on that stream after the last chunk covers the whole upload; a slot is reused
// only after the event recorded behind its previous DMA has completed.
#pragma once
#include <array>
#include <cstdint>
#include <mutex>

struct CUstream_st;
struct CUevent_st;

namespace ferry {

class BounceRing {
 public:
  // 4 slots of 8 MB: uploads of 8 MB chunks reach ~95% of the pinned rate on PCIe 4 (the
  // per-copy overhead is ~10 us against ~330 us of transfer), and 4 keep the DMA busy while
  // the host fills the next one. 32 MB pinned in all, taken on first use only.
  static constexpr uint64_t kSlotBytes = 8ull << 20;
  static constexpr unsigned kSlots = 4;

  BounceRing() = default;
  ~BounceRing();
  BounceRing(const BounceRing&) = delete;
  BounceRing& operator=(const BounceRing&) = delete;

  // Pins the slots and creates their events; false (and nothing held) when the driver will not
  // pin even 32 MB, in which case the caller copies from pageable memory directly.
  bool ready();
  // Enqueues dst[0, bytes) <- src[0, bytes) on `stream`, taking `stream_mu` around each enqueue.
  // Returns when every chunk is enqueued (the last DMAs may still run).
  void upload(uint8_t* dst, const uint8_t* src, uint64_t bytes, CUstream_st* stream,
              std::mutex& stream_mu);

 private:
  struct Slot {
    uint8_t* host = nullptr;     // [kSlotBytes] pinned
    CUevent_st* done = nullptr;  // recorded after the DMA out of this slot
    std::mutex mu;               // held from choosing the slot until its DMA is enqueued
  };
  std::mutex init_mu_;  // guards tried_ and the allocation of the slots
  bool tried_ = false, usable_ = false;
  std::mutex next_mu_;
  unsigned next_ = 0;  // the slot the next chunk takes (round robin), under next_mu_
  std::array<Slot, kSlots> slots_;
};

}  // namespace ferry
