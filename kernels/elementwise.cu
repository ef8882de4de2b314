// Element-wise kernels of the forward pass on the GPU; CPU twins in kernels/elementwise_cpu.cpp.
// These move a few KB per token each (hidden 5120 x 4 bytes), so they are written for clarity and
// launch count, not for peak bandwidth: the weights dominate every token by ~1000x. What they
// must not do is expose one memory latency per element: RMSNorm's one-row-a-block loop did (14
// dependent rounds at Qwen2-7B's 3584 columns: 8.8 us a launch in ncu on the H200, 7% of a
// resident decode token's kernel time), so its rows are now read whole into registers first.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"
#include "kernels/elementwise.hpp"

namespace ferry {
namespace {

constexpr uint32_t kThreads = 256;

using cuda::bf16_to_f32;

uint32_t grid_for(uint64_t count) {
  return cuda::grid_for(count, kThreads);
}

// One block per row, the row's float4s loaded at once into registers (PER a thread) where the row
// is whole float4s (dim a multiple of 4, x and out 16-byte aligned, w 8-byte aligned) and at
// most 256 * 4 * 8 = 8192 wide; rmsnorm_kernel below otherwise.
template <int PER>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_rows_kernel(const float* x, const uint16_t* w, float eps, uint32_t dim, float* out) {
  __shared__ float shared[kThreads / 32];
  const float4* xr = reinterpret_cast<const float4*>(x + size_t(blockIdx.x) * dim);
  const uint32_t quads = dim / 4;
  float4 v[PER];
  float ss = 0;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const uint32_t i = threadIdx.x + j * kThreads;
    v[j] = i < quads ? xr[i] : make_float4(0, 0, 0, 0);
  }
#pragma unroll
  for (int j = 0; j < PER; ++j)
    ss += (v[j].x * v[j].x + v[j].y * v[j].y) + (v[j].z * v[j].z + v[j].w * v[j].w);
  const float inv = rsqrtf(cuda::block_sum<kThreads>(ss, shared) / float(dim) + eps);
  float4* o = reinterpret_cast<float4*>(out + size_t(blockIdx.x) * dim);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const uint32_t i = threadIdx.x + j * kThreads;
    if (i >= quads) break;
    const uint2 g = *reinterpret_cast<const uint2*>(w + 4 * size_t(i));  // 4 bf16
    o[i] = make_float4(
        v[j].x * inv * bf16_to_f32(uint16_t(g.x)), v[j].y * inv * bf16_to_f32(uint16_t(g.x >> 16)),
        v[j].z * inv * bf16_to_f32(uint16_t(g.y)), v[j].w * inv * bf16_to_f32(uint16_t(g.y >> 16)));
  }
}

// One block per row, any shape.
__global__ void rmsnorm_kernel(const float* x, const uint16_t* w, float eps, uint64_t dim,
                               float* out) {
  __shared__ float shared[kThreads / 32];
  const float* xr = x + blockIdx.x * dim;
  float ss = 0;
  for (uint64_t i = threadIdx.x; i < dim; i += kThreads) ss += xr[i] * xr[i];
  const float inv = rsqrtf(cuda::block_sum<kThreads>(ss, shared) / float(dim) + eps);
  for (uint64_t i = threadIdx.x; i < dim; i += kThreads)
    out[blockIdx.x * dim + i] = xr[i] * inv * bf16_to_f32(w[i]);
}

// Rotates the pair (x[i], x[i + half]) of one head row to position p; rotate_half pairing as
// rope_cpu.
__device__ __forceinline__ void rotate_pair(float* x, uint64_t i, uint64_t half, uint64_t p,
                                            const float* inv_freq, float scale) {
  float s, c;
  sincosf(float(p) * inv_freq[i], &s, &c);
  s *= scale;
  c *= scale;
  const float a = x[i], b = x[i + half];
  x[i] = a * c - b * s;
  x[i + half] = b * c + a * s;
}

// f16 bits of x, round to nearest even, saturated at +-65504 (NaN stays NaN), as store_f16_cpu.
__device__ __forceinline__ uint16_t to_f16_saturated(float x) {
  const float most = 65504.0f;
  return __half_as_ushort(__float2half_rn(x > most ? most : x < -most ? -most : x));
}

// One thread per (token, head, pair).
__global__ void rope_kernel(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
                            const float* inv_freq, float scale) {
  const uint64_t half = head_dim / 2;
  const uint64_t id = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (id >= n * heads * half) return;
  const uint64_t i = id % half, head_row = id / half, t = head_row / heads;
  rotate_pair(v + head_row * head_dim, i, half, pos + t, inv_freq, scale);
}

// One thread per (token, head of q's heads then k's, pair): q's pairs rotated in place; k's
// rotated, then (k16 given) the pair of k and the same two elements of v stored as f16.
__global__ void rope_kv_kernel(float* q, float* k, const float* v, uint64_t n, uint64_t heads,
                               uint64_t kv_heads, uint64_t head_dim, uint64_t pos,
                               const float* inv_freq, float scale, uint16_t* k16, uint16_t* v16) {
  const uint64_t half = head_dim / 2, all = heads + kv_heads;
  const uint64_t id = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (id >= n * all * half) return;
  const uint64_t i = id % half, t = id / half / all, h = id / half % all;
  if (h < heads)
    return rotate_pair(q + (t * heads + h) * head_dim, i, half, pos + t, inv_freq, scale);
  const uint64_t at = (t * kv_heads + h - heads) * head_dim;
  rotate_pair(k + at, i, half, pos + t, inv_freq, scale);
  if (!k16) return;
  k16[at + i] = to_f16_saturated(k[at + i]);
  k16[at + i + half] = to_f16_saturated(k[at + i + half]);
  v16[at + i] = to_f16_saturated(v[at + i]);
  v16[at + i + half] = to_f16_saturated(v[at + i + half]);
}

__global__ void silu_mul_kernel(const float* gate, const float* up, uint64_t count, float* out) {
  const uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < count) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void add_kernel(float* x, const float* y, uint64_t count) {
  const uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < count) x[i] += y[i];
}

// y[t, i] += bias[i] for t < n, i < rows (bias bf16): Qwen2's q/k/v biases.
__global__ void add_bias_kernel(float* y, const uint16_t* bias, uint64_t rows, uint64_t count) {
  const uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < count) y[i] += bf16_to_f32(bias[i % rows]);
}

// dst[i] = src[i] as f16 bits, round to nearest even, saturated at +-65504 (NaN stays NaN), as
// store_f16_cpu.
__global__ void store_f16_kernel(const float* src, uint64_t count, uint16_t* dst) {
  const uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  dst[i] = to_f16_saturated(src[i]);
}

// One block: each thread scans a strided share, then a shared-memory tree keeps the larger value
// and, on ties, the smaller index.
__global__ void argmax_kernel(const float* v, uint64_t count, int32_t* out) {
  __shared__ float best_v[kThreads];
  __shared__ uint64_t best_i[kThreads];
  float bv = -FLT_MAX;
  uint64_t bi = ~0ull;
  for (uint64_t i = threadIdx.x; i < count; i += kThreads)
    if (v[i] > bv || bi == ~0ull) bv = v[i], bi = i;
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  __syncthreads();
  for (uint32_t s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      const float ov = best_v[threadIdx.x + s];
      const uint64_t oi = best_i[threadIdx.x + s];
      if (oi != ~0ull &&
          (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x]))) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = int32_t(best_i[0]);
}

}  // namespace

void rmsnorm_cuda(const float* x, const uint16_t* w, float eps, uint64_t n, uint64_t dim,
                  float* out, CUstream_st* stream) {
  if (n == 0) return;
  const bool whole = dim % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(out) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(w) % 8 == 0;
  const uint64_t per = (dim / 4 + kThreads - 1) / kThreads;  // float4s a thread
  if (whole && per <= 1)
    rmsnorm_rows_kernel<1><<<uint32_t(n), kThreads, 0, stream>>>(x, w, eps, uint32_t(dim), out);
  else if (whole && per <= 2)
    rmsnorm_rows_kernel<2><<<uint32_t(n), kThreads, 0, stream>>>(x, w, eps, uint32_t(dim), out);
  else if (whole && per <= 4)
    rmsnorm_rows_kernel<4><<<uint32_t(n), kThreads, 0, stream>>>(x, w, eps, uint32_t(dim), out);
  else if (whole && per <= 8)
    rmsnorm_rows_kernel<8><<<uint32_t(n), kThreads, 0, stream>>>(x, w, eps, uint32_t(dim), out);
  else
    rmsnorm_kernel<<<uint32_t(n), kThreads, 0, stream>>>(x, w, eps, dim, out);
  CUDA_CHECK(cudaGetLastError());
}

void rope_cuda(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
               const float* inv_freq, float scale, CUstream_st* stream) {
  const uint64_t count = n * heads * (head_dim / 2);
  if (count == 0) return;
  rope_kernel<<<grid_for(count), kThreads, 0, stream>>>(v, n, heads, head_dim, pos, inv_freq,
                                                        scale);
  CUDA_CHECK(cudaGetLastError());
}

void rope_kv_cuda(float* q, float* k, const float* v, uint64_t n, uint64_t heads, uint64_t kv_heads,
                  uint64_t head_dim, uint64_t pos, const float* inv_freq, float scale,
                  uint16_t* k16, uint16_t* v16, CUstream_st* stream) {
  const uint64_t count = n * (heads + kv_heads) * (head_dim / 2);
  if (count == 0) return;
  rope_kv_kernel<<<grid_for(count), kThreads, 0, stream>>>(q, k, v, n, heads, kv_heads, head_dim,
                                                           pos, inv_freq, scale, k16, v16);
  CUDA_CHECK(cudaGetLastError());
}

void silu_mul_cuda(const float* gate, const float* up, uint64_t count, float* out,
                   CUstream_st* stream) {
  if (count == 0) return;
  silu_mul_kernel<<<grid_for(count), kThreads, 0, stream>>>(gate, up, count, out);
  CUDA_CHECK(cudaGetLastError());
}

void add_cuda(float* x, const float* y, uint64_t count, CUstream_st* stream) {
  if (count == 0) return;
  add_kernel<<<grid_for(count), kThreads, 0, stream>>>(x, y, count);
  CUDA_CHECK(cudaGetLastError());
}

void add_bias_cuda(float* y, const uint16_t* bias, uint64_t n, uint64_t rows, CUstream_st* stream) {
  if (n == 0 || rows == 0) return;
  add_bias_kernel<<<grid_for(n * rows), kThreads, 0, stream>>>(y, bias, rows, n * rows);
  CUDA_CHECK(cudaGetLastError());
}

void store_f16_cuda(const float* src, uint64_t count, uint16_t* dst, CUstream_st* stream) {
  if (count == 0) return;
  store_f16_kernel<<<grid_for(count), kThreads, 0, stream>>>(src, count, dst);
  CUDA_CHECK(cudaGetLastError());
}

void argmax_cuda(const float* v, uint64_t count, int32_t* out, CUstream_st* stream) {
  argmax_kernel<<<1, kThreads, 0, stream>>>(v, count, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
