// The CUDA backend of the paging cache (DESIGN.md, "The paging core"): the host weight store in
// pinned memory (cudaHostAlloc; when pinning fails, pageable memory with a warning, uploaded
// through a ring of pinned bounce buffers: cache/bounce_ring_cuda.hpp), the arena one
// cudaMalloc made at load, fills as cudaMemcpyAsync (and, in the bf16 format, an upload to a
// staging buffer and the dequantization kernel) on a copy stream owned by this backend, and two
// events per entry:
//   ready     recorded on the copy stream after the entry's fill; the compute stream waits on it
//             (cudaStreamWaitEvent) in acquire, so the host never blocks on a copy;
//   last use  recorded on the compute stream after the Linear that read the entry; the copy
//             stream waits on it before an eviction lets another weight overwrite the memory.
// Nothing here synchronizes the device on the per-token path. CUDA builds only: host code
// compiled by the C++ compiler (files named *_cuda.cpp go to the ferry_cuda library).
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "cache/backend.hpp"
#include "cache/bounce_ring_cuda.hpp"

struct CUstream_st;
struct CUevent_st;

namespace ferry {

class CudaBackend final : public CacheBackend {
 public:
  // `compute` is the stream the forward pass runs on. `staging_bytes` is the largest packed
  // weight (the bf16 format uploads it there before dequantizing), 0 when unused. `available`
  // is the device memory this backend may allocate (what is free, or what `--vram-limit` leaves);
  // `margin` is what `--cache-budget auto` leaves of it unallocated.
  // `device` is the GPU's ordinal: the prefetch thread selects it before its CUDA calls.
  // `pin_host` false puts the host store in pageable memory from the start, as a failed
  // cudaHostAlloc would (tests and bench_cache measure that path with it).
  CudaBackend(int device, CUstream_st* compute, uint64_t staging_bytes, uint64_t available,
              uint64_t margin, bool pin_host = true);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string_view name() const override { return "cuda"; }
  bool pins_host_memory() const override { return true; }
  // min(whole model, what is available and not yet allocated - margin), at least 0.
  uint64_t auto_budget(uint64_t whole_model) const override;

  void record_ready(uint32_t entry) override;
  void wait_last_use(uint32_t entry) override;
  void wait_ready(uint32_t entry) override;
  bool ready_now(uint32_t entry) override;
  void create_signals(uint32_t entries) override;
  double device_wait_seconds() const override { return 1e-9 * double(device_wait_ns_.load()); }
  // Adds up the compute stream's timed waits since the last call; call it with the compute
  // stream synchronized (the forward pass does, once per call, failed or not).
  void collect_device_waits() noexcept;

  CUstream_st* copy_stream() const { return copy_; }
  bool host_fallback_used() const { return pageable_fallback_; }

 protected:
  uint8_t* do_allocate(uint64_t bytes, MemoryKind kind) override;
  void do_free(uint8_t* p, uint64_t bytes, MemoryKind kind) override;
  void do_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes) override;
  void do_dequant_int4_bf16(const Int4View& src, uint16_t* dst) override;
  void do_record_last_use(uint32_t entry) override;
  void do_poison(uint8_t* memory, uint64_t bytes) override;
  void do_delay(bool copy_side, uint32_t us) override;
  void do_dequant_int8_bf16(const Int8View& src, uint16_t* dst) override;

 private:
  void destroy_events();
  // dst <- src on the copy stream: through the bounce ring when src is pageable, directly
  // otherwise; takes copy_mu_ only around each enqueue.
  void put(uint8_t* dst, const uint8_t* src, uint64_t bytes);
  bool is_pageable(const uint8_t* p) const;

  int device_ = 0;
  CUstream_st* compute_ = nullptr;
  CUstream_st* copy_ = nullptr;  // owned: the prefetcher's uploads
  uint64_t staging_bytes_ = 0;
  uint8_t* staging_ = nullptr;  // [staging_bytes_] device: packed blocks awaiting dequantization
  uint64_t available_ = 0, margin_ = 0;
  uint64_t device_allocated_ = 0;  // by this backend, staging included
  // Fills come from the prefetch thread and, on a miss, the compute thread. copy_mu_ is held
  // around each enqueue on the copy stream (never while it drains); staging_mu_ for a whole
  // bf16-format fill, so that two never share the staging buffer.
  std::mutex copy_mu_, staging_mu_;
  std::vector<CUevent_st*> ready_, last_use_;  // [entries]
  // Timing events around the compute stream's waits on uploads still in flight when acquired:
  // [entries] pairs, enough for one forward call (each weight is acquired once per pass);
  // `timed_` of them in use until collect_device_waits(). Compute thread only.
  std::vector<CUevent_st*> wait_begin_, wait_end_;
  uint32_t timed_ = 0;
  std::atomic<uint64_t> device_wait_ns_{0};
  struct HostBlock {
    uint8_t* p;
    uint64_t bytes;
  };
  bool pin_host_ = true;
  std::vector<HostBlock> pageable_;  // host blocks not pinned; written at load only
  bool pageable_fallback_ = false;
  BounceRing bounce_;  // pinned on the first upload from pageable memory
};

// The staging bytes the bf16 format needs for one INT4 weight (laid out as its cache entry).
uint64_t cuda_staging_bytes(const Int4View& w);
uint64_t cuda_staging_bytes(const Int8View& w);  // the same for an INT8 weight

}  // namespace ferry
