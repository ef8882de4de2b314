// One loaded model ready to generate: the packed file, its bound weights, the tokenizer, the
// thread pool of the CPU kernels, the weight source and the forward pass (CPU or a device's),
// all made once at load. `ferry run`, `ferry chat`, `ferry bench` and the tests load a model
// through here.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/packed_file.hpp"
#include "kernels/cpu_pool.hpp"
#include "runtime/forward_pass.hpp"
#include "runtime/model.hpp"
#include "runtime/paged_weights.hpp"
#include "text/tokenizer.hpp"

namespace ferry {

// The context when none is given: 1024 tokens, or the model's trained context if shorter.
inline constexpr uint64_t kDefaultCtx = 1024;

struct EngineOptions {
  std::filesystem::path model;  // .ferry file
  uint64_t ctx = 0;             // KV cache size in tokens; 0: kDefaultCtx
  KvType kv = KvType::f16;      // KV cache element type (kernels/attention.hpp)
  uint64_t batch = 64;          // prefill batch: tokens per forward call
  uint64_t parallel = 1;        // sequences served at once: KV slots of ctx tokens each
  unsigned threads = 0;         // CPU kernel threads, 0: every core
  CacheOptions cache = {};      // the paging cache; off (the default): weights read in place
  // The device the forward pass runs on: empty for the CPU; a factory (runtime/forward_cuda.hpp)
  // for the GPU, where the weights always page through the cache (budget auto unless given).
  DeviceFactory device = {};
  // CPU INT4 and INT8 linears on INT8-quantized activations (runtime/forward_pass.hpp); false:
  // fp32, for reference comparisons with the CUDA GEMV.
  bool cpu_int8_activations = true;
};

class Engine {
 public:
  explicit Engine(const EngineOptions& o);          // opens o.model
  Engine(PackedFile file, const EngineOptions& o);  // a file already open, or synthesized
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs tokens at positions pos.. in batches of at most batch(); leaves the logits of the last
  // in logits(). Throws ferry::Error past the context.
  void eval(std::span<const int32_t> tokens, uint64_t pos);
  // eval() and the index of the largest logit of the last token (the first of equals). On a
  // device only that index crosses the bus, and logits() is left as it was.
  int32_t eval_greedy(std::span<const int32_t> tokens, uint64_t pos);
  // Every token's logits into `out` [tokens, vocab] (perplexity), in batches of at most batch();
  // logits() is left as it was.
  void eval_all(std::span<const int32_t> tokens, uint64_t pos, std::span<float> out);
  // One forward pass over chunks of several sequences, each in its own KV slot (the
  // scheduler's step; ForwardPass::forward_seqs says what lands in `logits` [seqs, vocab] and
  // `argmax` [seqs], which may be empty for no device argmax). eval() and eval_greedy() use
  // slot 0.
  void eval_seqs(std::span<const SeqChunk> seqs, std::span<float> logits,
                 std::span<int32_t> argmax);

  const ModelConfig& config() const { return file_.config; }
  const PackedFile& file() const { return file_; }
  const ModelWeights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  CpuPool& pool() { return pool_; }
  uint64_t ctx() const { return shape_.ctx; }
  uint64_t batch() const { return shape_.batch; }     // tokens a pass: --batch, >= parallel()
  uint64_t parallel() const { return shape_.slots; }  // KV slots
  // [vocab] of the last token of the last eval() (and of eval_greedy() on the CPU). Mutable for
  // the sampler, which scales and filters them in place; the next eval() overwrites them.
  std::span<const float> logits() const { return logits_; }
  std::span<float> logits() { return logits_; }
  // The paging cache's weight source, or nullptr when the weights are read in place.
  const PagedWeights* paged() const { return paged_; }
  // Its statistics (format_cache_stats() writes them for --stats), or nullopt without a cache.
  std::optional<CacheStats> cache_stats() const;
  // The same with no prefetch in flight (PagedWeights::settled_stats): for the end of a run, where
  // a snapshot must agree with the backend's counters. Not while another thread generates.
  std::optional<CacheStats> settled_cache_stats();
  PassStats pass_stats() const { return pass_->stats(); }
  // What the caller should warn of (Setting::ctx), or empty: a context past the positions the
  // model was trained on. The library prints nothing itself; the command line names its flag.
  std::string context_warning() const;
  // Tests: replaces the weight source (e.g. with one that serves dequantized weights). The
  // engine then reports no cache.
  void replace_weight_source(std::unique_ptr<WeightSource> source);

 private:
  // eval() in batches; `argmax`, when given, receives the pass's choice for the last token.
  void run(std::span<const int32_t> tokens, uint64_t pos, int32_t* argmax);
  void check_room(uint64_t tokens, uint64_t pos) const;  // throws past the context

  PackedFile file_;
  ModelWeights weights_;
  Tokenizer tokenizer_;
  CpuPool pool_;
  PassShape shape_;
  std::unique_ptr<ForwardPass> pass_;
  PagedWeights* paged_ = nullptr;  // source_ when it is the paging cache (set by its maker)
  std::unique_ptr<WeightSource> source_;
  std::vector<float> logits_;  // [vocab]
};

// Host memory a load with these options takes beyond the file's own bytes: on the CPU its KV slots
// and activations, and the paging cache's host store and CPU arena (cache_host_bytes). The Engine
// checks the same parts as it makes them; `ferry bench` checks every run of a sweep before the
// first, so that the last run cannot be killed for memory after hours of the others.
uint64_t host_bytes_needed(const PackedFile& f, const EngineOptions& o);

// Bytes of weights one decoded token reads: every tensor but the embedding, of which one row.
double weight_bytes_per_token(const PackedFile& f);

}  // namespace ferry
