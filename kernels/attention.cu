// Causal grouped-query attention on the GPU for decode (n = 1) and prefill (n query tokens);
// the CPU twin is attention_cpu (kernels/ops_cpu.cpp), called once per query token.
//
// One block per (query token, head): scores of every visible position into global scratch
// (a 32k context is 128 KB per head: too big for shared memory, cheap for L2), a block-wide max
// and sum for the softmax, then each thread accumulates output dimensions. At batch 1 the KV
// cache read (2 x ctx x kv_dim x 4 bytes: 8 MB per layer at 1k tokens of a 32B model, 64 layers)
// is small beside the weights until contexts pass ~8k tokens; a split over the sequence
// (flash-decoding) is the next step when long contexts matter.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda_check.hpp"
#include "kernels/ops_cuda.hpp"

namespace ferry {
namespace {

constexpr uint32_t kThreads = 256;

__device__ float block_reduce(float v, float* shared, bool is_max) {
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float r = shared[0];
  for (uint32_t i = 1; i < kThreads / 32; ++i) r = is_max ? fmaxf(r, shared[i]) : r + shared[i];
  __syncthreads();
  return r;
}

__global__ void attention_kernel(const float* q, const float* k_cache, const float* v_cache,
                                 uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                                 float* scores, float* out) {
  __shared__ float shared[kThreads / 32];
  const uint64_t t = blockIdx.y, h = blockIdx.x;
  const uint64_t n_ctx = pos + t + 1, stride = pos + gridDim.y;  // scores row length
  const uint64_t kv_dim = kv_heads * head_dim, kvh = h / (heads / kv_heads);
  const float* qh = q + (t * heads + h) * head_dim;
  float* sc = scores + (t * heads + h) * stride;
  const float scale = rsqrtf(float(head_dim));
  float local_max = -FLT_MAX;
  for (uint64_t p = threadIdx.x; p < n_ctx; p += kThreads) {
    const float* k = k_cache + p * kv_dim + kvh * head_dim;
    float dot = 0;
    for (uint64_t d = 0; d < head_dim; ++d) dot += qh[d] * k[d];
    sc[p] = dot * scale;
    local_max = fmaxf(local_max, sc[p]);
  }
  const float max_score = block_reduce(local_max, shared, true);
  float local_sum = 0;
  for (uint64_t p = threadIdx.x; p < n_ctx; p += kThreads)
    local_sum += sc[p] = expf(sc[p] - max_score);
  const float inv_sum = 1.0f / block_reduce(local_sum, shared, false);
  __syncthreads();  // every score written before any thread reads them all
  float* oh = out + (t * heads + h) * head_dim;
  for (uint64_t d = threadIdx.x; d < head_dim; d += kThreads) {
    float acc = 0;
    for (uint64_t p = 0; p < n_ctx; ++p) acc += sc[p] * v_cache[p * kv_dim + kvh * head_dim + d];
    oh[d] = acc * inv_sum;
  }
}

}  // namespace

void attention_cuda(const float* q, const float* k_cache, const float* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* scores, float* out, CUstream_st* stream) {
  if (n == 0 || heads == 0) return;
  const dim3 grid{uint32_t(heads), uint32_t(n)};
  attention_kernel<<<grid, kThreads, 0, stream>>>(q, k_cache, v_cache, pos, heads, kv_heads,
                                                  head_dim, scores, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ferry
