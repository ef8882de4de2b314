// The CPU backend of the paging cache: host memory stands in for device memory (the arena is one
// allocation of exactly the budget, so the budget is a real bound on what the cache holds), and
// the thread that fills an entry does the copy or the dequantization itself, so "recorded" means
// "done". The two signals per entry are kept as counters that check the cache's protocol: an
// entry read before its ready signal, or memory reused while a reader still holds it, is an
// internal error thrown as ferry::Error (tests and ThreadSanitizer runs catch a broken cache).
#pragma once
#include <atomic>
#include <memory>

#include "cache/backend.hpp"

namespace ferry {

class CpuBackend final : public CacheBackend {
 public:
  std::string_view name() const override { return "cpu"; }
  bool pins_host_memory() const override { return false; }
  bool arena_in_host_memory() const override { return true; }
  uint64_t auto_budget(uint64_t whole_model) const override { return whole_model; }

  void record_ready(uint32_t entry) override;
  void wait_last_use(uint32_t entry) override;
  void wait_ready(uint32_t entry) override;
  bool ready_now(uint32_t entry) override;
  void create_signals(uint32_t entries) override;

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
  void check(uint32_t entry) const;
  uint32_t entries_ = 0;
  std::unique_ptr<std::atomic<bool>[]> ready_;        // [entries] written and not yet reused
  std::unique_ptr<std::atomic<uint32_t>[]> readers_;  // [entries] waits without a last use
};

}  // namespace ferry
