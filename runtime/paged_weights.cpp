#include "runtime/paged_weights.hpp"

#include <cstring>

#include <fmt/format.h>

#include "kernels/dequant.hpp"
#include "quantizer/atomic_file.hpp"
#include "quantizer/int4.hpp"

namespace ferry {
namespace {

constexpr uint64_t kAlign = 64;
uint64_t aligned(uint64_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

// Byte layout of an entry in the int4 format: codes, then scales, then mins, each 64-aligned.
struct Int4Layout {
  uint64_t q, scales, mins, total;
};
Int4Layout int4_layout(const Linear& l) {
  const uint64_t blocks = int4_blocks_per_row(l.cols);
  const uint64_t q = l.rows * blocks * kBlockBytes, s = l.rows * blocks * 2;
  return {0, aligned(q), aligned(q) + aligned(s), aligned(q) + aligned(s) + (l.mins ? s : 0)};
}

uint64_t entry_bytes(const Linear& l, CacheFormat f) {
  if (!l.q4 || f == CacheFormat::bf16) return l.rows * l.cols * 2;
  return int4_layout(l).total;
}

void fill(const Linear& l, CacheFormat f, uint8_t* dst) {
  if (!l.q4) {
    std::memcpy(dst, l.bf16, l.rows * l.cols * 2);
  } else if (f == CacheFormat::bf16) {  // dequantized while filling, on the prefetch thread
    dequant_int4_bf16_cpu(l.q4, l.scales, l.mins, l.rows, l.cols, reinterpret_cast<uint16_t*>(dst));
  } else {
    const Int4Layout m = int4_layout(l);
    const uint64_t blocks = int4_blocks_per_row(l.cols);
    std::memcpy(dst + m.q, l.q4, l.rows * blocks * kBlockBytes);
    std::memcpy(dst + m.scales, l.scales, l.rows * blocks * 2);
    if (l.mins) std::memcpy(dst + m.mins, l.mins, l.rows * blocks * 2);
  }
}

}  // namespace

std::vector<uint64_t> PagedWeights::entry_sizes(const ModelWeights& w, CacheFormat f) {
  std::vector<uint64_t> sizes;
  for (const Linear& l : w.linears) sizes.push_back(entry_bytes(l, f));
  return sizes;
}

PagedWeights::PagedWeights(const ModelWeights& w, const CacheOptions& o)
    : w_(w), format_(o.format) {
  const std::vector<uint64_t> sizes = entry_sizes(w, o.format);
  std::vector<uint32_t> layers;
  for (uint32_t id = 0; id < sizes.size(); ++id) {
    layers.push_back(id / kLinearsPerLayer);
    total_ += aligned(sizes[id]);
  }
  const uint64_t budget =
      o.budget_fraction > 0 ? uint64_t(o.budget_fraction * double(total_)) : o.budget_bytes;
  cache_ = std::make_unique<WeightCache>(
      sizes, layers, budget, o.policy, o.lookahead,
      [this](uint32_t id, uint8_t* dst) { fill(w_.linears[id], format_, dst); });
}

Linear PagedWeights::acquire(uint32_t id) {
  Linear l = w_.linears.at(id);
  const uint8_t* p = cache_->acquire(id);
  if (!l.q4 || format_ == CacheFormat::bf16) {
    l.q4 = nullptr;
    l.scales = l.mins = nullptr;
    l.bf16 = reinterpret_cast<const uint16_t*>(p);
    return l;
  }
  const Int4Layout m = int4_layout(l);
  l.q4 = p + m.q;
  l.scales = reinterpret_cast<const uint16_t*>(p + m.scales);
  if (l.mins) l.mins = reinterpret_cast<const uint16_t*>(p + m.mins);
  return l;
}

void PagedWeights::release(uint32_t id) {
  cache_->release(id);
}

std::string format_cache_stats(const CacheStats& s, uint64_t tokens) {
  const double per_token = tokens ? double(s.uploaded_bytes) / double(tokens) : 0;
  return fmt::format(
      "cache: budget {}, pinned {}, resident {}, high-water {}\n"
      "cache: {} weight uses, {} hits ({:.1f}%), {} uploads ({} per token), {} evictions, {} "
      "on-demand fetches\n"
      "cache: compute waited {:.3f} s for weights\n",
      human_bytes(double(s.budget)), human_bytes(double(s.pinned_bytes)),
      human_bytes(double(s.resident_bytes)), human_bytes(double(s.high_water)), s.acquires, s.hits,
      s.acquires ? 100.0 * double(s.hits) / double(s.acquires) : 0.0, s.uploads,
      human_bytes(per_token), s.evictions, s.sync_fetches, s.wait_seconds);
}

}  // namespace ferry
