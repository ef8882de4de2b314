// The element-wise steps of the forward pass (normalization, RoPE, activation, residual and bias
// adds, the f16 store of the KV cache, the greedy argmax, the embedding gather), each declared as
// a pair of twins with the same arguments: X_cpu (kernels/elementwise_cpu.cpp) and X_cuda
// (kernels/elementwise.cu: device pointers, enqueued on `stream`, no synchronization).
// tests/test_gpu_kernels.cpp compares each pair. Activations are fp32 rows of [n, dim]; norm
// weights and biases bf16 bits, as the packed file stores them.
//
// These move a few KB per token each (hidden 5120 x 4 bytes) against the ~17 GB of weights a 32B
// model reads: they are written for clarity, not for peak bandwidth.
#pragma once
#include <cstdint>

struct CUstream_st;

namespace ferry {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for each of the n rows of x, out [n, dim]; w [dim].
// out may be x. Also Qwen3's per-head q_norm / k_norm: rows of [n * heads, head_dim], in place.
void rmsnorm_cpu(const float* x, const uint16_t* w, float eps, uint64_t n, uint64_t dim,
                 float* out);
void rmsnorm_cuda(const float* x, const uint16_t* w, float eps, uint64_t n, uint64_t dim,
                  float* out, CUstream_st* stream);

// Rotates v[n, heads, head_dim] in place, token t at position pos + t, with Hugging Face's
// rotate_half pairing (element i with i + head_dim/2); inv_freq [head_dim/2]. cos and sin are
// multiplied by `scale` first, as transformers does (yarn's attention factor; 1 otherwise).
void rope_cpu(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
              const float* inv_freq, float scale);
void rope_cuda(float* v, uint64_t n, uint64_t heads, uint64_t head_dim, uint64_t pos,
               const float* inv_freq, float scale, CUstream_st* stream);

// One sequence's attention inputs in one step (one launch at decode instead of four): q [n,
// heads, head_dim] and k [n, kv_heads, head_dim] rotated in place as rope_cpu does, token t at
// position pos + t; then, when k16 is not null, the rotated k and v [n, kv_heads, head_dim]
// stored as f16 (store_f16_cpu) to k16 and v16, the sequence's rows of an f16 KV cache.
// Equals rope_cpu(q), rope_cpu(k), store_f16_cpu(k), store_f16_cpu(v) bit for bit.
void rope_kv_cpu(float* q, float* k, const float* v, uint64_t n, uint64_t heads, uint64_t kv_heads,
                 uint64_t head_dim, uint64_t pos, const float* inv_freq, float scale, uint16_t* k16,
                 uint16_t* v16);
void rope_kv_cuda(float* q, float* k, const float* v, uint64_t n, uint64_t heads, uint64_t kv_heads,
                  uint64_t head_dim, uint64_t pos, const float* inv_freq, float scale,
                  uint16_t* k16, uint16_t* v16, CUstream_st* stream);

// out[i] = silu(gate[i]) * up[i], i < count
void silu_mul_cpu(const float* gate, const float* up, uint64_t count, float* out);
void silu_mul_cuda(const float* gate, const float* up, uint64_t count, float* out,
                   CUstream_st* stream);

// x[i] += y[i], i < count (the residual adds)
void add_cpu(float* x, const float* y, uint64_t count);
void add_cuda(float* x, const float* y, uint64_t count, CUstream_st* stream);

// y[t, i] += bias[i] (bf16), t < n, i < rows: the q/k/v biases of Qwen2
void add_bias_cpu(float* y, const uint16_t* bias, uint64_t n, uint64_t rows);
void add_bias_cuda(float* y, const uint16_t* bias, uint64_t n, uint64_t rows, CUstream_st* stream);

// dst[i] = src[i] as f16 bits, i < count: keys and values into an f16 KV cache. Round to nearest
// even; beyond the largest f16, 65504, saturated to it rather than made infinite, so that one
// outlier cannot turn a whole head's softmax into NaN; NaN stays NaN.
void store_f16_cpu(const float* src, uint64_t count, uint16_t* dst);
void store_f16_cuda(const float* src, uint64_t count, uint16_t* dst, CUstream_st* stream);

// *out = index of the largest of v[0..count) (the first one on ties, as std::max_element)
void argmax_cpu(const float* v, uint64_t count, int32_t* out);
void argmax_cuda(const float* v, uint64_t count, int32_t* out, CUstream_st* stream);

// out[t] = the embedding row of tokens[t] as fp32, t < n: table [vocab, dim] bf16, out [n, dim].
// Host only, for both passes: the table stays in host memory and the CUDA pass uploads the
// gathered rows (dim x 4 bytes a token) rather than keep a 1.5 GB table on the card.
void embed_rows_cpu(const uint16_t* table, const int32_t* tokens, uint64_t n, uint64_t dim,
                    float* out);

}  // namespace ferry
