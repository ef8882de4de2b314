#include "cache/backend.hpp"

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"

namespace ferry {

void MemoryFree::operator()(uint8_t* p) const {
  if (p) backend->do_free(p, bytes, kind);
}

void CacheBackend::fail_allocation_at(uint64_t n) {
  fail_allocation_ = n ? allocations_.load() + n : 0;
}

void CacheBackend::fail_transfer_at(uint64_t n) {
  fail_transfer_ = n ? transfers_.load() + n : 0;
}

void CacheBackend::count_allocation(uint64_t bytes, std::string_view what) {
  if (const uint64_t k = ++allocations_; k == fail_allocation_.load())
    throw Error(fmt::format("cannot allocate {} for {} (injected fault at allocation {})",
                            human_bytes(double(bytes)), what, k));
}

void CacheBackend::count_transfer(uint64_t bytes) {
  if (const uint64_t k = ++transfers_; k == fail_transfer_.load())
    throw Error(fmt::format("copy of {} into the cache failed (injected fault at transfer {})",
                            human_bytes(double(bytes)), k));
}

Memory CacheBackend::allocate(uint64_t bytes, MemoryKind kind, std::string_view what) {
  count_allocation(bytes, what);
  uint8_t* p = do_allocate(bytes, kind);
  if (!p)
    throw Error(
        Setting::cache_budget,
        fmt::format("cannot allocate {} of {} for {}; free memory or lower the cache budget",
                    human_bytes(double(bytes)),
                    kind == MemoryKind::host ? std::string("host memory")
                                             : fmt::format("device memory ({} backend)", name()),
                    what));
  return Memory(p, MemoryFree{this, kind, bytes});
}

Memory CacheBackend::allocate_host(uint64_t bytes, std::string_view what) {
  return allocate(bytes, MemoryKind::host, what);
}

Memory CacheBackend::allocate_device(uint64_t bytes, std::string_view what) {
  return allocate(bytes, MemoryKind::device, what);
}

void CacheBackend::place(uint64_t bytes, std::string_view what) {
  count_allocation(bytes, what);
}

void CacheBackend::copy(uint8_t* dst, const uint8_t* src, uint64_t bytes) {
  count_transfer(bytes);
  if (stress_.race) do_delay(true, stress_.delay_us);
  do_copy(dst, src, bytes);
}

void CacheBackend::dequant_int4_bf16(const Int4View& src, uint16_t* dst) {
  count_transfer(src.rows * src.cols * 2);
  if (stress_.race) do_delay(true, stress_.delay_us);
  do_dequant_int4_bf16(src, dst);
}

void CacheBackend::evicted(uint8_t* memory, uint64_t bytes) {
  if (stress_.poison) do_poison(memory, bytes);
}

void CacheBackend::record_last_use(uint32_t entry) {
  if (stress_.race) do_delay(false, stress_.delay_us);
  last_use_records_.fetch_add(1, std::memory_order_relaxed);
  do_record_last_use(entry);
}

void CacheBackend::dequant_int8_bf16(const Int8View& src, uint16_t* dst) {
  count_transfer(src.rows * src.cols * 2);
  if (stress_.race) do_delay(true, stress_.delay_us);
  do_dequant_int8_bf16(src, dst);
}

}  // namespace ferry
