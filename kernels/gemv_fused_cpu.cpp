// CPU twins of the fused INT4 (and INT8) GEMV launchers (kernels/gemv_fused.hpp): they walk the
// kernel's grid (gemv_grid, gemv_slot) CTA by CTA, warp by warp, and compute each slot's row with
// the scalar reference matvec_int4_cpu and the kernel's epilogue, so that a slot computed twice or
// never, or an epilogue applied to the wrong part, shows against the unfused steps
// (tests/test_gemv_fused.cpp). A reference for tests: one thread, no speed asked of it.
#include <cmath>
#include <string>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matvec.hpp"

namespace ferry {
namespace {

// Row `row` of w as a one-row weight.
Int4View one_row(const Int4View& w, uint64_t row) {
  const uint64_t blocks = w.blocks();
  return {w.q + row * blocks * kBlockBytes, w.scales + row * blocks,
          w.mins ? w.mins + row * blocks : nullptr, 1, w.cols};
}

float row_dot(const Int4View& w, uint64_t row, const float* x) {
  float y = 0.0f;
  matvec_int4_cpu(one_row(w, row), x, &y);
  return y;
}

void check_parts(const GemvOut* outs, size_t parts) {
  if (parts == 0 || parts > kGemvMaxParts)
    throw Error("gemv_int4_fused: " + std::to_string(parts) + " outputs, expected 1 to " +
                std::to_string(kGemvMaxParts));
  for (size_t p = 0; p < parts; ++p)
    if (outs[p].w.cols != outs[0].w.cols)
      throw Error("gemv_int4_fused: weights of " + std::to_string(outs[p].w.cols) + " and " +
                  std::to_string(outs[0].w.cols) + " columns cannot share one x");
}

}  // namespace

void gemv_int4_fused_cpu(const GemvOut* outs, size_t parts, const float* x, uint64_t n,
                         GemvStore store) {
  check_parts(outs, parts);
  uint64_t rows[kGemvMaxParts] = {};
  for (size_t p = 0; p < parts; ++p) rows[p] = outs[p].w.rows;
  const GemvGrid g = gemv_grid(rows, uint32_t(parts), false);
  const uint64_t cols = outs[0].w.cols;
  for (uint32_t cta = 0; cta < g.ctas(); ++cta)
    for (uint32_t warp = 0; warp < kGemvWarps; ++warp)
      for (uint32_t r = 0; r < g.rows_per_warp; ++r) {
        const GemvSlot s = gemv_slot(g, cta, warp, r);
        const GemvOut& o = outs[s.part];
        if (s.row >= o.w.rows) continue;
        for (uint64_t t = 0; t < n; ++t) {
          float v = row_dot(o.w, s.row, x + t * cols);
          if (o.bias) v += bf16_to_float(o.bias[s.row]);
          float& y = o.y[t * o.w.rows + s.row];
          y = store == GemvStore::add ? y + v : v;
        }
      }
}

void gemv_int8_fused_cpu(const GemvOut8* outs, size_t parts, const float* x, uint64_t n,
                         GemvStore store) {
  if (parts == 0 || parts > kGemvMaxParts)
    throw Error("gemv_int8_fused: 1 to 3 weights a launch, got " + std::to_string(parts));
  for (size_t p = 0; p < parts; ++p) {
    const Int8View& w = outs[p].w;
    if (w.cols != outs[0].w.cols) throw Error("gemv_int8_fused: the weights differ in width");
    const uint64_t blocks = w.blocks();
    for (uint64_t row = 0; row < w.rows; ++row) {
      const Int8View one{w.q + row * blocks * kBlock, w.scales + row * blocks, 1, w.cols};
      for (uint64_t t = 0; t < n; ++t) {
        float v = 0.0f;
        matvec_int8_cpu(one, x + t * w.cols, &v);
        if (outs[p].bias) v += bf16_to_float(outs[p].bias[row]);
        float& out = outs[p].y[t * w.rows + row];
        out = store == GemvStore::add ? out + v : v;
      }
    }
  }
}

void gemv_int4_silu_mul_cpu(const Int4View& gate, const Int4View& up, const float* x, uint64_t n,
                            float* out) {
  if (gate.rows != up.rows || gate.cols != up.cols)
    throw Error("gemv_int4_silu_mul: gate and up differ in shape");
  const uint64_t rows[2] = {gate.rows, up.rows};
  const GemvGrid g = gemv_grid(rows, 2, true);
  const uint32_t half = g.rows_per_warp / 2;
  for (uint32_t cta = 0; cta < g.ctas(); ++cta)
    for (uint32_t warp = 0; warp < kGemvWarps; ++warp)
      for (uint32_t r = 0; r < half; ++r) {
        const GemvSlot sg = gemv_slot(g, cta, warp, r), su = gemv_slot(g, cta, warp, r + half);
        if (sg.part != 0 || su.part != 1 || sg.row != su.row)
          throw Error("gemv_int4_silu_mul: the paired grid lost its pairing");
        if (sg.row >= gate.rows) continue;
        for (uint64_t t = 0; t < n; ++t) {
          const float gv = row_dot(gate, sg.row, x + t * gate.cols);
          const float uv = row_dot(up, su.row, x + t * up.cols);
          // silu_mul_cpu itself (its AVX2 exp where the CPU has it): the same bits as the
          // separate products and silu_mul_cpu, element by element.
          silu_mul_cpu(&gv, &uv, 1, out + t * gate.rows + sg.row);
        }
      }
}

}  // namespace ferry
