#include "runtime/paged_weights.hpp"

#include <cstring>
#include <map>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "cache/backend_cpu.hpp"
#include "format/int4.hpp"
#include "runtime/machine/host_memory.hpp"

namespace ferry {
namespace {

// The file's tensors of one linear weight: {q4, scales[, mins]}, {q8, scales} or {bf16}.
struct LinearTensors {
  std::vector<const TensorView*> parts;
  std::string name;  // the weight, e.g. "model.layers.3.mlp.up_proj"
};

std::string weight_name(std::string tensor) {
  for (const char* suffix : {".q4", ".q8", ".weight"})
    if (tensor.ends_with(suffix)) tensor.resize(tensor.size() - std::strlen(suffix));
  return tensor;
}

// bind_weights() binds pointers, not names: the tensors are found again by where their data lies.
std::vector<LinearTensors> linear_tensors(const PackedFile& f, const ModelWeights& w) {
  std::map<const uint8_t*, const TensorView*> at;
  for (const TensorView& t : f.file.tensors()) at.emplace(t.data, &t);
  auto find = [&](const void* p) {
    const auto it = at.find(static_cast<const uint8_t*>(p));
    if (it == at.end()) throw Error("internal error: a linear weight is not a tensor of the file");
    return it->second;
  };
  std::vector<LinearTensors> out;
  for (const Linear& l : w.linears) {
    LinearTensors t;
    if (l.is_int4()) {
      t.parts = {find(l.q4.q), find(l.q4.scales)};
      if (l.q4.mins) t.parts.push_back(find(l.q4.mins));
    } else if (l.is_int8()) {
      t.parts = {find(l.q8.q), find(l.q8.scales)};
    } else {
      t.parts = {find(l.bf16)};
    }
    t.name = weight_name(t.parts[0]->name);
    out.push_back(std::move(t));
  }
  return out;
}

// How the INT4 or INT8 weight lies in its entry (cache/schedule.hpp).
Int4EntryLayout entry_layout(const Linear& l) {
  if (l.is_int8()) return int8_entry_layout(l.rows, l.cols);
  return int4_entry_layout(l.rows, l.cols, l.q4.has_mins());
}

// The int4 cache format keeps every quantized weight as stored (INT4 or INT8); bf16 dequantizes.
bool quantized(const Linear& l) {
  return l.is_int4() || l.is_int8();
}

uint64_t entry_bytes(const Linear& l, CacheFormat format) {
  if (!quantized(l) || format == CacheFormat::bf16) return l.rows * l.cols * 2;
  return entry_layout(l).bytes();
}

// The codes and the scales of a quantized weight, whichever its format.
const uint8_t* codes(const Linear& l) {
  return l.is_int8() ? reinterpret_cast<const uint8_t*>(l.q8.q) : l.q4.q;
}
const uint16_t* scales(const Linear& l) {
  return l.is_int8() ? l.q8.scales : l.q4.scales;
}

}  // namespace

const char* format_name(CacheFormat f) {
  return f == CacheFormat::bf16 ? "bf16" : "int4";
}

Schedule paging_schedule(const PackedFile& f, const ModelWeights& w, CacheFormat format) {
  const std::vector<LinearTensors> tensors = linear_tensors(f, w);
  Schedule s;
  for (uint32_t id = 0; id < w.linears.size(); ++id)
    s.weights.push_back({.bytes = entry_bytes(w.linears[id], format),
                         .layer = id / kLinearsPerLayer,
                         .name = tensors[id].name});
  return s;
}

namespace {

uint64_t resolved_budget(const CacheOptions& o, const CacheBackend& backend, uint64_t whole) {
  return o.budget_auto           ? backend.auto_budget(whole)
         : o.budget_fraction > 0 ? uint64_t(o.budget_fraction * double(whole))
                                 : o.budget_bytes;
}

// The host store and a host arena would not fit: one line before a byte is allocated (a 32B
// model's store alone is 18 GB, and the kernel's OOM killer gives no message).
void check_host_memory(const PackedFile& f, const ModelWeights& w, const CacheOptions& o) {
  const uint64_t need = cache_host_bytes(f, w, o), have = host_memory_available();
  if (have == 0 || need <= have) return;
  const bool host_arena = !o.backend || o.backend->arena_in_host_memory();
  throw Error(
      Setting::cache_budget,
      fmt::format("the paging cache needs {} of host memory ({} copy of the weights{}) "
                  "and {} is available; {}",
                  human_bytes(double(need)),
                  human_bytes(double(paging_schedule(f, w, CacheFormat::int4).whole_bytes())),
                  host_arena ? " plus the arena of the budget" : "", human_bytes(double(have)),
                  host_arena ? "lower it, or run without a cache on the CPU"
                             : "free host memory or use a smaller model"));
}

}  // namespace

uint64_t cache_host_bytes(const PackedFile& f, const ModelWeights& w, const CacheOptions& o) {
  const uint64_t store = paging_schedule(f, w, CacheFormat::int4).whole_bytes();
  if (o.backend && !o.backend->arena_in_host_memory()) return store;
  const CpuBackend cpu;
  const CacheBackend* backend = o.backend ? o.backend.get() : &cpu;
  return store + resolved_budget(o, *backend, paging_schedule(f, w, o.format).whole_bytes());
}

PagedWeights::PagedWeights(const PackedFile& f, const ModelWeights& w, const CacheOptions& o,
                           unsigned threads)
    : format_(o.format),
      backend_(o.backend ? o.backend : std::make_shared<CpuBackend>()),
      stored_(w.linears) {
  check_host_memory(f, w, o);
  backend_->set_stress(o.stress);
  // The host store: every part of every linear weight, in id order.
  const std::vector<LinearTensors> tensors = linear_tensors(f, w);
  std::vector<HostPiece> pieces;
  for (const LinearTensors& t : tensors)
    for (const TensorView* v : t.parts) {
      const auto sum = f.checksums.find(v->name);
      pieces.push_back({v->name, v->data, v->nbytes, sum == f.checksums.end() ? "" : sum->second});
    }
  store_ = std::make_unique<HostWeightStore>(*backend_, pieces,
                                             HostStoreOptions{threads, o.verify, o.progress});
  size_t piece = 0;
  for (Linear& l : stored_) {
    if (l.is_int4()) {
      l.q4.q = store_->piece(piece++);
      l.q4.scales = reinterpret_cast<const uint16_t*>(store_->piece(piece++));
      if (l.q4.mins) l.q4.mins = reinterpret_cast<const uint16_t*>(store_->piece(piece++));
    } else if (l.is_int8()) {
      l.q8.q = reinterpret_cast<const int8_t*>(store_->piece(piece++));
      l.q8.scales = reinterpret_cast<const uint16_t*>(store_->piece(piece++));
    } else {
      l.bf16 = reinterpret_cast<const uint16_t*>(store_->piece(piece++));
    }
    layouts_.push_back(entry_layout(l));
  }

  Schedule schedule = paging_schedule(f, w, o.format);
  const uint64_t whole = schedule.whole_bytes();
  const uint64_t budget = resolved_budget(o, *backend_, whole);
  cache_ = std::make_unique<DeviceCache>(
      *backend_, std::move(schedule),
      CacheConfig{
          .budget = budget, .policy = o.policy, .lookahead = o.lookahead, .on_evict = o.on_evict},
      [this](uint32_t id, uint8_t* dst) { fill(id, dst); });
}

PagedWeights::~PagedWeights() = default;

// Runs on the prefetch thread (or the compute thread on a miss, or at load).
void PagedWeights::fill(uint32_t id, uint8_t* dst) {
  const Linear& l = stored_[id];
  if (!quantized(l)) {
    backend_->copy(dst, reinterpret_cast<const uint8_t*>(l.bf16), l.rows * l.cols * 2);
  } else if (format_ == CacheFormat::bf16 && l.is_int8()) {
    backend_->dequant_int8_bf16(l.q8, reinterpret_cast<uint16_t*>(dst));
  } else if (format_ == CacheFormat::bf16) {
    backend_->dequant_int4_bf16(l.q4, reinterpret_cast<uint16_t*>(dst));
  } else if (const uint64_t whole = contiguous_bytes(id)) {
    // The host store lays a weight's parts out as the entry does (each part 256-aligned, in
    // order): one upload per weight instead of three. A 7B's k_proj is 0.9 MB of codes and 28 KB
    // of scales, and every cudaMemcpyAsync pays a fixed launch and DMA set-up cost on top of its
    // bytes; the 28 KB copies would run far below PCIe speed.
    backend_->copy(dst, codes(l), whole);
  } else {
    const Int4EntryLayout& m = layouts_[id];
    backend_->copy(dst, codes(l), m.code_bytes);
    backend_->copy(dst + m.scales_at, reinterpret_cast<const uint8_t*>(scales(l)), m.scale_bytes);
    if (l.q4.mins)
      backend_->copy(dst + m.mins_at, reinterpret_cast<const uint8_t*>(l.q4.mins), m.scale_bytes);
  }
}

uint64_t PagedWeights::contiguous_bytes(uint32_t id) const {
  const Linear& l = stored_[id];
  const Int4EntryLayout& m = layouts_[id];
  const uint8_t* q = codes(l);
  if (reinterpret_cast<const uint8_t*>(scales(l)) != q + m.scales_at) return 0;
  if (l.q4.mins && reinterpret_cast<const uint8_t*>(l.q4.mins) != q + m.mins_at) return 0;
  return m.bytes();
}

Linear PagedWeights::acquire(uint32_t id) {
  const uint8_t* p = cache_->acquire(id);
  Linear l = stored_[id];
  if (!quantized(l) || format_ == CacheFormat::bf16) {
    l.q4 = {};
    l.q8 = {};
    l.bf16 = reinterpret_cast<const uint16_t*>(p);
    return l;
  }
  if (l.is_int8())
    l.q8 = int8_entry_view(layouts_[id], p, l.rows, l.cols);
  else
    l.q4 = int4_entry_view(layouts_[id], p, l.rows, l.cols);
  return l;
}

void PagedWeights::release(uint32_t id) {
  cache_->release(id);
}

}  // namespace ferry
