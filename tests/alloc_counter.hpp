// Counts every allocation of the test binary that includes this header (in exactly one of its
// files: it replaces the global operator new), to show that a hot path makes none. Not under
// AddressSanitizer, which owns operator new: FERRY_COUNT_ALLOCATIONS is then undefined and the
// tests that need the count skip.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace ferry::test {
inline std::atomic<uint64_t> g_allocations = 0;
inline uint64_t allocations() {
  return g_allocations.load(std::memory_order_relaxed);
}
}  // namespace ferry::test

#ifndef __SANITIZE_ADDRESS__
#define FERRY_COUNT_ALLOCATIONS 1
// noinline: inlined into gtest's `new TestClass` / `delete`, GCC 12 mistakes the malloc/free pair
// for a mismatched new/free (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t size) {
  ferry::test::g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#endif
