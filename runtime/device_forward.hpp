// The forward pass on a device other than the host CPU. The core library knows it only through
// this interface, so that a CPU-only build links without CUDA; the CUDA backend
// (runtime/forward_cuda.hpp) implements it and `--device cuda` passes its factory to the Engine.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "cache/backend.hpp"
#include "runtime/model.hpp"

namespace ferry {

class DeviceForward {
 public:
  virtual ~DeviceForward() = default;
  // The paging cache's backend on this device: its arena in device memory, its ready and
  // last-use signals on this forward pass's compute stream. The weights always page through it
  // (the device cannot read them in place from the file).
  virtual std::shared_ptr<CacheBackend> cache_backend() = 0;
  // As forward() of runtime/model.hpp, on the device: the logits of the last token land in
  // `logits` [vocab] on the host; or, when `argmax` is given, only the index of the largest
  // (the first of equals) is computed on the device and copied back, and `logits` is untouched.
  // Throws ferry::Error as forward() does.
  virtual void forward(WeightSource& src, std::span<const int32_t> tokens, uint64_t pos,
                       std::span<float> logits, int32_t* argmax = nullptr) = 0;
};

// Makes the device forward pass of a model with a KV cache of `ctx` tokens in `kv` and prefill
// batches of up to `batch`; throws ferry::Error with one line when the device cannot be used.
using DeviceFactory = std::function<std::unique_ptr<DeviceForward>(
    const ModelConfig& c, const ModelWeights& w, uint64_t ctx, uint64_t batch, KvType kv)>;

}  // namespace ferry
