// What the paging cache needs from the machine it runs on (DESIGN.md, "The paging core"): host
// memory for the weight store, one device arena, a copy engine that fills an entry (a copy, or a
// copy and an INT4 -> bf16 dequantization) and two signals per entry:
//   ready    recorded by the copy side after an entry's bytes are written; the compute side waits
//            on it before reading the entry;
//   last use recorded by the compute side after the Linear that read the entry ran; the copy side
//            waits on it before it overwrites the entry's memory with another weight.
// The CUDA backend maps these onto cudaHostAlloc (pinned store), one cudaMalloc (the arena),
// cudaMemcpyAsync and the dequant kernel on a copy stream, and one pair of events per entry, so
// that no call on the hot path synchronizes the device. The CPU backend (backend_cpu.hpp) stands a
// bounded host arena in for device memory and does each copy on the calling thread.
//
// Fault injection, for tests, lives on the backend object (never a global): the N-th allocation
// or the N-th transfer throws ferry::Error as if the memory or the copy had failed. So do the
// stress modes below, which make an ordering the cache forgot show as wrong logits.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

#include "format/int4.hpp"
#include "format/int8.hpp"

namespace ferry {

class CacheBackend;

enum class MemoryKind { host, device };

// Stress modes (off by default; `--cache-stress`, tests and scripts/gpu-check). On a GPU the
// tiny test models upload in microseconds, so a missing wait would almost never be caught:
//   race    every fill (copy or dequantization) starts after a delay of delay_us on the copy side,
//           and every last-use signal is recorded after one on the compute side (a spin kernel on
//           the stream; on the CPU a sleep on the calling thread): a read not ordered after its
//           fill, or a fill not ordered after the last read of what it overwrites, gets a window
//           of delay_us to read or write the wrong bytes;
//   poison  an evicted entry's memory is filled with 0xFF on the copy side as soon as its last
//           reader is done (0xFFFF is NaN in bf16 and f16; INT4 scales become NaN), so a read
//           after the eviction turns logits into NaN instead of passing unnoticed.
// With both, the logits must stay bit-identical (tests/test_paging.cpp, test_gpu_forward.cpp).
struct CacheStress {
  bool race = false;
  bool poison = false;
  uint32_t delay_us = 200;  // ~a 4 MB upload at 25 GB/s: long next to a tiny model's kernels
};

// Frees through the backend that allocated the memory.
struct MemoryFree {
  CacheBackend* backend = nullptr;
  MemoryKind kind = MemoryKind::host;
  uint64_t bytes = 0;
  void operator()(uint8_t* p) const;
};
using Memory = std::unique_ptr<uint8_t, MemoryFree>;

class CacheBackend {
 public:
  virtual ~CacheBackend() = default;
  virtual std::string_view name() const = 0;
  virtual bool pins_host_memory() const = 0;
  // Whether the arena ("device" memory) is host memory too (the CPU backend): then the budget
  // counts against host memory beside the host store.
  virtual bool arena_in_host_memory() const { return false; }
  // The budget `--cache-budget auto` gives for a model whose linear weights take `whole_model`
  // bytes in the cache's format.
  virtual uint64_t auto_budget(uint64_t whole_model) const = 0;

  // Memory: throw ferry::Error naming `what` and the size when it cannot be had (or when the
  // injected fault hits). `place` counts an entry placed inside the arena, which on a device is
  // not an allocation of its own but is where a placement bug would surface, so tests can fail it.
  Memory allocate_host(uint64_t bytes, std::string_view what);
  Memory allocate_device(uint64_t bytes, std::string_view what);
  void place(uint64_t bytes, std::string_view what);

  // The copy side. `dst` is device (arena) memory, the sources host (store) memory.
  void copy(uint8_t* dst, const uint8_t* src, uint64_t bytes);
  void dequant_int4_bf16(const Int4View& src, uint16_t* dst);  // [rows, cols] bf16
  void dequant_int8_bf16(const Int8View& src, uint16_t* dst);  // [rows, cols] bf16
  virtual void record_ready(uint32_t entry) = 0;
  virtual void wait_last_use(uint32_t entry) = 0;  // before reusing the entry's memory
  // After wait_last_use of an evicted entry, before its memory is reused: poisons it (stress).
  void evicted(uint8_t* memory, uint64_t bytes);
  // The compute side.
  virtual void wait_ready(uint32_t entry) = 0;
  // Whether the entry's fill has completed on the copy side now (a GPU: its ready event has
  // passed), so that reading it needs no wait at all. After record_ready only.
  virtual bool ready_now(uint32_t entry) = 0;
  void record_last_use(uint32_t entry);  // after the stress delay, do_record_last_use
  uint64_t last_use_records() const { return last_use_records_.load(); }  // tests
  // Called once by the cache before any signal is used, with the number of entries.
  virtual void create_signals(uint32_t entries) = 0;
  // Seconds the compute side has waited on ready signals where acquire does not see it (a GPU
  // stream waiting on an event while the host runs ahead); 0 where every wait is acquire's own,
  // which the cache counts itself (the CPU backend).
  virtual double device_wait_seconds() const { return 0; }

  // Tests: the n-th allocation (host, device or placement; 1-based, counted from now on) or the
  // n-th transfer (copy or dequantization) throws. 0 turns the fault off.
  void fail_allocation_at(uint64_t n);
  void fail_transfer_at(uint64_t n);
  uint64_t allocations() const { return allocations_.load(); }
  uint64_t transfers() const { return transfers_.load(); }
  // Set before the cache that uses this backend is made (its threads read it unlocked).
  void set_stress(const CacheStress& s) { stress_ = s; }
  const CacheStress& stress() const { return stress_; }

 protected:
  // nullptr when the memory cannot be had.
  virtual uint8_t* do_allocate(uint64_t bytes, MemoryKind kind) = 0;
  virtual void do_free(uint8_t* p, uint64_t bytes, MemoryKind kind) = 0;
  virtual void do_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes) = 0;
  virtual void do_dequant_int4_bf16(const Int4View& src, uint16_t* dst) = 0;
  virtual void do_record_last_use(uint32_t entry) = 0;
  // Stress: fill `bytes` at `memory` (device) with 0xFF after what the copy side has queued, and
  // delay the copy side (copy_side) or the compute side by `us`.
  virtual void do_poison(uint8_t* memory, uint64_t bytes) = 0;
  virtual void do_delay(bool copy_side, uint32_t us) = 0;
  virtual void do_dequant_int8_bf16(const Int8View& src, uint16_t* dst) = 0;

 private:
  friend struct MemoryFree;
  void count_allocation(uint64_t bytes, std::string_view what);
  void count_transfer(uint64_t bytes);
  Memory allocate(uint64_t bytes, MemoryKind kind, std::string_view what);

  std::atomic<uint64_t> allocations_{0}, fail_allocation_{0};
  std::atomic<uint64_t> transfers_{0}, fail_transfer_{0};
  std::atomic<uint64_t> last_use_records_{0};
  CacheStress stress_;
};

}  // namespace ferry
