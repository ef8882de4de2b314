// spin_cuda (kernels/spin.hpp): one thread that sleeps in steps of up to 1 us until the global
// timer (ns) has advanced by `us` microseconds. One thread and __nanosleep: the delay occupies a
// stream, not the SMs, so it changes orderings, not throughput.
#include <cuda_runtime.h>

#include "kernels/cuda_check.hpp"
#include "kernels/spin.hpp"

namespace ferry {
namespace {

__device__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void spin_kernel(uint64_t ns) {
  const uint64_t end = global_ns() + ns;
  while (global_ns() < end) __nanosleep(1000);
}

}  // namespace

void spin_cuda(uint32_t us, CUstream_st* stream) {
  spin_kernel<<<1, 1, 0, stream>>>(uint64_t(us) * 1000);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
