// Device helpers every CUDA kernel file shares, written once: warp and block reductions, the
// conversions of ferry's 16-bit formats, and the launch arithmetic. CUDA sources only (.cu).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ferry::cuda {

// Sum (or max) over the 32 lanes of a warp; every lane gets the result. Fixed butterfly order,
// so the result does not depend on scheduling.
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ inline float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum (or max) over a block of kThreads threads through `shared` (kThreads / 32 floats); every
// thread gets the result. Warp partials are combined in warp order, so the result is fixed.
template <uint32_t kThreads>
__device__ inline float block_sum(float v, float* shared) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024);
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float r = shared[0];
  for (uint32_t i = 1; i < kThreads / 32; ++i) r += shared[i];
  __syncthreads();
  return r;
}
template <uint32_t kThreads>
__device__ inline float block_max(float v, float* shared) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024);
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float r = shared[0];
  for (uint32_t i = 1; i < kThreads / 32; ++i) r = fmaxf(r, shared[i]);
  __syncthreads();
  return r;
}

// bf16 bits -> fp32 (exact: bf16 is the top half of an fp32).
__device__ inline float bf16_to_f32(uint16_t b) {
  return __uint_as_float(uint32_t(b) << 16);
}
// fp32 -> bf16 bits, round to nearest even, NaN kept quiet: the integer formula of float_to_bf16
// in base/dtype.hpp, so both sides round identically.
__device__ inline uint16_t f32_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
// f16 bits -> fp32 (exact).
__device__ inline float f16_to_f32(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

// 16 bytes global -> shared, both 16-byte aligned. cp.async (sm_80+) copies without passing
// through registers, so a thread can have many in flight and the copies run under other work;
// `valid` false fills zeros (and reads nothing). Older cards: a load and a store.
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
#else
  *reinterpret_cast<uint4*>(dst) =
      valid ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
#endif
}
// Closes the group of the copies this thread issued since the last commit.
__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most `pending` of this thread's committed groups are still in flight; its own
// copies are then visible to it (other threads' after a barrier).
template <int pending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
}

// Blocks of `threads` to cover `count` elements, one element per thread.
inline uint32_t grid_for(uint64_t count, uint32_t threads) {
  return uint32_t((count + threads - 1) / threads);
}

}  // namespace ferry::cuda
