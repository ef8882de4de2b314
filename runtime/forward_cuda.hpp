// The CUDA backend's forward pass (runtime/forward_cuda.cpp): the same steps as the CPU pass of
// runtime/forward_cpu.cpp, each a kernel of kernels/*.cu on one compute stream, with every linear
// weight acquired from the paging cache in device memory. CUDA builds only.
#pragma once
#include "kernels/gemv_fused.hpp"
#include "runtime/forward_pass.hpp"

namespace ferry {

struct CudaForwardOptions {
  int device = 0;
  // What `--cache-budget auto` leaves free after the KV cache, activations and cuBLASLt's
  // workspace are allocated: 512 MB by default, for the CUDA context's growth and the
  // allocations cuBLASLt's heuristics make on first use (the context alone is ~500 MB on H100).
  uint64_t auto_margin = 512ull << 20;
  // `--vram-limit`: pretend the card has this many bytes (0: what it has). The auto budget then
  // takes what the limit leaves after the KV cache, activations and the margin.
  uint64_t vram_limit = 0;
  // Staging for the bf16 cache format (the largest packed weight); 0 when the format is int4.
  bool bf16_cache = false;
  // false: the host weight store in pageable memory, uploaded through the pinned bounce ring, as
  // when pinning fails (tests take this path on purpose).
  bool pin_host = true;
  // `--gpu-activations`: the INT4 GEMV's activations at decode, quantized to INT8 per block as
  // the CPU backend's are (the default) or fp32 (kernels/gemv_fused.hpp).
  GemvX gemv_x = GemvX::q8;
  // `--cuda-graph`: a decode step (up to 8 tokens) with every weight resident is recorded and
  // launched as one CUDA graph (kernels/cuda_graph.hpp) instead of ~10 launches a layer.
  // Off by default until a GPU has measured it.
  bool cuda_graph = false;
};

// Probes the GPU (one clear line when there is none, or the build cannot run on it) and returns
// a factory for the Engine.
DeviceFactory cuda_forward_factory(const CudaForwardOptions& o);

}  // namespace ferry
