// A pair of CUDA timing events: record `start` and `stop` on a stream, synchronize on `stop`,
// then seconds() is the device time between them. Used where ferry measures the device itself
// (the copy bandwidths of runtime/cuda_device.cu, bench/bench_gpu_kernels.cpp). CUDA builds only.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda_check.hpp"

namespace ferry {

struct CudaTimer {
  CudaTimer() {
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~CudaTimer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  CudaTimer(const CudaTimer&) = delete;
  CudaTimer& operator=(const CudaTimer&) = delete;
  double seconds() const {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return double(ms) / 1e3;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
};

}  // namespace ferry
