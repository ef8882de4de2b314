// The weight source of the paging cache: each linear weight of the model is an entry of a
// WeightCache (cache/weight_cache.hpp), filled from the packed file's memory either as stored
// (format int4: the INT4 kernels read the packed blocks) or dequantized to bf16 on the prefetch
// thread (format bf16: Linear runs the bf16 product).
#pragma once
#include <memory>

#include "cache/weight_cache.hpp"
#include "runtime/model.hpp"

namespace ferry {

enum class CacheFormat { int4, bf16 };

struct CacheOptions {
  bool enabled = false;        // false: weights are read in place (DirectWeights)
  double budget_fraction = 0;  // of the linear weights in the cache format, when > 0
  uint64_t budget_bytes = 0;   // otherwise
  CachePolicy policy = CachePolicy::lru;
  CacheFormat format = CacheFormat::int4;
  uint32_t lookahead = 2;
};

class PagedWeights final : public WeightSource {
 public:
  // Throws ferry::Error for a budget below the minimum, stating it.
  PagedWeights(const ModelWeights& w, const CacheOptions& o);
  Linear acquire(uint32_t id) override;
  void release(uint32_t id) override;
  CacheStats stats() const { return cache_->stats(); }
  uint64_t weight_bytes() const { return total_; }  // all linear weights in the cache format
  // Entry sizes of each linear weight in a format, in schedule order.
  static std::vector<uint64_t> entry_sizes(const ModelWeights& w, CacheFormat f);

 private:
  const ModelWeights& w_;
  CacheFormat format_;
  uint64_t total_ = 0;
  std::unique_ptr<WeightCache> cache_;
};

// The statistics for `ferry run --stats`, one fact a line, per generated token where it says so.
std::string format_cache_stats(const CacheStats& s, uint64_t tokens);

}  // namespace ferry
