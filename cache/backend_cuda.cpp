#include "cache/backend_cuda.hpp"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "base/bytes.hpp"
#include "cache/schedule.hpp"
#include "format/int4.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/dequant.hpp"
#include "kernels/spin.hpp"

namespace ferry {

CudaBackend::CudaBackend(int device, CUstream_st* compute, uint64_t staging_bytes,
                         uint64_t available, uint64_t margin, bool pin_host)
    : device_(device),
      compute_(compute),
      staging_bytes_(staging_bytes),
      available_(available),
      margin_(margin),
      pin_host_(pin_host) {
  CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
  device_allocated_ = staging_bytes_;
  if (staging_bytes_ &&
      (staging_bytes_ > available_ ||
       cudaMalloc(reinterpret_cast<void**>(&staging_), staging_bytes_) != cudaSuccess)) {
    cudaGetLastError();
    cudaStreamDestroy(copy_);
    throw Error(Setting::cache_format,
                "cannot allocate " + human_bytes(double(staging_bytes_)) +
                    " of device memory for the dequantization staging buffer; free device memory "
                    "or use the int4 cache format");
  }
}

CudaBackend::~CudaBackend() {
  // The cache (and its prefetch thread) is gone before its backend: finish what is in flight.
  cudaStreamSynchronize(copy_);
  destroy_events();
  if (staging_) cudaFree(staging_);
  cudaStreamDestroy(copy_);
}

void CudaBackend::destroy_events() {
  for (auto* events : {&ready_, &last_use_, &wait_begin_, &wait_end_}) {
    for (CUevent_st* e : *events) cudaEventDestroy(e);
    events->clear();
  }
  timed_ = 0;
}

uint64_t CudaBackend::auto_budget(uint64_t whole_model) const {
  const uint64_t left = available_ - device_allocated_;
  const uint64_t usable = left > margin_ ? left - margin_ : 0;
  return usable < whole_model ? usable : whole_model;
}

void CudaBackend::create_signals(uint32_t entries) {
  destroy_events();
  for (auto* events : {&ready_, &last_use_, &wait_begin_, &wait_end_})
    events->resize(entries, nullptr);
  for (uint32_t i = 0; i < entries; ++i) {
    // Timing off: an event then costs a few hundred ns to record, not a timestamp.
    CUDA_CHECK(cudaEventCreateWithFlags(&ready_[i], cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&last_use_[i], cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreate(&wait_begin_[i]));  // timed: they measure the waits
    CUDA_CHECK(cudaEventCreate(&wait_end_[i]));
  }
}

// The copy side runs on the prefetch thread too, whose current device is 0 until it says
// otherwise: a launch on a stream of another device would fail. cudaSetDevice to the current
// device costs well under a microsecond.
void CudaBackend::record_ready(uint32_t entry) {
  CUDA_CHECK(cudaSetDevice(device_));
  CUDA_CHECK(cudaEventRecord(ready_.at(entry), copy_));
}

// A last-use event never recorded (the entry was never read) makes this a no-op.
void CudaBackend::wait_last_use(uint32_t entry) {
  CUDA_CHECK(cudaSetDevice(device_));
  CUDA_CHECK(cudaStreamWaitEvent(copy_, last_use_.at(entry), 0));
}

// An upload already complete when the host asks needs no wait at all: everything before its
// ready event has run, so a resident weight costs one query and no stream operation (the
// cache only asks after record_ready, so a query never sees an event not yet recorded). Only
// pending uploads are waited on, and timed, so no phantom microseconds are added (two events
// around a wait that is already satisfied still read ~1-2 us apart).
void CudaBackend::wait_ready(uint32_t entry) {
  if (ready_now(entry)) return;
  CUevent_st* ready = ready_.at(entry);
  const bool timed = timed_ < wait_begin_.size();
  if (timed) CUDA_CHECK(cudaEventRecord(wait_begin_[timed_], compute_));
  CUDA_CHECK(cudaStreamWaitEvent(compute_, ready, 0));
  if (timed) CUDA_CHECK(cudaEventRecord(wait_end_[timed_++], compute_));
}

bool CudaBackend::ready_now(uint32_t entry) {
  const cudaError_t done = cudaEventQuery(ready_.at(entry));
  if (done == cudaSuccess) return true;
  if (done != cudaErrorNotReady) CUDA_CHECK(done);
  // Not a failure: clear it, or the next launch check would report it (and nothing else).
  if (cudaPeekAtLastError() == cudaErrorNotReady) cudaGetLastError();
  return false;
}

// Never throws: it also runs after a failed call has drained its stream, where a pair whose
// time cannot be read is left uncounted.
void CudaBackend::collect_device_waits() noexcept {
  const uint32_t timed = std::exchange(timed_, 0);
  double ms_total = 0;
  for (uint32_t i = 0; i < timed; ++i) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, wait_begin_[i], wait_end_[i]) == cudaSuccess)
      ms_total += double(ms);
    else
      cudaGetLastError();
  }
  device_wait_ns_ += uint64_t(ms_total * 1e6);
}

void CudaBackend::do_record_last_use(uint32_t entry) {
  CUDA_CHECK(cudaEventRecord(last_use_.at(entry), compute_));
}

// Runs where wait_last_use ran (the prefetch thread or a miss on the compute thread), after the
// copy stream's wait on the entry's last use: the memset is ordered after the last reader.
void CudaBackend::do_poison(uint8_t* memory, uint64_t bytes) {
  CUDA_CHECK(cudaSetDevice(device_));
  std::lock_guard lock(copy_mu_);
  CUDA_CHECK(cudaMemsetAsync(memory, 0xFF, bytes, copy_));
}

void CudaBackend::do_delay(bool copy_side, uint32_t us) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (!copy_side) return spin_cuda(us, compute_);
  std::lock_guard lock(copy_mu_);
  spin_cuda(us, copy_);
}

uint8_t* CudaBackend::do_allocate(uint64_t bytes, MemoryKind kind) {
  void* p = nullptr;
  if (kind == MemoryKind::device) {
    if (bytes > available_ - device_allocated_) return nullptr;  // past --vram-limit
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the error so that later calls do not report it
      return nullptr;
    }
    device_allocated_ += bytes;
    return static_cast<uint8_t*>(p);
  }
  if (pin_host_ && cudaHostAlloc(&p, bytes, cudaHostAllocDefault) == cudaSuccess)
    return static_cast<uint8_t*>(p);
  cudaGetLastError();
  // Pageable memory still works: uploads go through the bounce ring (32 MB pinned), near the
  // pinned rate but with a host memcpy per byte on the prefetch thread's core.
  p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  if (!p) return nullptr;
  if (pin_host_)
    std::fprintf(stderr,
                 "ferry: warning: cannot pin %s of host memory (cudaHostAlloc failed: the driver "
                 "could not lock that much, which RLIMIT_MEMLOCK does not govern; a container's "
                 "memory limit or other pinned memory may); using pageable memory, uploaded "
                 "through a pinned bounce ring at the cost of a host copy of every byte\n",
                 human_bytes(double(bytes)).c_str());
  pageable_fallback_ = true;
  pageable_.push_back({static_cast<uint8_t*>(p), bytes});
  return static_cast<uint8_t*>(p);
}

void CudaBackend::do_free(uint8_t* p, uint64_t bytes, MemoryKind kind) {
  if (kind == MemoryKind::device) {
    cudaStreamSynchronize(copy_);  // no upload may still write into memory being freed
    cudaFree(p);
    device_allocated_ -= bytes;
    return;
  }
  for (size_t i = 0; i < pageable_.size(); ++i)
    if (pageable_[i].p == p) {
      pageable_.erase(pageable_.begin() + long(i));
      std::free(p);
      return;
    }
  cudaFreeHost(p);
}

bool CudaBackend::is_pageable(const uint8_t* p) const {
  for (const HostBlock& b : pageable_)
    if (p >= b.p && p < b.p + b.bytes) return true;
  return false;
}

void CudaBackend::put(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  CUDA_CHECK(cudaSetDevice(device_));
  if (is_pageable(src) && bounce_.ready()) return bounce_.upload(dst, src, bytes, copy_, copy_mu_);
  // Pinned source: asynchronous. Pageable without a ring (not even 32 MB could be pinned): the
  // driver stages it and the call returns when the copy stream has drained up to it.
  std::lock_guard lock(copy_mu_);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_));
}

void CudaBackend::do_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  put(dst, src, bytes);
}

// The packed weight goes to the staging buffer laid out as a cache entry, then the kernel
// dequantizes it from there into the entry.
void CudaBackend::do_dequant_int4_bf16(const Int4View& s, uint16_t* dst) {
  const Int4EntryLayout at = int4_entry_layout(s.rows, s.cols, s.has_mins());
  const uint64_t q_bytes = at.code_bytes, scale_bytes = at.scale_bytes;
  const uint64_t scales_at = at.scales_at, mins_at = at.mins_at;
  if (at.bytes() > staging_bytes_)
    throw Error("internal error: a weight does not fit the dequantization staging buffer");
  std::lock_guard staging(staging_mu_);
  put(staging_, s.q, q_bytes);
  put(staging_ + scales_at, reinterpret_cast<const uint8_t*>(s.scales), scale_bytes);
  if (s.mins) put(staging_ + mins_at, reinterpret_cast<const uint8_t*>(s.mins), scale_bytes);
  std::lock_guard lock(copy_mu_);
  dequant_int4_bf16_cuda(int4_entry_view(at, staging_, s.rows, s.cols), dst, copy_);
  CUDA_CHECK(cudaGetLastError());
}

void CudaBackend::do_dequant_int8_bf16(const Int8View& s, uint16_t* dst) {
  const Int4EntryLayout at = int8_entry_layout(s.rows, s.cols);
  if (at.bytes() > staging_bytes_)
    throw Error("internal error: a weight does not fit the dequantization staging buffer");
  std::lock_guard staging(staging_mu_);
  put(staging_, reinterpret_cast<const uint8_t*>(s.q), at.code_bytes);
  put(staging_ + at.scales_at, reinterpret_cast<const uint8_t*>(s.scales), at.scale_bytes);
  std::lock_guard lock(copy_mu_);
  dequant_int8_bf16_cuda(int8_entry_view(at, staging_, s.rows, s.cols), dst, copy_);
  CUDA_CHECK(cudaGetLastError());
}

uint64_t cuda_staging_bytes(const Int8View& w) {
  return int8_entry_layout(w.rows, w.cols).bytes();
}

uint64_t cuda_staging_bytes(const Int4View& w) {
  return int4_entry_layout(w.rows, w.cols, w.has_mins()).bytes();
}

}  // namespace ferry
