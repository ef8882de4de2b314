// CUDA twins of kernels/ops.hpp (element-wise, normalization, RoPE, attention) and the device
// argmax of greedy decoding. Device pointers; enqueued on `stream`, no synchronization. Each
// takes n rows (tokens) where the CPU twin takes one; tests/test_gpu_kernels.cpp compares them.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace ferry {

// out[n, dim] = rmsnorm(x[n, dim]) * w[dim] (bf16)   (kernels/ops.cu)
void rmsnorm_cuda(const float* x, const uint16_t* w, float eps, uint64_t n, uint64_t dim,
                  float* out, CUstream_st* stream);
// Rotates v[n, heads, head_dim] in place, token t at position pos + t; inv_freq [head_dim/2].
void rope_cuda(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
               const float* inv_freq, CUstream_st* stream);
// out[i] = silu(gate[i]) * up[i], i < count
void silu_mul_cuda(const float* gate, const float* up, uint64_t count, float* out,
                   CUstream_st* stream);
// x[i] += y[i], i < count (residual adds)
void add_cuda(float* x, const float* y, uint64_t count, CUstream_st* stream);
// y[t, i] += bias[i] (bf16), t < n, i < rows
void add_bias_cuda(float* y, const uint16_t* bias, uint64_t n, uint64_t rows, CUstream_st* stream);
// dst[i] = src[i] as f16 bits, i < count: keys and values into an f16 KV cache (store_f16_cpu)
void store_f16_cuda(const float* src, uint64_t count, uint16_t* dst, CUstream_st* stream);
// *out = index of the largest of v[0..count) (the first one on ties, as std::max_element)
void argmax_cuda(const float* v, uint64_t count, int32_t* out, CUstream_st* stream);

// Causal attention of n query tokens at positions pos .. pos+n-1 (kernels/attention.cu):
// q [n, heads, hd]; caches [ctx, kv_heads, hd] holding positions 0 .. pos+n-1; partials scratch
// of attention_scratch_floats(n, pos + n, heads, hd) floats (kernels/ops.hpp); out [n, heads, hd].
// The twin of attention_cpu, round for round and chunk for chunk. Throws ferry::Error past
// 65,535 chunks of context.
void attention_cuda(const float* q, const float* k_cache, const float* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream);
// The same over an f16 cache (k_cache, v_cache: f16 bits), the twin of attention_cpu's f16 form.
void attention_cuda(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, uint64_t n,
                    uint64_t pos, uint64_t heads, uint64_t kv_heads, uint64_t head_dim,
                    float* partials, float* out, CUstream_st* stream);

}  // namespace ferry
