// Element-wise and attention operations of the forward pass, CPU twins of the CUDA kernels of
// kernels/ops_cuda.hpp. Activations are fp32; norm weights bf16 bits, as the packed file stores
// them.
#pragma once
#include <cstdint>

#include "kernels/cpu_isa.hpp"
#include "kernels/cpu_pool.hpp"

#include "base/simd.hpp"

namespace ferry {

// out = x / sqrt(mean(x^2) + eps) * w   (x, out [n]; w [n] bf16)
void rmsnorm_cpu(const float* x, const uint16_t* w, float eps, uint64_t n, float* out);
// Rotates each head of v [heads, head_dim] by position pos with Hugging Face's rotate_half
// pairing (element i with i + head_dim/2); inv_freq [head_dim/2].
void rope_cpu(float* v, uint64_t heads, uint64_t head_dim, uint64_t pos, const float* inv_freq);
// out = silu(gate) * up   [n]
void silu_mul_cpu(const float* gate, const float* up, uint64_t n, float* out);
// y[t, i] += bias[i] (bias bf16), t < n, i < rows: the q/k/v biases of Qwen2
void add_bias_cpu(float* y, const uint16_t* bias, uint64_t n, uint64_t rows);
// Attention runs over the context in chunks of kAttentionChunk positions (flash-decoding): each
// (query, head, chunk) leaves a partial softmax state, and a merge rescales and sums the chunks of
// a head. Decode of one token then spreads over heads x chunks threads or blocks instead of one per
// head: Qwen2-32B has 40 heads for the 132 SMs of an H100, and a 32k context is 128 chunks.
// 256 positions: 1 KB of scores per chunk (the GPU keeps them in shared memory).
inline constexpr uint64_t kAttentionChunk = 256;
FERRY_HOST_DEVICE constexpr uint64_t attention_chunks(uint64_t n_ctx) {
  return (n_ctx + kAttentionChunk - 1) / kAttentionChunk;
}
// A chunk's partial state: [hd] sum over its positions p of e^(s_p - m) v_p, then m (the chunk's
// largest score), then sum of e^(s_p - m).
FERRY_HOST_DEVICE constexpr uint64_t attention_partial_floats(uint64_t head_dim) {
  return head_dim + 2;
}
// Queries run through the chunks and the merge in rounds of at most 64, so that the partials
// scratch [64, heads, attention_chunks(ctx), head_dim + 2] is bounded by this rather than by the
// prefill batch: Qwen2-32B at a 32k context takes 170 MB, where a batch of 512 in one round would
// take 1.4 GB of a 24 GB card.
inline constexpr uint64_t kAttentionQueries = 64;
constexpr uint64_t attention_scratch_floats(uint64_t batch, uint64_t ctx, uint64_t heads,
                                            uint64_t head_dim) {
  return (batch < kAttentionQueries ? batch : kAttentionQueries) * heads * attention_chunks(ctx) *
         attention_partial_floats(head_dim);
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
// "f16" or "f32"; parse_kv_type throws ferry::Error on anything else.
const char* kv_type_name(KvType t);
KvType parse_kv_type(const char* name);

// dst[i] = src[i] as f16 bits (round to nearest even; beyond the largest f16, 65504, saturated
// to it rather than made infinite, so that one outlier cannot turn a whole head's softmax into
// NaN), i < n: keys and values into an f16 KV cache. The CPU twin of store_f16_cuda.
void store_f16_cpu(const float* src, uint64_t n, uint16_t* dst);

// Causal grouped-query attention of n query tokens at positions pos .. pos+n-1 over the KV cache,
// on the pool: q [n, heads, hd]; k, v caches [ctx, kv_heads, hd] holding positions 0 .. pos+n-1;
// partials scratch of attention_scratch_floats(n, pos + n, heads, hd) floats; out [n, heads, hd].
// Query head h reads kv head h / (heads / kv_heads). The CPU twin of attention_cuda
// (kernels/ops_cuda.hpp): the same rounds, the same chunks, the same merge.
void attention_cpu(CpuPool& pool, const float* q, const float* k_cache, const float* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out);
// The same over an f16 cache (k_cache, v_cache: f16 bits). isa picks how the rows convert: F16C
// with FMA, or the portable path (tests compare the two).
void attention_cpu(CpuPool& pool, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                   uint64_t n, uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                   float* partials, float* out, KernelIsa isa = best_kernel_isa());

}  // namespace ferry
