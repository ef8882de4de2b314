// A stream's work replayed as one CUDA graph (`--cuda-graph`): between begin() and launch() the
// host enqueues as it always does, but the stream records instead of running; launch() makes
// the recording executable and launches it in one call. Used for the decode step when every
// weight is resident (runtime/forward_cuda.cpp): ~285 launches a token for Qwen2-7B, at the
// 3.5-4.9 us a launch measured on an H200 VM, take 1.0-1.4 ms, as long as the step's whole
// 4 GB weight read at 70% of HBM; a graph's kernels follow each other without the host.
//
// Each step is recorded anew (its positions and the attention grid change every token) and the
// executable graph updated in place when only parameters changed (cudaGraphExecUpdate, as
// llama.cpp does); a changed topology (a step with more tokens or sequences, another count of
// attention chunks) instantiates it again. Host code, C++17.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ferry {

struct CudaGraphStats {
  uint64_t launches = 0;  // steps run as a graph
  uint64_t builds = 0;    // instantiations: the first step and each change of topology
  uint64_t updates = 0;   // steps that updated the executable graph in place
};

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Starts recording `s` (relaxed mode: the cache's event queries and the prefetch thread's
  // calls stay legal while it records).
  void begin(cudaStream_t s);
  // Ends the recording of `s` and launches it there. Throws ferry::Error when the recording was
  // invalidated (an operation that cannot be captured) or the graph cannot be made.
  void launch(cudaStream_t s);
  // After a throw between begin() and launch(): ends the recording and drops it, so that `s`
  // runs work again. Never throws.
  void abandon(cudaStream_t s) noexcept;
  const CudaGraphStats& stats() const { return stats_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
  CudaGraphStats stats_;
};

}  // namespace ferry
