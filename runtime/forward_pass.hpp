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
#include <string>

#include "cache/backend.hpp"
#include "runtime/model.hpp"

namespace ferry {

class CpuPool;

// Which tokens of a forward call get logits: the last (generation) or all (perplexity).
enum class LogitRows { last, all };

// What a pass is sized for at load, once: `slots` KV caches (one per sequence served at once) of
// `ctx` positions in `kv`, and forward calls of up to `batch` tokens in all (the prefill batch).
struct PassShape {
  uint64_t ctx = 0, batch = 0, slots = 1;
  KvType kv = KvType::f16;
};

// One sequence's share of a forward call: `tokens` at positions pos, pos+1, ... of KV slot
// `slot` (a decoding sequence's next token, or a chunk of a prompt).
struct SeqChunk {
  uint64_t slot = 0, pos = 0;
  std::span<const int32_t> tokens;
};

// What a pass counts of its own work (`--stats`): the CUDA pass's decode steps run as graphs.
struct PassStats {
  uint64_t graph_launches = 0;  // steps launched as one CUDA graph (--cuda-graph)
  uint64_t graph_builds = 0;    // graph instantiations: the first step, then each new topology
  uint64_t graph_updates = 0;   // steps that updated the instantiated graph in place
  uint64_t graph_failures = 0;  // recordings that failed, their steps run on the stream instead
  std::string graph_error;      // the last failure's message
};

// Lines for --stats ("cuda graph: ..."), or empty when no step ran as a graph or tried to.
std::string format_pass_stats(const PassStats& s);

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  virtual PassStats stats() const { return {}; }
  // The paging cache's backend on this pass's device: its arena in device memory, its ready and
  // last-use signals on the compute stream. nullptr on the CPU, where the cache, when there is
  // one, runs its own host backend (and the weights may also be read in place from the file).
  virtual std::shared_ptr<CacheBackend> cache_backend() = 0;
  // Runs the chunks of several sequences (1 .. batch tokens in all, each slot at most once)
  // through the model in one batch: every linear weight is acquired from `src` once, in schedule
  // order, and multiplies all rows; attention runs per sequence over its own slot. The logits of
  // each chunk's last token land in `logits` [seqs, vocab] on the host; or, when `argmax` is
  // given, the index of each one's largest (the first of equals) lands in argmax[seqs], and a
  // device copies back only those (its logits are then left as they were; the CPU fills them
  // all the same, so `logits` is sized [seqs, vocab] either way). With `rows` all (one
  // chunk only), every token's logits land in `logits` [tokens, vocab] (perplexity) and `argmax`
  // must be null. Throws ferry::Error when a chunk would pass the context, a token id is outside
  // the vocabulary, or the batch is too large.
  virtual void forward_seqs(WeightSource& src, std::span<const SeqChunk> seqs,
                            std::span<float> logits, int32_t* argmax,
                            LogitRows rows = LogitRows::last) = 0;
  // One sequence in slot 0: tokens at positions pos, pos+1, ...
  void forward(WeightSource& src, std::span<const int32_t> tokens, uint64_t pos,
               std::span<float> logits, int32_t* argmax = nullptr,
               LogitRows rows = LogitRows::last) {
    const SeqChunk one{.slot = 0, .pos = pos, .tokens = tokens};
    forward_seqs(src, std::span(&one, 1), logits, argmax, rows);
  }
};

// Throws ferry::Error unless `seqs` is a call forward_seqs() takes (every backend checks with
// this one): 1 .. batch tokens in all, each chunk within the context and the vocabulary, slots
// below shape.slots and distinct, `logits` large enough for `rows`, no argmax with every row.
// Returns the tokens in all.
uint64_t check_forward_seqs(const ModelConfig& c, const PassShape& shape,
                            std::span<const SeqChunk> seqs, std::span<const float> logits,
                            const int32_t* argmax, LogitRows rows);

// Makes the pass of a model on a device (`--device cuda`: runtime/forward_cuda.hpp); throws
// ferry::Error with one line when the device cannot be used.
using DeviceFactory = std::function<std::unique_ptr<ForwardPass>(
    const ModelConfig& c, const ModelWeights& w, const PassShape& shape)>;

// Sees the input rows of every linear of a CPU pass (`ferry calibrate`, runtime/calibration.hpp):
// x [n, cols] just before the product with weight `id` (linear_id order).
class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  virtual void observe(uint32_t id, const float* x, uint64_t n, uint64_t cols) = 0;
};

// The CPU pass (runtime/forward_cpu.cpp), its kernels on `pool`, which must outlive it.
// int8_activations: INT4 linears multiply activations quantized to INT8 per block of 128
// (matmul_int4_q8_cpu, the fast path); false: fp32 activations (matmul_int4_cpu), the exact
// reference the GPU tests compare the CUDA GEMV with at 1e-4. `observer` (null: none, and no
// cost) must outlive the pass too.
std::unique_ptr<ForwardPass> make_cpu_forward(const ModelConfig& c, const ModelWeights& w,
                                              const PassShape& shape, CpuPool& pool,
                                              bool int8_activations = true,
                                              LinearObserver* observer = nullptr);

// Bytes the CPU pass allocates for this shape: the KV cache dominates (Qwen2-32B: 256 KB a token
// in f16), then the attention scratch and the activations.
double cpu_pass_bytes(const ModelConfig& c, const PassShape& shape);

}  // namespace ferry
