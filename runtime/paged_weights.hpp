// The weight source of the paging cache. At load, every linear weight of the file is copied into
// the host weight store (cache/host_store.hpp, checksums verified); the forward pass then gets
// each one from the device cache (cache/device_cache.hpp), whose entries are filled from the store
// either as stored (format int4: the INT4 kernels read the packed blocks) or dequantized to bf16
// by the filling thread (format bf16: Linear runs the bf16 product, 4x the bytes per entry).
// Biases, norms and the embedding stay in the file's memory.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "cache/backend.hpp"
#include "cache/device_cache.hpp"
#include "cache/host_store.hpp"
#include "cache/schedule.hpp"
#include "cache/stats.hpp"
#include "runtime/model.hpp"

namespace ferry {

enum class CacheFormat { int4, bf16 };
const char* format_name(CacheFormat f);

// What `--cache-budget` and its companions ask for. The default (enabled false) is no cache: the
// forward pass reads every weight in place from the file's memory (DirectWeights).
struct CacheOptions {
  bool enabled = false;
  double budget_fraction = 0;  // of the linear weights in the cache format, when > 0
  uint64_t budget_bytes = 0;   // otherwise, unless budget_auto
  bool budget_auto = false;    // the backend decides (CPU: the whole model)
  CachePolicy policy = CachePolicy::lru;
  CacheFormat format = CacheFormat::int4;
  uint32_t lookahead = 2;
  bool verify = true;        // checksums of the host store (--no-verify: false)
  ProgressFn progress = {};  // loading the host store; may be empty
  std::shared_ptr<CacheBackend> backend = nullptr;  // nullptr: the CPU backend
  std::function<void(uint32_t)> on_evict = {};      // tests: each evicted id
  CacheStress stress = {};                          // --cache-stress (cache/backend.hpp)
};

// The schedule of a model in a cache format: its linear weights by id (runtime/model.hpp order),
// each with its entry size in that format, its layer (lm_head counts as a layer past the last)
// and its name.
Schedule paging_schedule(const PackedFile& f, const ModelWeights& w, CacheFormat format);

// The host memory a cache of these options takes, for checks before anything is allocated: its
// host store (a copy of every linear weight, pinned on a device) and, when the arena is host
// memory (the CPU backend, o.backend null), the budget. Budgets `auto` on a device count nothing
// here: the device's memory holds the arena.
uint64_t cache_host_bytes(const PackedFile& f, const ModelWeights& w, const CacheOptions& o);

class PagedWeights final : public WeightSource {
 public:
  // Throws ferry::Error for a budget below the minimum (stating it), host memory that the host
  // store and a CPU arena would exceed (before allocating), memory that cannot be had, or a
  // checksum mismatch.
  PagedWeights(const PackedFile& f, const ModelWeights& w, const CacheOptions& o, unsigned threads);
  ~PagedWeights() override;
  Linear acquire(uint32_t id) override;
  void release(uint32_t id) override;
  bool can_hold(std::span<const uint32_t> ids) const override { return cache_->can_hold(ids); }
  bool resident() override { return cache_->resident(); }

  CacheStats stats() const { return cache_->stats(); }
  // The statistics with no prefetch in flight (DeviceCache::settle): exact, for the end of a run.
  CacheStats settled_stats() {
    cache_->settle();
    return cache_->stats();
  }
  uint64_t weight_bytes() const { return cache_->schedule().whole_bytes(); }
  const DeviceCache& cache() const { return *cache_; }
  CacheBackend& backend() { return *backend_; }

 private:
  void fill(uint32_t id, uint8_t* dst);
  // Bytes from an INT4 weight's codes to the end of its last part when the host store holds its
  // parts as the entry lays them out (one copy fills the entry), else 0.
  uint64_t contiguous_bytes(uint32_t id) const;

  CacheFormat format_;
  std::shared_ptr<CacheBackend> backend_;
  std::vector<Linear> stored_;            // [ids] pointers into the host store
  std::vector<Int4EntryLayout> layouts_;  // [ids] where an INT4 weight's parts lie in its entry
  std::unique_ptr<HostWeightStore> store_;
  std::unique_ptr<DeviceCache> cache_;  // last: stopped before the store it reads goes
};

}  // namespace ferry
