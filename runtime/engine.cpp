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

// --ctx, or its default: kDefaultCtx, or the model's trained context where that is shorter.
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

uint64_t context_size(const EngineOptions& o, const ModelConfig& c) {
  if (o.batch == 0) throw Error("the prefill batch must be at least 1 token");
  return o.ctx ? o.ctx : std::min(kDefaultCtx, c.max_position);
}

std::unique_ptr<DeviceForward> make_device(const PackedFile& f, const ModelWeights& w,
                                           const EngineOptions& o) {
  if (!o.device) return nullptr;
  const uint64_t ctx = context_size(o, f.config);
  return o.device(f.config, w, ctx, std::min(o.batch, ctx), o.kv);
}

// The run state, once a context past the model's trained length has been warned about and one
// that host memory cannot hold (the KV cache, when the forward pass runs on the CPU) refused.
RunState make_state(const ModelConfig& c, const EngineOptions& o, bool host_compute) {
  const uint64_t ctx = context_size(o, c), batch = std::min(o.batch, ctx);
  const double need = run_state_bytes(c, ctx, batch, o.kv, host_compute);
  if (const uint64_t have = host_memory_available(); have && need > double(have))
    throw Error(fmt::format(
        "--ctx {} needs {} of host memory for the {} KV cache and activations, and {} is "
        "available; lower --ctx",
        ctx, human_bytes(need), kv_type_name(o.kv), human_bytes(double(have))));
  if (ctx > c.max_position)
    std::fprintf(stderr,
                 "ferry: warning: --ctx %llu is past the %llu positions the model was trained on; "
                 "text beyond them degrades\n",
                 (unsigned long long)ctx, (unsigned long long)c.max_position);
  return RunState(c, ctx, batch, o.kv, host_compute);
}

// On the CPU, no cache unless asked: the weights are read in place from the file's memory. On a
// device they always page through its cache, whose budget is `auto` unless one is given.
std::unique_ptr<WeightSource> make_source(const PackedFile& f, const ModelWeights& w,
                                          const EngineOptions& o, DeviceForward* device) {
  if (!device) {
    if (!o.cache.enabled) return std::make_unique<DirectWeights>(w);
    return std::make_unique<PagedWeights>(f, w, o.cache, o.threads);
  }
  CacheOptions c = o.cache;
  if (!c.enabled) c.enabled = c.budget_auto = true;
  if (c.backend)
    throw Error("internal error: a cache backend given with a device (the device brings its own)");
  c.backend = device->cache_backend();
  return std::make_unique<PagedWeights>(f, w, c, o.threads);
}

}  // namespace

Engine::Engine(const EngineOptions& o) : Engine(PackedFile::open(o.model), o) {}

Engine::Engine(PackedFile f, const EngineOptions& o)
    : file(std::move(f)),
      weights(bind_weights(file)),
      tokenizer(load_tokenizer(file)),
      pool(o.threads),
      device(make_device(file, weights, o)),
      source(make_source(file, weights, o, device.get())),
      state(make_state(file.config, o, device == nullptr)) {}

void Engine::eval(std::span<const int32_t> tokens, uint64_t pos) {
  run(tokens, pos, nullptr);
}

int32_t Engine::eval_greedy(std::span<const int32_t> tokens, uint64_t pos) {
  int32_t token = -1;
  run(tokens, pos, device ? &token : nullptr);
  if (!device)
    token =
        int32_t(std::max_element(state.logits.begin(), state.logits.end()) - state.logits.begin());
  return token;
}

void Engine::run(std::span<const int32_t> tokens, uint64_t pos, int32_t* argmax) {
  if (pos + tokens.size() > state.ctx)
    throw Error(fmt::format("{} tokens at position {} exceed the context of {}; raise --ctx",
                            tokens.size(), pos, state.ctx));
  for (size_t i = 0; i < tokens.size(); i += state.batch) {
    const size_t n = std::min<size_t>(state.batch, tokens.size() - i);
    const bool last = i + n == tokens.size();
    if (device)
      device->forward(*source, tokens.subspan(i, n), pos + i, state.logits,
                      last ? argmax : nullptr);
    else
      forward(file.config, weights, *source, pool, state, tokens.subspan(i, n), pos + i);
  }
}

std::optional<CacheStats> Engine::cache_stats() const {
  if (const PagedWeights* p = paged()) return p->stats();
  return std::nullopt;
}

double weight_bytes_per_token(const PackedFile& f) {
  double b = 0;
  for (const TensorView& t : f.file.tensors())
    b += t.name == "model.embed_tokens.weight" ? double(t.nbytes) / double(t.shape[0])
                                               : double(t.nbytes);
  return b;
}

}  // namespace ferry
