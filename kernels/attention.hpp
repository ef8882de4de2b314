// Causal grouped-query attention over the KV cache, declared as twins with the same arguments:
// attention_cpu (kernels/attention_cpu.cpp, on a CpuPool) and attention_cuda
// (kernels/attention.cu: device pointers, enqueued on `stream`). Both run the same rounds, the
// same chunks and the same merge, from the chunk arithmetic below (host-and-device), so that
// tests/test_gpu_kernels.cpp can compare them closely.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

#include "base/cpu_isa.hpp"
#include "kernels/cpu_pool.hpp"

#include "base/simd.hpp"

struct CUstream_st;

namespace ferry {

// Attention runs over the context in chunks (flash-decoding): each (query, head, chunk) leaves a
// partial softmax state, and a merge rescales and sums the chunks of a head. Decode of one token
// then spreads over heads x chunks threads or blocks instead of one per head: Qwen2-32B has 40
// heads for the 132 SMs of an H100, and a 32k context is 128 chunks. A chunk is at most
// kAttentionChunk = 256 positions (1 KB of scores: the GPU keeps them in shared memory); below
// 8k positions it is the power of two from 32 that splits the context into at most 32 chunks,
// because 256-position chunks left a short context with a handful of blocks: at 512 positions
// Qwen2-7B's 4 kv heads x 2 chunks were 8 CTAs on 132 SMs (128 GB/s of KV read on an H200),
// and are now 4 x 16. Each query's chunks follow from its own context length alone, so its
// result does not depend on the batch it was computed in.
inline constexpr uint64_t kAttentionChunk = 256;  // the longest chunk
inline constexpr uint64_t kAttentionMinChunk = 32;
inline constexpr uint64_t kAttentionSplit = 32;  // chunks of a context shorter than 8k, at most
FERRY_HOST_DEVICE constexpr uint64_t attention_chunk_len(uint64_t n_ctx) {
  uint64_t len = kAttentionMinChunk;
  while (len < kAttentionChunk && len * kAttentionSplit < n_ctx) len *= 2;
  return len;
}
// The chunks of a query that sees n_ctx positions.
FERRY_HOST_DEVICE constexpr uint64_t attention_chunks(uint64_t n_ctx) {
  const uint64_t len = attention_chunk_len(n_ctx);
  return (n_ctx + len - 1) / len;
}
// The most chunks of any query that sees up to n_ctx positions (not monotonic in n_ctx: 1024
// positions are 32 chunks of 32, 1025 are 17 of 64): the partials' room per (query, head).
FERRY_HOST_DEVICE constexpr uint64_t attention_max_chunks(uint64_t n_ctx) {
  const uint64_t c = attention_chunks(n_ctx);
  return n_ctx <= kAttentionMinChunk * kAttentionSplit || c > kAttentionSplit ? c : kAttentionSplit;
}
// A chunk's partial state: [hd] sum over its positions p of e^(s_p - m) v_p, then m (the chunk's
// largest score), then sum of e^(s_p - m).
FERRY_HOST_DEVICE constexpr uint64_t attention_partial_floats(uint64_t head_dim) {
  return head_dim + 2;
}
// Queries run through the chunks and the merge in rounds of at most 64, so that the partials
// scratch [64, heads, attention_max_chunks(ctx), head_dim + 2] is bounded by this rather than by
// the prefill batch: Qwen2-32B at a 32k context takes 170 MB, where a batch of 512 in one round
// would take 1.4 GB of a 24 GB card.
inline constexpr uint64_t kAttentionQueries = 64;
constexpr uint64_t attention_scratch_floats(uint64_t batch, uint64_t ctx, uint64_t heads,
                                            uint64_t head_dim) {
  return (batch < kAttentionQueries ? batch : kAttentionQueries) * heads *
         attention_max_chunks(ctx) * attention_partial_floats(head_dim);
}

// Throws ferry::Error unless heads is a multiple of kv_heads > 0 and head_dim > 0 (both twins
// check it; format/model_config.cpp already refuses such a model at load).
void check_attention_shape(uint64_t heads, uint64_t kv_heads, uint64_t head_dim);

// The element type of the KV cache. f16 (the default) halves its memory and the bytes attention
// reads per token: Qwen2-32B at a 4k context holds 1.1 GB instead of 2.1 GB, at 32k 8.6 GB
// instead of 17. Keys and values are rounded once, when stored (2^-11 relative); the scores,
// softmax and sums stay fp32. f32 keeps them exact, for reference checks.
enum class KvType { f16, f32 };
inline constexpr uint64_t kv_type_bytes(KvType t) {
  return t == KvType::f16 ? 2 : 4;
}
// "f16" or "f32"; kv_type_from_name gives nullopt for anything else.
const char* kv_type_name(KvType t);
std::optional<KvType> kv_type_from_name(std::string_view name);

// Causal grouped-query attention of n query tokens at positions pos .. pos+n-1 over the KV cache,
// on the pool: q [n, heads, hd]; k, v caches [ctx, kv_heads, hd] holding positions 0 .. pos+n-1;
// partials scratch of attention_scratch_floats(n, pos + n, heads, hd) floats; out [n, heads, hd].
// Query head h reads kv head h / (heads / kv_heads).
void attention_cpu(CpuPool& pool, const float* q, const float* k_cache, const float* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out);
// The same over an f16 cache (k_cache, v_cache: f16 bits). isa picks how the rows convert: F16C
// with FMA, or the portable path (tests compare the two).
void attention_cpu(CpuPool& pool, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out, KernelIsa isa = best_kernel_isa());

// Tiled prefill (FlashAttention-2; kernels/attention_tiled.cu, its CPU twin
// kernels/attention_tiled_cpu.cpp): one CTA per (kv head, block of Bq queries) walks the causal
// prefix in tiles of Bk positions, stages each K/V tile once in shared memory and serves every
// query of its block and every query head of the group from it, keeping a running max, sum and
// rescaled accumulator per (query, head) row instead of partials. Each thread owns 4 rows x 8
// dimensions (head_dim / 8 lanes per row), so a CTA of 256 threads holds 8192 / head_dim rows:
// 128, 64, 32 at head_dim 64, 128, 256, of which Bq = rows / group queries (Qwen2-32B, 40/8 heads
// of 128: 12 queries x 5 heads). Bk = 32 positions (16 at head_dim 256) keeps the two K/V
// buffers at 16-32 KB and the scores at 2-16 KB: at most 40 KB of static shared memory, under
// the 48 KB every architecture from sm_75 gives without opting in.
FERRY_HOST_DEVICE constexpr uint64_t attention_tile_rows(uint64_t head_dim) {
  return 8192 / head_dim;
}
FERRY_HOST_DEVICE constexpr uint64_t attention_tile_keys(uint64_t head_dim) {
  return head_dim <= 128 ? 32 : 4096 / head_dim;
}
FERRY_HOST_DEVICE constexpr uint64_t attention_tile_queries(uint64_t head_dim, uint64_t group) {
  return attention_tile_rows(head_dim) / group;
}
// The shapes the tiled kernel is compiled for: head_dim 64, 128 or 256 and 1 to 8 query heads
// per kv head (every current GQA model).
bool attention_tiled_supports(uint64_t heads, uint64_t kv_heads, uint64_t head_dim);
// Whether attention_cuda runs n queries of the f16 cache tiled: a supported shape with at least
// kAttentionTiledMinCtas CTAs. The tiled kernel does not split the context, so each CTA walks
// the whole prefix alone: with fewer CTAs than the GPU has SMs (132 on an H100/H200) it leaves
// SMs idle for the whole call, where the group kernel still spreads its chunks over all
// of them. From 128 CTAs on (Qwen2-32B: n >= 181, 16 blocks of 12 queries x 8 kv heads;
// Llama 3 70B: n >= 121) the tiled kernel fills the GPU and reads each K/V tile once per Bq
// queries instead of once per query.
inline constexpr uint64_t kAttentionTiledMinCtas = 128;
bool attention_tiled_applies(uint64_t n, uint64_t heads, uint64_t kv_heads, uint64_t head_dim);

// The tiled prefill on the pool, the same tiles and online-softmax order as the kernel (for
// tests: the CPU forward keeps attention_cpu): q [n, heads, hd]; k, v caches [ctx, kv_heads, hd]
// holding positions 0 .. pos+n-1; out [n, heads, hd]. Throws ferry::Error on a shape
// attention_tiled_supports refuses.
void attention_tiled_cpu(CpuPool& pool, const float* q, const float* k_cache, const float* v_cache,
                         uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads,
                         uint64_t head_dim, float* out);
void attention_tiled_cpu(CpuPool& pool, const float* q, const uint16_t* k_cache,
                         const uint16_t* v_cache, uint64_t n, uint64_t pos, uint64_t heads,
                         uint64_t kv_heads, uint64_t head_dim, float* out);

// The CUDA twins (kernels/attention.cu). Throws ferry::Error past 65,535 chunks of context.
void attention_cuda(const float* q, const float* k_cache, const float* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream);
void attention_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream);
// The tiled kernel alone over an f16 cache (kernels/attention_tiled.cu; attention_cuda calls it
// where attention_tiled_applies). Throws ferry::Error on a shape attention_tiled_supports refuses
// or past 65,535 query blocks.
void attention_tiled_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                          uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads,
                          uint64_t head_dim, float* out, CUstream_st* stream);

}  // namespace ferry
