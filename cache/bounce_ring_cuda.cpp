#include "cache/bounce_ring_cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "kernels/cuda_check.hpp"

namespace ferry {

BounceRing::~BounceRing() {
  for (Slot& s : slots_) {
    if (s.done) {
      cudaEventSynchronize(s.done);  // no DMA may still read a slot being freed
      cudaEventDestroy(s.done);
    }
    if (s.host) cudaFreeHost(s.host);
  }
}

bool BounceRing::ready() {
  std::lock_guard lock(init_mu_);
  if (tried_) return usable_;
  tried_ = true;
  for (Slot& s : slots_) {
    void* p = nullptr;
    if (cudaHostAlloc(&p, kSlotBytes, cudaHostAllocDefault) != cudaSuccess ||
        cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      if (p) cudaFreeHost(p);
      for (Slot& t : slots_) {
        if (t.host) cudaFreeHost(t.host);
        if (t.done) cudaEventDestroy(t.done);
        t.host = nullptr;
        t.done = nullptr;
      }
      return usable_ = false;
    }
    s.host = static_cast<uint8_t*>(p);
  }
  return usable_ = true;
}

void BounceRing::upload(uint8_t* dst, const uint8_t* src, uint64_t bytes, CUstream_st* stream,
                        std::mutex& stream_mu) {
  for (uint64_t at = 0; at < bytes; at += kSlotBytes) {
    const uint64_t len = std::min(kSlotBytes, bytes - at);
    Slot* s = nullptr;
    {
      std::lock_guard lock(next_mu_);
      s = &slots_[next_];
      next_ = (next_ + 1) % kSlots;
    }
    std::lock_guard slot_lock(s->mu);
    // The slot's previous DMA must be done before its bytes are overwritten. An event never
    // recorded counts as complete.
    CUDA_CHECK(cudaEventSynchronize(s->done));
    std::memcpy(s->host, src + at, len);
    std::lock_guard stream_lock(stream_mu);
    CUDA_CHECK(cudaMemcpyAsync(dst + at, s->host, len, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(s->done, stream));
  }
}

}  // namespace ferry
