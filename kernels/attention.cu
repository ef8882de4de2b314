// Causal grouped-query attention on the GPU for decode (n = 1) and prefill (n query tokens), in
// chunks of the context (flash-decoding, kernels/attention.hpp): the CPU twin is attention_cpu
// (kernels/attention_cpu.cpp), the same chunks and the same merge.
//
// Two kernels. attention_chunk_kernel: one block per (head, query token, chunk of 256 positions);
// a warp per position dots q with k (lanes along head_dim, so a warp reads one k row of 512 bytes
// coalesced at head_dim 128), the chunk's scores stay in shared memory (1 KB), and groups of
// threads accumulate e^(s - m) v over interleaved positions, reduced in shared memory. It writes
// the chunk's partial state (sum, max, weight). attention_merge_kernel: one block per (head,
// token) rescales its chunks to the common max and normalizes. Decode of Qwen2-32B at 4k tokens
// is 40 heads x 16 chunks = 640 blocks instead of 40: the KV cache read (2 x 4096 x 1024 x 4
// bytes per layer in f32, half that in f16) then spreads over every SM. Both take the cache's
// element type T: float, or uint16_t holding f16 bits, widened to fp32 as each element is read.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <string>

#include "base/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_common.cuh"

namespace ferry {
namespace {

constexpr uint32_t kThreads = 256;
constexpr uint32_t kWarps = kThreads / 32;

__device__ float kv_value(float x) {
  return x;
}
__device__ float kv_value(uint16_t x) {
  return cuda::f16_to_f32(x);
}

template <typename T>
struct AttentionArgs {
  const float* q;
  const T *k_cache, *v_cache;
  uint64_t pos, heads, kv_heads, head_dim;
  uint64_t chunks;  // per (token, head) in `partials`: attention_chunks(pos + n)
  float* partials;  // [n, heads, chunks, attention_partial_floats(head_dim)]
  float* out;       // [n, heads, head_dim]
};

// Scores of the chunk's positions into sc[len]: one warp per position.
template <typename T>
__device__ void chunk_scores(const AttentionArgs<T>& a, const float* qs, const T* k_rows,
                             uint64_t len, float* sc) {
  const uint64_t kv_dim = a.kv_heads * a.head_dim;
  const float scale = rsqrtf(float(a.head_dim));
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (uint64_t i = warp; i < len; i += kWarps) {
    const T* k = k_rows + i * kv_dim;
    float dot = 0;
    for (uint64_t d = lane; d < a.head_dim; d += 32) dot += qs[d] * kv_value(k[d]);
    dot = cuda::warp_sum(dot);
    if (lane == 0) sc[i] = dot * scale;
  }
}

// part[d] = sum over i < len of sc[i] * v_rows[i, d]. With head_dim <= 256, kThreads / head_dim
// groups of threads take interleaved positions (2 groups at head_dim 128: every thread loads)
// and acc (kThreads floats of shared memory) sums them in a fixed order.
template <typename T>
__device__ void chunk_values(const AttentionArgs<T>& a, const float* sc, const T* v_rows,
                             uint64_t len, float* acc, float* part) {
  const uint64_t kv_dim = a.kv_heads * a.head_dim;
  const uint64_t groups = a.head_dim <= kThreads ? kThreads / a.head_dim : 1;
  if (groups == 1) {
    for (uint64_t d = threadIdx.x; d < a.head_dim; d += kThreads) {
      float sum = 0;
      for (uint64_t i = 0; i < len; ++i) sum += sc[i] * kv_value(v_rows[i * kv_dim + d]);
      part[d] = sum;
    }
    return;
  }
  const uint64_t g = threadIdx.x / a.head_dim, d = threadIdx.x % a.head_dim;
  float sum = 0;
  if (g < groups)
    for (uint64_t i = g; i < len; i += groups) sum += sc[i] * kv_value(v_rows[i * kv_dim + d]);
  acc[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x < a.head_dim) {
    float total = 0;
    for (uint64_t j = 0; j < groups; ++j) total += acc[j * a.head_dim + threadIdx.x];
    part[threadIdx.x] = total;
  }
}

template <typename T>
__global__ void attention_chunk_kernel(AttentionArgs<T> a) {
  extern __shared__ float qs[];  // [head_dim] this head's query
  __shared__ float sc[kAttentionChunk];
  __shared__ float acc[kThreads];
  __shared__ float red[kWarps];
  const uint64_t h = blockIdx.x, t = blockIdx.y, chunk = blockIdx.z;
  const uint64_t n_ctx = a.pos + t + 1, begin = chunk * kAttentionChunk;
  if (begin >= n_ctx) return;  // the whole block: this query sees fewer chunks than the last
  const uint64_t len = n_ctx - begin < kAttentionChunk ? n_ctx - begin : kAttentionChunk;
  const uint64_t kv_off = begin * a.kv_heads * a.head_dim + h / (a.heads / a.kv_heads) * a.head_dim;
  for (uint64_t d = threadIdx.x; d < a.head_dim; d += kThreads)
    qs[d] = a.q[(t * a.heads + h) * a.head_dim + d];
  __syncthreads();
  chunk_scores(a, qs, a.k_cache + kv_off, len, sc);
  __syncthreads();
  float local_max = -FLT_MAX;
  for (uint64_t i = threadIdx.x; i < len; i += kThreads) local_max = fmaxf(local_max, sc[i]);
  const float max_score = cuda::block_max<kThreads>(local_max, red);
  float local_sum = 0;
  for (uint64_t i = threadIdx.x; i < len; i += kThreads)
    local_sum += sc[i] = expf(sc[i] - max_score);
  const float sum = cuda::block_sum<kThreads>(local_sum, red);  // its barrier also publishes sc
  float* part =
      a.partials + ((t * a.heads + h) * a.chunks + chunk) * attention_partial_floats(a.head_dim);
  chunk_values(a, sc, a.v_cache + kv_off, len, acc, part);
  if (threadIdx.x == 0) {
    part[a.head_dim] = max_score;
    part[a.head_dim + 1] = sum;
  }
}

template <typename T>
__global__ void attention_merge_kernel(AttentionArgs<T> a) {
  const uint64_t h = blockIdx.x, t = blockIdx.y, stride = attention_partial_floats(a.head_dim);
  const uint64_t chunks = attention_chunks(a.pos + t + 1);
  const float* part = a.partials + (t * a.heads + h) * a.chunks * stride;
  float max_score = -FLT_MAX;
  for (uint64_t c = 0; c < chunks; ++c) max_score = fmaxf(max_score, part[c * stride + a.head_dim]);
  float denom = 0;
  for (uint64_t c = 0; c < chunks; ++c)
    denom += expf(part[c * stride + a.head_dim] - max_score) * part[c * stride + a.head_dim + 1];
  for (uint64_t d = threadIdx.x; d < a.head_dim; d += kThreads) {
    float sum = 0;
    for (uint64_t c = 0; c < chunks; ++c)
      sum += expf(part[c * stride + a.head_dim] - max_score) * part[c * stride + d];
    a.out[(t * a.heads + h) * a.head_dim + d] = sum / denom;
  }
}

template <typename T>
void attention_rounds(const float* q, const T* k_cache, const T* v_cache, uint64_t n, uint64_t pos,
                      uint64_t heads, uint64_t kv_heads, uint64_t head_dim, float* partials,
                      float* out, CUstream_st* stream) {
  if (n == 0 || heads == 0) return;
  check_attention_shape(heads, kv_heads, head_dim);
  // Grid z is limited to 65,535 chunks: 16.7 M positions of context.
  if (attention_chunks(pos + n) > 65535)
    throw Error(Setting::ctx, "attention_cuda: a context of " + std::to_string(pos + n) +
                                  " positions exceeds the grid; lower it");
  for (uint64_t t0 = 0; t0 < n; t0 += kAttentionQueries) {  // rounds, as attention_cpu
    const uint64_t m = n - t0 < kAttentionQueries ? n - t0 : kAttentionQueries;
    const uint64_t q_dim = heads * head_dim;
    const AttentionArgs<T> a{
        q + t0 * q_dim, k_cache,         v_cache,  pos + t0,
        heads,          kv_heads,        head_dim, attention_chunks(pos + t0 + m),
        partials,       out + t0 * q_dim};
    const dim3 chunk_grid{uint32_t(heads), uint32_t(m), uint32_t(a.chunks)};
    attention_chunk_kernel<T><<<chunk_grid, kThreads, head_dim * sizeof(float), stream>>>(a);
    CUDA_CHECK(cudaGetLastError());
    attention_merge_kernel<T><<<dim3{uint32_t(heads), uint32_t(m)}, kThreads, 0, stream>>>(a);
    CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void attention_cuda(const float* q, const float* k_cache, const float* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream) {
  attention_rounds(q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, partials, out, stream);
}

void attention_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream) {
  attention_rounds(q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, partials, out, stream);
}

}  // namespace ferry
