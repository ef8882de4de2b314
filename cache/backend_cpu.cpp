#include "cache/backend_cpu.hpp"

#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "base/error.hpp"
#include "kernels/dequant.hpp"
#include "kernels/spin.hpp"

namespace ferry {
namespace {

// 4096: page aligned, so an arena or a store starts on a page (and on every cache line and AVX
// vector) like cudaMalloc's and cudaHostAlloc's memory does.
constexpr uint64_t kPageAlign = 4096;

}  // namespace

uint8_t* CpuBackend::do_allocate(uint64_t bytes, MemoryKind) {
  const uint64_t rounded = (bytes + kPageAlign - 1) / kPageAlign * kPageAlign;
  return static_cast<uint8_t*>(std::aligned_alloc(kPageAlign, rounded ? rounded : kPageAlign));
}

void CpuBackend::do_free(uint8_t* p, uint64_t, MemoryKind) {
  std::free(p);
}

void CpuBackend::do_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  std::memcpy(dst, src, bytes);
}

void CpuBackend::do_dequant_int4_bf16(const Int4View& s, uint16_t* dst) {
  dequant_int4_bf16_cpu(s, dst);
}

void CpuBackend::do_poison(uint8_t* memory, uint64_t bytes) {
  std::memset(memory, 0xFF, bytes);
}

void CpuBackend::do_delay(bool, uint32_t us) {
  spin_cpu(us);
}

void CpuBackend::do_dequant_int8_bf16(const Int8View& s, uint16_t* dst) {
  dequant_int8_bf16_cpu(s, dst);
}

void CpuBackend::create_signals(uint32_t entries) {
  entries_ = entries;
  ready_ = std::make_unique<std::atomic<bool>[]>(entries);
  readers_ = std::make_unique<std::atomic<uint32_t>[]>(entries);
}

void CpuBackend::check(uint32_t entry) const {
  if (entry >= entries_)
    throw Error(
        fmt::format("internal error: cache entry {} has no signals (of {})", entry, entries_));
}

void CpuBackend::record_ready(uint32_t entry) {
  check(entry);
  ready_[entry].store(true, std::memory_order_release);
}

void CpuBackend::wait_ready(uint32_t entry) {
  check(entry);
  if (!ready_[entry].load(std::memory_order_acquire))
    throw Error(fmt::format("internal error: cache entry {} read before its copy finished", entry));
  readers_[entry].fetch_add(1, std::memory_order_relaxed);
}

bool CpuBackend::ready_now(uint32_t entry) {
  check(entry);
  return ready_[entry].load(std::memory_order_acquire);
}

void CpuBackend::do_record_last_use(uint32_t entry) {
  check(entry);
  readers_[entry].fetch_sub(1, std::memory_order_release);
}

void CpuBackend::wait_last_use(uint32_t entry) {
  check(entry);
  if (readers_[entry].load(std::memory_order_acquire) != 0)
    throw Error(
        fmt::format("internal error: memory of cache entry {} reused while it is read", entry));
  ready_[entry].store(false, std::memory_order_relaxed);
}

}  // namespace ferry
