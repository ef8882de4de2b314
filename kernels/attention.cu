// Causal grouped-query attention on the GPU for decode (n = 1) and prefill (n query tokens), in
// chunks of the context (flash-decoding, kernels/attention.hpp): the CPU twin is attention_cpu
// (kernels/attention_cpu.cpp), the same chunks and the same merge.
//
// Two kernels. attention_chunk_kernel: one block per (head, query token, chunk of 32-256
// positions); a warp per position dots q with k (lanes along head_dim, so a warp reads one k row of
// 512 bytes coalesced at head_dim 128), the chunk's scores stay in shared memory (1 KB), and groups
// of threads accumulate e^(s - m) v over interleaved positions, reduced in shared memory. It writes
// the chunk's partial state (sum, max, weight). attention_merge_kernel: one block per (head,
// token) rescales its chunks to the common max and normalizes. Decode of Qwen2-32B at 4k tokens
// is 40 heads x 32 chunks = 1280 blocks instead of 40: the KV cache read (2 x 4096 x 1024 x 4
// bytes per layer in f32, half that in f16) then spreads over every SM. Both take the cache's
// element type T: float, or uint16_t holding f16 bits, widened to fp32 as each element is read.
//
// The f16 cache at head_dim 64, 128 or 256 with up to 8 query heads per kv head (every current
// GQA model: Qwen2-32B 40/8, Qwen3-32B 64/8, Llama 3 70B 64/8) takes a third kernel instead of
// the first, attention_group_kernel: one block per (kv head, query token, chunk) serves every
// query head of the group, so each K and V row is read once for the group instead of once per
// query head (5x fewer KV bytes for Qwen2-32B), with 16-byte loads (8 halves per lane,
// head_dim / 8 lanes per row) and four rows of K and of V in flight per lane group. It writes the
// same partials, which the same merge reduces.
//
// Prefill over the f16 cache with enough queries to fill the GPU (attention_tiled_applies,
// kernels/attention.hpp) runs the tiled FlashAttention-2 kernel of kernels/attention_tiled.cu
// instead: one CTA per (kv head, block of queries), no partials. Decode keeps the kernels above.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <string>
#include <type_traits>

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
  uint64_t chunks;  // per (token, head) in `partials`: attention_max_chunks(pos + n)
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
  const uint64_t n_ctx = a.pos + t + 1, step = attention_chunk_len(n_ctx), begin = chunk * step;
  if (begin >= n_ctx) return;  // the whole block: this query has fewer chunks than the most
  const uint64_t len = n_ctx - begin < step ? n_ctx - begin : step;
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

// --- the GQA group kernel (f16 cache) ---------------------------------------------------------

// 8 halves (16 bytes) -> 8 floats.
__device__ __forceinline__ void halves8(const uint16_t* p, float (&f)[8]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 two = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    f[2 * i] = two.x;
    f[2 * i + 1] = two.y;
  }
}

// Rows of K (and of V) each lane group keeps in flight. The first H200 run had 2 of K and 1 of V:
// a block then held 4-8 KB in flight, and decode attention read 98 / 720 / 1356 GB/s at 512 /
// 4k / 32k positions (2-32% of the copy bandwidth), the latency of each row's load exposed; 4
// rows of each hold 16 KB a block.
constexpr uint32_t kRowsInFlight = 4;

// Scores of the chunk's positions for each of the group's G query heads into sc[G][len]. A row of
// K is HD / 8 lanes (L) with 8 halves each; a warp takes 32 / L rows at once, kRowsInFlight such
// sets in flight; each lane keeps its 8 elements of the G queries in registers.
template <int G, int HD>
__device__ void group_scores(const AttentionArgs<uint16_t>& a, const float* qs, const uint16_t* k,
                             uint32_t len, float (*sc)[kAttentionChunk]) {
  constexpr uint32_t L = HD / 8, kRowsPerPass = kWarps * (32 / L), U = kRowsInFlight;
  const uint32_t lane = threadIdx.x % 32, sub = lane % L;
  const uint32_t kv_dim = uint32_t(a.kv_heads) * HD;
  const float scale = rsqrtf(float(HD));
  float qr[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) qr[g][e] = qs[g * HD + sub * 8 + e];
  // The loop runs on the warp's base row, the same in every lane, so that every lane reaches the
  // shuffles; lanes past the chunk's end dot zeros and write nothing.
  for (uint32_t base = (threadIdx.x / 32) * (32 / L); base < len; base += U * kRowsPerPass) {
    float kr[U][8] = {};
#pragma unroll
    for (uint32_t u = 0; u < U; ++u) {
      const uint32_t i = base + lane / L + u * kRowsPerPass;
      if (i < len) halves8(k + size_t(i) * kv_dim + sub * 8, kr[u]);
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float d[U] = {};
#pragma unroll
      for (int e = 0; e < 8; ++e)
#pragma unroll
        for (uint32_t u = 0; u < U; ++u) d[u] = fmaf(qr[g][e], kr[u][e], d[u]);
#pragma unroll
      for (uint32_t off = L / 2; off > 0; off /= 2)  // over the row's L lanes
#pragma unroll
        for (uint32_t u = 0; u < U; ++u) d[u] += __shfl_xor_sync(0xffffffffu, d[u], off);
#pragma unroll
      for (uint32_t u = 0; u < U; ++u) {
        const uint32_t i = base + lane / L + u * kRowsPerPass;
        if (sub == 0 && i < len) sc[g][i] = d[u] * scale;
      }
    }
  }
}

// part(g)[d] = sum over i < len of sc[g][i] * v[i, d] for each query head g, part(g) being
// part0 + g * head_stride (consecutive query heads). A row of V is L lanes of 8 halves; the
// block's 256 / L row groups take interleaved positions, kRowsInFlight rows loaded before any is
// used (added in position order, so the sums are those of one row at a time), and `red`
// ([256 / L][HD] floats) sums them in a fixed order, one query head at a time.
template <int G, int HD>
__device__ void group_values(const AttentionArgs<uint16_t>& a, const uint16_t* v, uint32_t len,
                             const float (*sc)[kAttentionChunk], float* red, float* part0,
                             uint64_t head_stride) {
  constexpr uint32_t L = HD / 8, kGroups = kThreads / L, U = kRowsInFlight;
  const uint32_t sub = threadIdx.x % L, rg = threadIdx.x / L;
  const uint32_t kv_dim = uint32_t(a.kv_heads) * HD;
  float acc[G][8] = {};
  for (uint32_t i0 = rg; i0 < len; i0 += U * kGroups) {
    float vr[U][8] = {};
#pragma unroll
    for (uint32_t u = 0; u < U; ++u) {
      const uint32_t i = i0 + u * kGroups;
      if (i < len) halves8(v + size_t(i) * kv_dim + sub * 8, vr[u]);
    }
#pragma unroll
    for (uint32_t u = 0; u < U; ++u) {
      const uint32_t i = i0 + u * kGroups;
      if (i < len)
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float p = sc[g][i];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vr[u][e], acc[g][e]);
        }
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int e = 0; e < 8; ++e) red[rg * HD + sub * 8 + e] = acc[g][e];
    __syncthreads();
    for (uint32_t d = threadIdx.x; d < HD; d += kThreads) {
      float total = 0;
      for (uint32_t j = 0; j < kGroups; ++j) total += red[j * HD + d];
      part0[g * head_stride + d] = total;
    }
    __syncthreads();
  }
}

template <int G, int HD>
__global__ void __launch_bounds__(kThreads) attention_group_kernel(AttentionArgs<uint16_t> a) {
  __shared__ float qs[G * HD];              // the group's queries, [G][HD]
  __shared__ float sc[G][kAttentionChunk];  // scores, then e^(s - m)
  __shared__ float red[kThreads * 8];       // the value sums' reduction, [256 / L][HD]
  __shared__ float stats[2][G];             // each query head's max and sum
  const uint32_t kvh = blockIdx.x, t = blockIdx.y, chunk = blockIdx.z;
  const uint64_t n_ctx = a.pos + t + 1, step = attention_chunk_len(n_ctx);
  const uint64_t begin = uint64_t(chunk) * step;
  if (begin >= n_ctx) return;  // the whole block: this query has fewer chunks than the most
  const uint32_t len = uint32_t(n_ctx - begin < step ? n_ctx - begin : step);
  const uint64_t kv_off = begin * a.kv_heads * HD + uint64_t(kvh) * HD;
  const uint64_t h0 = uint64_t(kvh) * G;  // the group's first query head
  for (uint32_t i = threadIdx.x; i < G * HD; i += kThreads)
    qs[i] = a.q[(t * a.heads + h0) * HD + i];
  __syncthreads();
  group_scores<G, HD>(a, qs, a.k_cache + kv_off, len, sc);
  __syncthreads();
  // Softmax of each query head's row: warp w takes heads w, w + 8, ...
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (uint32_t g = warp; g < G; g += kWarps) {
    float m = -FLT_MAX;
    for (uint32_t i = lane; i < len; i += 32) m = fmaxf(m, sc[g][i]);
    m = cuda::warp_max(m);
    float s = 0;
    for (uint32_t i = lane; i < len; i += 32) s += sc[g][i] = expf(sc[g][i] - m);
    s = cuda::warp_sum(s);
    if (lane == 0) {
      stats[0][g] = m;
      stats[1][g] = s;
    }
  }
  __syncthreads();
  const uint64_t stride = attention_partial_floats(HD), head_stride = a.chunks * stride;
  float* part0 = a.partials + ((t * a.heads + h0) * a.chunks + chunk) * stride;
  group_values<G, HD>(a, a.v_cache + kv_off, len, sc, red, part0, head_stride);
  if (threadIdx.x < G) {
    part0[threadIdx.x * head_stride + HD] = stats[0][threadIdx.x];
    part0[threadIdx.x * head_stride + HD + 1] = stats[1][threadIdx.x];
  }
}

template <int G>
bool launch_group_hd(const AttentionArgs<uint16_t>& a, dim3 grid, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      attention_group_kernel<G, 64><<<grid, kThreads, 0, stream>>>(a);
      return true;
    case 128:
      attention_group_kernel<G, 128><<<grid, kThreads, 0, stream>>>(a);
      return true;
    case 256:
      attention_group_kernel<G, 256><<<grid, kThreads, 0, stream>>>(a);
      return true;
    default:
      return false;
  }
}

// The group kernel where it applies (f16, head_dim 64/128/256, at most 8 query heads per kv
// head); false: the caller runs the per-head kernel.
bool launch_group(const AttentionArgs<uint16_t>& a, uint64_t m, cudaStream_t stream) {
  const dim3 grid{uint32_t(a.kv_heads), uint32_t(m), uint32_t(a.chunks)};
  switch (a.heads / a.kv_heads) {
    case 1:
      return launch_group_hd<1>(a, grid, stream);
    case 2:
      return launch_group_hd<2>(a, grid, stream);
    case 3:
      return launch_group_hd<3>(a, grid, stream);
    case 4:
      return launch_group_hd<4>(a, grid, stream);
    case 5:
      return launch_group_hd<5>(a, grid, stream);
    case 6:
      return launch_group_hd<6>(a, grid, stream);
    case 7:
      return launch_group_hd<7>(a, grid, stream);
    case 8:
      return launch_group_hd<8>(a, grid, stream);
    default:
      return false;
  }
}
bool launch_group(const AttentionArgs<float>&, uint64_t, cudaStream_t) {
  return false;  // the f32 cache (reference checks) keeps the per-head kernel
}

template <typename T>
void attention_rounds(const float* q, const T* k_cache, const T* v_cache, uint64_t n, uint64_t pos,
                      uint64_t heads, uint64_t kv_heads, uint64_t head_dim, float* partials,
                      float* out, CUstream_st* stream) {
  if (n == 0 || heads == 0) return;
  check_attention_shape(heads, kv_heads, head_dim);
  // Grid z is limited to 65,535 chunks: 16.7 M positions of context.
  if (attention_max_chunks(pos + n) > 65535)
    throw Error(Setting::ctx, "attention_cuda: a context of " + std::to_string(pos + n) +
                                  " positions exceeds the grid; lower it");
  // Prefill of enough queries over the f16 cache: the tiled kernel (kernels/attention_tiled.cu),
  // which reads each K/V tile once per block of queries instead of once per query.
  if constexpr (std::is_same_v<T, uint16_t>)
    if (attention_tiled_applies(n, heads, kv_heads, head_dim))
      return attention_tiled_cuda(q, k_cache, v_cache, n, pos, heads, kv_heads, head_dim, out,
                                  stream);
  for (uint64_t t0 = 0; t0 < n; t0 += kAttentionQueries) {  // rounds, as attention_cpu
    const uint64_t m = n - t0 < kAttentionQueries ? n - t0 : kAttentionQueries;
    const uint64_t q_dim = heads * head_dim;
    const AttentionArgs<T> a{
        q + t0 * q_dim, k_cache,         v_cache,  pos + t0,
        heads,          kv_heads,        head_dim, attention_max_chunks(pos + t0 + m),
        partials,       out + t0 * q_dim};
    if (!launch_group(a, m, stream)) {
      const dim3 chunk_grid{uint32_t(heads), uint32_t(m), uint32_t(a.chunks)};
      attention_chunk_kernel<T><<<chunk_grid, kThreads, head_dim * sizeof(float), stream>>>(a);
    }
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
