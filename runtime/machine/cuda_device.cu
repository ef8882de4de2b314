#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>

#include "base/error.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_timer.hpp"
#include "runtime/machine/cuda_device.hpp"
#include "runtime/machine/device_check.hpp"

namespace ferry {
namespace {

__global__ void probe_kernel() {}

// Frees with the matching call when the scope ends.
struct DeviceMemory {
  void* p = nullptr;
  explicit DeviceMemory(uint64_t n) { CUDA_CHECK(cudaMalloc(&p, n)); }
  ~DeviceMemory() { cudaFree(p); }
};
struct PinnedMemory {
  void* p = nullptr;
  explicit PinnedMemory(uint64_t n) { CUDA_CHECK(cudaHostAlloc(&p, n, cudaHostAllocDefault)); }
  ~PinnedMemory() { cudaFreeHost(p); }
};

// Seconds to copy `total` bytes from src in chunks of `chunk` to dst on one stream.
double timed_h2d(void* dst, const char* src, uint64_t chunk, uint64_t total) {
  CudaTimer ev;
  CUDA_CHECK(cudaEventRecord(ev.start));
  for (uint64_t off = 0; off < total; off += chunk)
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, src + off,
                               std::min(chunk, total - off), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaEventRecord(ev.stop));
  CUDA_CHECK(cudaEventSynchronize(ev.stop));
  return ev.seconds();
}

}  // namespace

GpuInfo probe_gpu(int device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    throw Error(Setting::device, std::string("no usable CUDA GPU (") +
                                     (e == cudaSuccess ? "none found" : cudaGetErrorString(e)) +
                                     "); run on the CPU");
  if (device < 0 || device >= count)
    throw Error("GPU " + std::to_string(device) + " does not exist: " + std::to_string(count) +
                " found");
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  const std::vector<int> compiled = parse_cuda_architectures(FERRY_CUDA_ARCHS);
  const std::optional<int> arch = runnable_architecture(compiled, p.major, p.minor);
  if (!arch)
    throw Error(Setting::device, unsupported_gpu_message(p.name, p.major, p.minor, compiled));
  CUDA_CHECK(cudaSetDevice(device));
  // The definitive check: the driver must find an image of a kernel for this card.
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, probe_kernel) != cudaSuccess)
    throw Error(Setting::device, unsupported_gpu_message(p.name, p.major, p.minor, compiled));
  GpuInfo g{p.name, p.major, p.minor, *arch, 0, 0};
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  g.free_bytes = free_b;
  g.total_bytes = total_b;
  return g;
}

std::vector<CopyBandwidth> measure_h2d(const std::vector<uint64_t>& chunks, uint64_t total) {
  PinnedMemory pinned(total);
  std::unique_ptr<char[]> pageable(new char[total]);
  std::fill_n(static_cast<char*>(pinned.p), total, 1);  // touch every page first
  std::fill_n(pageable.get(), total, 1);
  DeviceMemory dst(total);
  std::vector<CopyBandwidth> out;
  for (uint64_t chunk : chunks) {
    timed_h2d(dst.p, static_cast<const char*>(pinned.p), chunk, total);  // warm-up
    const double tp = timed_h2d(dst.p, static_cast<const char*>(pinned.p), chunk, total);
    const double tq = timed_h2d(dst.p, pageable.get(), chunk, total);
    out.push_back({chunk, double(total) / tp / 1e9, double(total) / tq / 1e9});
  }
  return out;
}

double measure_d2d_gbps(uint64_t bytes) {
  DeviceMemory a(bytes), b(bytes);
  CUDA_CHECK(cudaMemset(a.p, 1, bytes));
  CUDA_CHECK(cudaMemcpy(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  CudaTimer ev;
  CUDA_CHECK(cudaEventRecord(ev.start));
  CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaEventRecord(ev.stop));
  CUDA_CHECK(cudaEventSynchronize(ev.stop));
  return 2.0 * double(bytes) / ev.seconds() / 1e9;
}

}  // namespace ferry
