// The decode INT4 GEMV with its neighbours fused in (kernels/gemv_int4.cu), so that a layer at
// decode (n <= 8 tokens) launches 5 products and attention instead of 21 kernels:
//  - up to three weights of the same input width in one grid over all their rows (q, k and v:
//    x staged once per CTA instead of three launches each staging it);
//  - an epilogue in the store: y = W x + b (Qwen2's q/k/v biases, no add_bias launch) or
//    y += W x + b (o and down written straight into the residual stream, no add launch);
//  - gate and up paired in one grid, each warp computing the same output rows of both, and
//    silu(gate x) * (up x) stored as the down projection's input (no silu_mul launch).
// Each CUDA launcher has a CPU twin with the same arguments (kernels/gemv_fused_cpu.cpp) that
// walks the same grid through gemv_slot below, row by row through matvec_int4_cpu and the same
// epilogue; tests/test_gemv_fused.cpp holds the twins to the unfused steps, and
// tests/test_gpu_kernels.cpp the CUDA launchers to their twins.
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/simd.hpp"
#include "format/int4.hpp"
#include "format/int8.hpp"

struct CUstream_st;

namespace ferry {

// One weight of a fused launch and where its product goes: y [n, w.rows]; bias [w.rows] bf16
// bits or nullptr.
struct GemvOut {
  Int4View w;
  float* y = nullptr;
  const uint16_t* bias = nullptr;
};

enum class GemvStore : uint8_t {
  set,  // y = W x (+ b)
  add,  // y += W x (+ b): the residual add
};

// The INT4 GEMV's activations: fp32 as given, or quantized to INT8 per block of 128 in the
// kernel as the CPU's matmul_int4_q8_cpu quantizes them (the same q and d, bit for bit) and
// dotted with the codes in int32 (dp4a): a third of the instructions and a quarter of the
// shared-memory reads per weight (kernels/gemv_int4_kernel.cuh), within the q8 error bound of
// kernels/matmul_cpu.cpp.
enum class GemvX : uint8_t { f32, q8 };

// A block of activations whose max |x| is at or below this quantizes to zero (q = 0; d stays
// max / 127), on every path and device. 127 / max overflows to infinity below ~3.7e-37, where
// the CPU's clamp and the GPU's saturating conversion would part ways (+-127 against a packed -1
// or 0); a block this small adds under 128 x 1e-30 x max|w| to a dot product.
inline constexpr float kQ8MinBlockMax = 1e-30f;

inline constexpr uint32_t kGemvMaxParts = 3;  // q, k, v
inline constexpr uint32_t kGemvWarps = 8;     // warps per CTA (256 threads)

// How many CTAs a one-token deep-path launch may use (max_ctas below; kernels/
// gemv_int4_kernel.cuh). Each of its CTAs stages (and quantizes) all of x once, then loops over
// row groups of its grid (GemvGrid: kGemvWarps * R rows each), cta, cta + grid, ...; so a grid of
// as many CTAs as the card holds at once stages x once per SM slot instead of once per row
// group: Qwen2-7B's paired gate/up is 1184 row groups, 4.5 per slot of an H200's 264.
// kGemvGridResident (the default): that many; kGemvGridFull: one CTA per group; another value:
// at most that many CTAs (tests: 1 and 3 make every CTA loop). The chunked path (batches, x too
// wide or misaligned) stages x chunk by chunk in every group anyway: one CTA per group whatever
// max_ctas. The rows' results do not depend on it, bit for bit: each row is computed whole by
// one warp in the same order whichever CTA runs it.
inline constexpr uint32_t kGemvGridResident = 0;
inline constexpr uint32_t kGemvGridFull = ~0u;

// The grid of a launch of `groups` row groups: max_ctas as above, `resident` the CTAs the card
// holds at once for this launch (given the groups for paths that do not loop).
FERRY_HOST_DEVICE inline uint32_t gemv_launch_ctas(uint32_t groups, uint32_t max_ctas,
                                                   uint32_t resident) {
  uint32_t cap = max_ctas == kGemvGridResident ? resident : max_ctas;
  if (cap < 1) cap = 1;
  return groups < cap ? groups : cap;
}

// y_i = W_i x (+ b_i), or y_i += ..., for each of the 1..3 outputs (every w.cols equal), in one
// launch per group of 8 tokens. x [n, cols] fp32; all pointers on the device.
void gemv_int4_fused_cuda(const GemvOut* outs, size_t parts, const float* x, uint64_t n,
                          GemvStore store, GemvX xq, CUstream_st* stream,
                          uint32_t max_ctas = kGemvGridResident);
void gemv_int4_fused_cpu(const GemvOut* outs, size_t parts, const float* x, uint64_t n,
                         GemvStore store, GemvX xq);

// One INT8 weight of a fused launch: y [n, w.rows]; bias [w.rows] bf16 bits or nullptr.
struct GemvOut8 {
  Int8View w;
  float* y = nullptr;
  const uint16_t* bias = nullptr;
};

// The INT8 decode GEMV (kernels/gemv_int8.cu) with the same epilogue: y_i = W_i x (+ b_i), or
// y_i += ..., for each of the 1..3 outputs (every w.cols equal: the default INT8 k_proj and
// v_proj in one launch), one launch per 8 tokens instead of a product, add_bias and add each
// (Qwen2's k and v have biases). Each CTA serves one weight (8 rows of it); the twin computes
// each row with matvec_int8_cpu.
void gemv_int8_fused_cuda(const GemvOut8* outs, size_t parts, const float* x, uint64_t n,
                          GemvStore store, CUstream_st* stream);
void gemv_int8_fused_cpu(const GemvOut8* outs, size_t parts, const float* x, uint64_t n,
                         GemvStore store);

// out[t, i] = silu(gate_i . x_t) * (up_i . x_t): gate and up [rows, cols] of equal shape, out
// [n, rows] (it may not alias x). silu(g) = g / (1 + exp(-g)), as silu_mul_cpu.
void gemv_int4_silu_mul_cuda(const Int4View& gate, const Int4View& up, const float* x, uint64_t n,
                             float* out, GemvX xq, CUstream_st* stream,
                             uint32_t max_ctas = kGemvGridResident);
void gemv_int4_silu_mul_cpu(const Int4View& gate, const Int4View& up, const float* x, uint64_t n,
                            float* out, GemvX xq);

// The grid of one fused launch, shared by the kernel and its CPU twin. Each warp owns R rows
// (rows_per_warp). Unpaired: part p's rows are split over CTAs cta_end[p-1] .. cta_end[p] - 1,
// kGemvWarps * R rows a CTA, so every CTA serves one weight. Paired (gate/up): every CTA serves
// both weights, each warp R/2 output rows of part 0 and the same R/2 rows of part 1.
struct GemvGrid {
  uint32_t rows_per_warp = 1;  // R: 1, 2 or 4 (2 or 4 paired)
  uint32_t parts = 1;          // 1..3 (2 paired)
  bool paired = false;
  uint32_t cta_end[kGemvMaxParts] = {};  // cumulative CTA counts by part
  FERRY_HOST_DEVICE uint32_t ctas() const { return paired ? cta_end[0] : cta_end[parts - 1]; }
};

// Rows per warp for a launch over `rows` rows in all: 4 where that gives two CTAs of 32 rows to
// each of an H100/H200's 132 SMs (Qwen2-32B's gate+up, 55296 rows), else 2 (q+k+v: 7168 rows,
// 448 CTAs of 16), else 1 (small models). Fixed thresholds, not a device query per call: a GPU
// with fewer SMs only gets more CTAs per SM.
FERRY_HOST_DEVICE inline uint32_t gemv_rows_per_warp(uint64_t rows) {
  constexpr uint64_t kSms = 132;
  if (rows >= kSms * 2 * kGemvWarps * 4) return 4;
  if (rows >= kSms * 2 * kGemvWarps * 2) return 2;
  return 1;
}

// The grid for parts of rows[0..parts); paired: rows[0] == rows[1], parts == 2.
FERRY_HOST_DEVICE inline GemvGrid gemv_grid(const uint64_t* rows, uint32_t parts, bool paired) {
  GemvGrid g;
  g.parts = parts;
  g.paired = paired;
  uint64_t total = 0;
  for (uint32_t p = 0; p < parts; ++p) total += rows[p];
  g.rows_per_warp = gemv_rows_per_warp(total);
  if (paired) {
    if (g.rows_per_warp < 2) g.rows_per_warp = 2;
    const uint64_t per_cta = kGemvWarps * (g.rows_per_warp / 2);
    g.cta_end[0] = g.cta_end[1] = uint32_t((rows[0] + per_cta - 1) / per_cta);
    return g;
  }
  const uint64_t per_cta = kGemvWarps * g.rows_per_warp;
  uint32_t end = 0;
  for (uint32_t p = 0; p < parts; ++p)
    g.cta_end[p] = end += uint32_t((rows[p] + per_cta - 1) / per_cta);
  return g;
}

// Which part and row warp `warp` of CTA `cta` computes as its r-th row (r < R). The row may lie
// past the part's last: the kernel then reads the last row and stores nothing.
struct GemvSlot {
  uint32_t part, row;
};
// PAIRED as g.paired and R as g.rows_per_warp, given apart for the kernel, where they are
// template arguments: a paired slot's part is then a constant of each unrolled r.
template <bool PAIRED>
FERRY_HOST_DEVICE inline GemvSlot gemv_slot_of(const GemvGrid& g, uint32_t R, uint32_t cta,
                                               uint32_t warp, uint32_t r) {
  if constexpr (PAIRED) {
    const uint32_t half = R / 2;
    return {r / half, (cta * kGemvWarps + warp) * half + r % half};
  }
  uint32_t p = 0;
  while (p + 1 < g.parts && cta >= g.cta_end[p]) ++p;
  const uint32_t first = p ? g.cta_end[p - 1] : 0;
  return {p, ((cta - first) * kGemvWarps + warp) * R + r};
}
FERRY_HOST_DEVICE inline GemvSlot gemv_slot(const GemvGrid& g, uint32_t cta, uint32_t warp,
                                            uint32_t r) {
  const uint32_t R = g.rows_per_warp;
  return g.paired ? gemv_slot_of<true>(g, R, cta, warp, r)
                  : gemv_slot_of<false>(g, R, cta, warp, r);
}

// silu(g) * u with the expression of silu_mul_kernel and silu_mul_cpu (whose AVX2 path takes e
// from its vector exp).
FERRY_HOST_DEVICE inline float silu_times(float g, float u, float e) {  // e = exp(-g)
  return g / (1.0f + e) * u;
}

}  // namespace ferry
