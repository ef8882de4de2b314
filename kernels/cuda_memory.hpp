// The one way ferry holds CUDA memory: owning handles made at load and freed at exit (the forward
// pass, the cache's backend, the tests and the benchmarks all use these). Host code, C++17 (nvcc
// compiles the files that include it too).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "kernels/cuda_check.hpp"

namespace ferry {

// n elements of T in device memory. A failed allocation is one line naming `what` and the size.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(uint64_t n, const char* what) : n_(n) {
    if (n && cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)) != cudaSuccess) {
      cudaGetLastError();
      throw Error("cannot allocate " + human_bytes(double(n * sizeof(T))) +
                  " of device memory for " + what);
    }
  }
  // A device copy of a host vector.
  explicit DeviceArray(const std::vector<T>& host, const char* what = "a copy")
      : DeviceArray(host.size(), what) {
    upload(host.data(), host.size());
  }
  ~DeviceArray() {
    if (p_) cudaFree(p_);
  }
  DeviceArray(DeviceArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return p_; }
  uint64_t size() const { return n_; }
  void upload(const T* host, uint64_t n) {
    CUDA_CHECK(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  uint64_t n_ = 0;
};

// Pinned host memory, for transfers that must be asynchronous (embedding rows in, logits out).
template <typename T>
class PinnedArray {
 public:
  explicit PinnedArray(uint64_t n) {
    CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&p_), std::max<uint64_t>(1, n) * sizeof(T),
                             cudaHostAllocDefault));
  }
  ~PinnedArray() { cudaFreeHost(p_); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

// A non-blocking stream (it never synchronizes with the legacy default stream).
struct CudaStream {
  CudaStream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~CudaStream() { cudaStreamDestroy(s); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t s = nullptr;
};

}  // namespace ferry
