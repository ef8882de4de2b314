// Helpers of the gpu-labelled tests: the skip when no GPU is present and an owning device copy.
#pragma once
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda_check.hpp"

namespace ferry::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define FERRY_REQUIRE_GPU() \
  if (!::ferry::test::have_gpu()) GTEST_SKIP() << "no CUDA GPU present: skipped"

// A device copy of a host vector; freed by the destructor.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t size = 0;
  explicit DeviceBuffer(const std::vector<T>& host) : size(host.size()) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, host.size() * sizeof(T)));
    ptr = static_cast<T*>(p);
    CUDA_CHECK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<T> to_host() const {
    std::vector<T> h(size);
    CUDA_CHECK(cudaMemcpy(h.data(), ptr, size * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

}  // namespace ferry::test
