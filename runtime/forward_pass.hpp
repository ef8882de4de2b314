// The forward pass behind one interface, with an implementation per device: CpuForward
// (runtime/forward_cpu.cpp, read that one first: llama2.c-style, top to bottom) and CudaForward
// (runtime/forward_cuda.cpp, the same steps as kernels on a stream). The Engine holds one and never
// asks which it is; a CPU-only build links without CUDA because the CUDA pass is reached only
// through the factory `--device cuda` passes in.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "cache/backend.hpp"
#include "runtime/model.hpp"

namespace ferry {

class CpuPool;

// Which tokens of a forward call get logits: the last (generation) or all (perplexity).
enum class LogitRows { last, all };

// What a pass is sized for at load, once: a KV cache of `ctx` positions in `kv`, and forward
// calls of up to `batch` tokens (the prefill batch).
struct PassShape {
  uint64_t ctx = 0, batch = 0;
  KvType kv = KvType::f16;
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  // The paging cache's backend on this pass's device: its arena in device memory, its ready and
  // last-use signals on the compute stream. nullptr on the CPU, where the cache, when there is
  // one, runs its own host backend (and the weights may also be read in place from the file).
  virtual std::shared_ptr<CacheBackend> cache_backend() = 0;
  // Runs tokens (1 .. batch of them) at positions pos, pos+1, ... through the model in one batch,
  // each linear weight acquired from `src` in schedule order. The logits of the last token land
  // in `logits` [vocab] on the host; or, when `argmax` is given, the index of the largest (the
  // first of equals) is written there, and a device copies back only that index (the logits are
  // then left as they were). With `rows` all, every token's logits land in `logits`
  // [tokens, vocab] (perplexity scores each position) and `argmax` must be null. Throws
  // ferry::Error when the tokens would pass the context, a token id is outside the vocabulary,
  // or the batch is too large.
  virtual void forward(WeightSource& src, std::span<const int32_t> tokens, uint64_t pos,
                       std::span<float> logits, int32_t* argmax = nullptr,
                       LogitRows rows = LogitRows::last) = 0;
};

// Makes the pass of a model on a device (`--device cuda`: runtime/forward_cuda.hpp); throws
// ferry::Error with one line when the device cannot be used.
using DeviceFactory = std::function<std::unique_ptr<ForwardPass>(
    const ModelConfig& c, const ModelWeights& w, const PassShape& shape)>;

// The CPU pass (runtime/forward_cpu.cpp), its kernels on `pool`, which must outlive it.
std::unique_ptr<ForwardPass> make_cpu_forward(const ModelConfig& c, const ModelWeights& w,
                                              const PassShape& shape, CpuPool& pool);

// Bytes the CPU pass allocates for this shape: the KV cache dominates (Qwen2-32B: 256 KB a token
// in f16), then the attention scratch and the activations.
double cpu_pass_bytes(const ModelConfig& c, const PassShape& shape);

}  // namespace ferry
