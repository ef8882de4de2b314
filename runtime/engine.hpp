// One loaded model ready to generate: the packed file, its bound weights, the tokenizer, the
// thread pool of the CPU kernels, the weight source and the run state, all made once at load.
// `ferry run`, `ferry chat`, `ferry bench` and the tests load a model through here.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <span>

#include "format/packed_file.hpp"
#include "kernels/cpu_pool.hpp"
#include "runtime/device_forward.hpp"
#include "runtime/model.hpp"
#include "runtime/paged_weights.hpp"
#include "text/tokenizer.hpp"

namespace ferry {

// The context when none is given: 1024 tokens, or the model's trained context if shorter.
inline constexpr uint64_t kDefaultCtx = 1024;

struct EngineOptions {
  std::filesystem::path model;  // .ferry file
  uint64_t ctx = 0;             // KV cache size in tokens; 0: kDefaultCtx
  KvType kv = KvType::f16;      // KV cache element type (kernels/ops.hpp)
  uint64_t batch = 64;          // prefill batch: tokens per forward call
  unsigned threads = 0;         // CPU kernel threads, 0: every core
  CacheOptions cache = {};      // the paging cache; off (the default): weights read in place
  // The device the forward pass runs on: empty for the CPU; a factory (runtime/forward_cuda.hpp)
  // for the GPU, where the weights always page through the cache (budget auto unless given).
  DeviceFactory device = {};
};

struct Engine {
  explicit Engine(const EngineOptions& o);          // opens o.model
  Engine(PackedFile file, const EngineOptions& o);  // a file already open, or synthesized
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs tokens at positions pos.. in batches of at most `batch`; leaves the logits of the last
  // in state.logits. Throws ferry::Error past the context.
  void eval(std::span<const int32_t> tokens, uint64_t pos);
  // eval() and the index of the largest logit of the last token (the first of equals). On a
  // device only that index crosses the bus, and state.logits is left as it was.
  int32_t eval_greedy(std::span<const int32_t> tokens, uint64_t pos);
  const ModelConfig& config() const { return file.config; }
  // The paging cache's weight source, or nullptr when the weights are read in place.
  const PagedWeights* paged() const { return dynamic_cast<const PagedWeights*>(source.get()); }
  // Its statistics (format_cache_stats() writes them for --stats), or nullopt without a cache.
  std::optional<CacheStats> cache_stats() const;

 private:
  // eval() in batches; `argmax`, when given, receives the device's choice for the last token.
  void run(std::span<const int32_t> tokens, uint64_t pos, int32_t* argmax);

 public:
  PackedFile file;
  ModelWeights weights;
  Tokenizer tokenizer;
  CpuPool pool;
  std::unique_ptr<DeviceForward> device;  // nullptr: the forward pass runs on the CPU
  std::unique_ptr<WeightSource> source;
  RunState state;
};

// Bytes of weights one decoded token reads: every tensor but the embedding, of which one row.
double weight_bytes_per_token(const PackedFile& f);

}  // namespace ferry
