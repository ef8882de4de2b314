// The GPU ferry runs on: probed and checked at start, and the copy bandwidths `ferry bench`
// measures for its performance model (runtime/cuda_device.cu). CUDA builds only; C++17, as
// nvcc compiles it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ferry {

struct GpuInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int arch = 0;              // the compiled architecture the card runs (SASS, or PTX JIT)
  uint64_t total_bytes = 0, free_bytes = 0;
};

// Throws ferry::Error with one line when there is no usable GPU (no device, driver too old for
// the toolkit, or a card older than every compiled architecture), saying what to do.
GpuInfo probe_gpu(int device = 0);

struct CopyBandwidth {
  uint64_t chunk_bytes = 0;
  double pinned_gbps = 0, pageable_gbps = 0;  // host -> device, 1e9 bytes/s
};

// Host-to-device bandwidth per chunk size, from pinned and from pageable memory, copying
// `total_bytes` per point (in chunks, one cudaMemcpyAsync each, as the prefetcher does).
std::vector<CopyBandwidth> measure_h2d(const std::vector<uint64_t>& chunk_bytes,
                                       uint64_t total_bytes);
// Device-to-device copy bandwidth (read + write counted once each: 2 x bytes / s).
double measure_d2d_gbps(uint64_t bytes);

}  // namespace ferry
