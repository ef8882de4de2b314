// Element-wise and attention operations of the forward pass, CPU twins of the CUDA kernels to
// come. Activations are fp32; norm weights bf16 bits, as the packed file stores them.
#pragma once
#include <cstdint>

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
// Causal attention of one query position over the cache: q [heads, hd]; k, v caches
// [n_ctx, kv_heads, hd]; scores scratch [n_ctx]; out [heads, hd]. Grouped-query: query head h
// reads kv head h / (heads / kv_heads).
void attention_cpu(const float* q, const float* k_cache, const float* v_cache, uint64_t n_ctx,
                   uint64_t heads, uint64_t kv_heads, uint64_t head_dim, float* scores, float* out);

}  // namespace ferry
