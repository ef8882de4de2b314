#include "runtime/engine.hpp"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "runtime/machine/host_memory.hpp"

namespace ferry {
namespace {

std::string meta_or_empty(const PackedFile& f, const char* key) {
  auto it = f.file.metadata().find(key);
  return it == f.file.metadata().end() ? std::string() : it->second;
}

// The tokenizer the packed file carries; a file without one (written by hand, or damaged) is
// named with what to do, rather than failing as an empty tokenizer.json.
Tokenizer load_tokenizer(const PackedFile& f) {
  if (!f.file.metadata().contains(meta::kTokenizer))
    throw Error(fmt::format(
        "the packed file holds no tokenizer (metadata key {}); convert the checkpoint again with "
        "ferry quantize",
        meta::kTokenizer));
  return Tokenizer::from_json(meta_or_empty(f, meta::kTokenizer),
                              meta_or_empty(f, meta::kTokenizerConfig));
}

// --ctx, or its default: kDefaultCtx, or the model's trained context where that is shorter.
PassShape pass_shape(const ModelConfig& c, const EngineOptions& o) {
  if (o.batch == 0) throw Error("the prefill batch must be at least 1 token");
  if (o.parallel == 0 || o.parallel > 4096)
    throw Error(Setting::parallel,
                fmt::format("{} sequences at once is outside 1 .. 4096", o.parallel));
  PassShape s;
  s.slots = o.parallel;
  // A sliding window also bounds the default: within it, full attention is the model's own.
  s.ctx = o.ctx ? o.ctx
                : std::min({kDefaultCtx, c.max_position,
                            c.sliding_window ? c.sliding_window : c.max_position,
                            c.context_limit ? c.context_limit : c.max_position});
  if (c.context_limit && s.ctx > c.context_limit)
    throw Error(Setting::ctx,
                fmt::format("the model was packed for contexts up to {} tokens (quantize "
                            "--max-context) and the context asked is {}; lower it",
                            c.context_limit, s.ctx));
  if (c.sliding_window && s.ctx > c.sliding_window)
    throw Error(Setting::ctx,
                fmt::format("config.json's sliding_window is {} tokens and the context {}: ferry "
                            "does not implement sliding-window attention; lower the context to {} "
                            "or less",
                            c.sliding_window, s.ctx, c.sliding_window));
  // A pass holds at most --batch prompt tokens (no more than a context), and at least one token
  // of every slot: a decode step of 64 sequences is one pass, whatever --batch says.
  s.batch = std::max(std::min(o.batch, s.ctx), s.slots);
  s.kv = o.kv;
  return s;
}

// The pass on its device, or on the CPU once a context whose KV cache and activations host
// memory cannot hold has been refused (a device holds its own).
std::unique_ptr<ForwardPass> make_pass(const ModelConfig& c, const ModelWeights& w,
                                       const PassShape& s, const EngineOptions& o, CpuPool& pool) {
  if (o.device) return o.device(c, w, s);
  const double need = cpu_pass_bytes(c, s);
  if (const uint64_t have = host_memory_available(); have && need > double(have))
    throw Error(
        Setting::ctx,
        fmt::format(
            "a context of {} tokens needs {} of host memory for the {} KV cache and activations, "
            "and {} is available; lower it",
            s.ctx, human_bytes(need), kv_type_name(s.kv), human_bytes(double(have))));
  return make_cpu_forward(c, w, s, pool, o.cpu_int8_activations);
}

// Without a device backend, no cache unless asked: the weights are read in place from the file's
// memory. With one they always page through it, whose budget is `auto` unless one is given.
// `paged` is set to the cache when the source is one.
std::unique_ptr<WeightSource> make_source(const PackedFile& f, const ModelWeights& w,
                                          const EngineOptions& o, ForwardPass& pass,
                                          PagedWeights*& paged) {
  std::shared_ptr<CacheBackend> device = pass.cache_backend();
  if (!device && !o.cache.enabled) return std::make_unique<DirectWeights>(w);
  if (!device) {
    auto cache = std::make_unique<PagedWeights>(f, w, o.cache, o.threads);
    paged = cache.get();
    return cache;
  }
  CacheOptions c = o.cache;
  if (!c.enabled) c.enabled = c.budget_auto = true;
  if (c.backend)
    throw Error("internal error: a cache backend given with a device (the device brings its own)");
  c.backend = std::move(device);
  auto cache = std::make_unique<PagedWeights>(f, w, c, o.threads);
  paged = cache.get();
  return cache;
}

}  // namespace

uint64_t host_bytes_needed(const PackedFile& f, const EngineOptions& o) {
  const ModelWeights w = bind_weights(f);
  const PassShape s = pass_shape(f.config, o);
  uint64_t need = o.device ? 0 : uint64_t(cpu_pass_bytes(f.config, s));
  if (o.device)  // the pinned host store; the arena is device memory
    need += paging_schedule(f, w, CacheFormat::int4).whole_bytes();
  else if (o.cache.enabled)
    need += cache_host_bytes(f, w, o.cache);
  return need;
}

Engine::Engine(const EngineOptions& o) : Engine(PackedFile::open(o.model), o) {}

Engine::Engine(PackedFile f, const EngineOptions& o)
    : file_(std::move(f)),
      weights_(bind_weights(file_)),
      tokenizer_(load_tokenizer(file_)),
      pool_(o.threads),
      shape_(pass_shape(file_.config, o)),
      pass_(make_pass(file_.config, weights_, shape_, o, pool_)),
      source_(make_source(file_, weights_, o, *pass_, paged_)),
      logits_(file_.config.vocab) {}

std::string Engine::context_warning() const {
  if (shape_.ctx <= config().max_position) return {};
  return fmt::format(
      "a context of {} tokens is past the {} positions the model was trained on; text beyond "
      "them degrades",
      shape_.ctx, config().max_position);
}

void Engine::eval(std::span<const int32_t> tokens, uint64_t pos) {
  run(tokens, pos, nullptr);
}

int32_t Engine::eval_greedy(std::span<const int32_t> tokens, uint64_t pos) {
  int32_t token = -1;
  run(tokens, pos, &token);
  return token;
}

void Engine::eval_all(std::span<const int32_t> tokens, uint64_t pos, std::span<float> out) {
  check_room(tokens.size(), pos);
  const uint64_t vocab = config().vocab;
  if (out.size() < tokens.size() * vocab)
    throw Error(fmt::format("eval_all: room for {} logits rows, {} tokens given",
                            out.size() / vocab, tokens.size()));
  for (size_t i = 0; i < tokens.size(); i += shape_.batch) {
    const size_t n = std::min<size_t>(shape_.batch, tokens.size() - i);
    pass_->forward(*source_, tokens.subspan(i, n), pos + i, out.subspan(i * vocab, n * vocab),
                   nullptr, LogitRows::all);
  }
}

void Engine::eval_seqs(std::span<const SeqChunk> seqs, std::span<float> logits,
                       std::span<int32_t> argmax) {
  if (!argmax.empty() && argmax.size() < seqs.size())
    throw Error("internal error: the argmax span is smaller than the sequences");
  pass_->forward_seqs(*source_, seqs, logits, argmax.empty() ? nullptr : argmax.data());
}

void Engine::check_room(uint64_t tokens, uint64_t pos) const {
  if (pos + tokens > shape_.ctx)
    throw Error(Setting::ctx,
                fmt::format("{} tokens at position {} exceed the context of {}; raise it", tokens,
                            pos, shape_.ctx));
}

void Engine::run(std::span<const int32_t> tokens, uint64_t pos, int32_t* argmax) {
  check_room(tokens.size(), pos);
  for (size_t i = 0; i < tokens.size(); i += shape_.batch) {
    const size_t n = std::min<size_t>(shape_.batch, tokens.size() - i);
    const bool last = i + n == tokens.size();
    pass_->forward(*source_, tokens.subspan(i, n), pos + i, logits_, last ? argmax : nullptr);
  }
}

std::optional<CacheStats> Engine::cache_stats() const {
  if (paged_) return paged_->stats();
  return std::nullopt;
}

std::optional<CacheStats> Engine::settled_cache_stats() {
  if (paged_) return paged_->settled_stats();
  return std::nullopt;
}

void Engine::replace_weight_source(std::unique_ptr<WeightSource> source) {
  source_ = std::move(source);
  paged_ = nullptr;
}

double weight_bytes_per_token(const PackedFile& f) {
  // A tied lm_head stored once is the embedding: then every row of it is read (by lm_head).
  const bool embed_is_lm_head = f.storage.lm_head == LmHeadStorage::embedding;
  double b = 0;
  for (const TensorView& t : f.file.tensors())
    b += t.name == "model.embed_tokens.weight" && !embed_is_lm_head
             ? double(t.nbytes) / double(t.shape[0])
             : double(t.nbytes);
  return b;
}

}  // namespace ferry
