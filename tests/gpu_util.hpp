// Helpers of the gpu-labelled tests: the skip when no GPU is present. Device memory is held as
// everywhere else, with kernels/cuda_memory.hpp.
#pragma once
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "kernels/cuda_check.hpp"
#include "kernels/cuda_memory.hpp"

namespace ferry::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define FERRY_REQUIRE_GPU() \
  if (!::ferry::test::have_gpu()) GTEST_SKIP() << "no CUDA GPU present: skipped"

}  // namespace ferry::test
