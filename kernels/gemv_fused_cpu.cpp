// CPU twins of the fused INT4 (and INT8) GEMV launchers (kernels/gemv_fused.hpp): they walk the
// kernel's grid (gemv_grid, gemv_slot) CTA by CTA, warp by warp, and compute each slot's row with
// the scalar reference matvec_int4_cpu (GemvX::q8: the scalar INT4 x INT8 product of
// matmul_int4_q8_cpu on the same quantized x) and the kernel's epilogue, so that a slot computed
// twice or never, or an epilogue applied to the wrong part, shows against the unfused steps
// (tests/test_gemv_fused.cpp). A reference for tests: one thread, no speed asked of it.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matvec.hpp"

namespace ferry {
namespace {

// Row `row` of w as a one-row weight.
Int4View one_row(const Int4View& w, uint64_t row) {
  const uint64_t blocks = w.blocks();
  return {w.q + row * blocks * kBlockBytes, w.scales + row * blocks,
          w.mins ? w.mins + row * blocks : nullptr, 1, w.cols};
}

// The n tokens of x [n, cols], and with GemvX::q8 each quantized per block of 128 as
// matmul_int4_q8_cpu does (quantize_q8_block_cpu: every instruction set gives the same bits).
struct TwinX {
  const float* x;
  uint64_t cols, blocks;
  GemvX xq;
  std::vector<int32_t> q;     // [n, blocks, 128]
  std::vector<float> d;       // [n, blocks] max|x| / 127
  std::vector<int32_t> qsum;  // [n, blocks] sum of q

  TwinX(const float* x_, uint64_t n, uint64_t cols_, GemvX xq_)
      : x(x_), cols(cols_), blocks(int4_blocks_per_row(cols_)), xq(xq_) {
    if (xq != GemvX::q8) return;
    q.resize(n * blocks * kBlock);
    d.resize(n * blocks);
    qsum.resize(n * blocks);
    for (uint64_t t = 0; t < n; ++t)
      for (uint64_t b = 0; b < blocks; ++b) {
        const uint64_t c0 = b * kBlock, len = std::min(cols, c0 + kBlock) - c0;
        int32_t* qb = q.data() + (t * blocks + b) * kBlock;
        d[t * blocks + b] =
            quantize_q8_block_cpu(x + t * cols + c0, len, qb, KernelIsa::portable) / 127.0f;
        for (uint64_t e = 0; e < kBlock; ++e) qsum[t * blocks + b] += int8_t(qb[e]);
      }
  }

  // Row `row` of w times token t: q8_tile_rows_portable's expression, y = sum over blocks of
  // (s d) isum + m (d qsum) (m = -8 s for sym).
  float dot(const Int4View& w, uint64_t row, uint64_t t) const {
    if (xq == GemvX::f32) {
      float y = 0.0f;
      matvec_int4_cpu(one_row(w, row), x + t * cols, &y);
      return y;
    }
    float acc = 0.0f, off = 0.0f;
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint8_t* cb = w.q + (row * blocks + b) * kBlockBytes;
      const int32_t* qb = q.data() + (t * blocks + b) * kBlock;
      int32_t isum = 0;
      for (uint64_t e = 0; e < kBlock; ++e)
        // q as the packed int8 the CPU's tiles hold: a NaN of x (INT_MIN from the conversion)
        // keeps its low byte, 0, as the kernel's conversion gives.
        isum += int32_t((cb[e / 2] >> (e % 2 * 4)) & 15) * int8_t(qb[e]);
      const float s = f16_to_float(w.scales[row * blocks + b]), db = d[t * blocks + b];
      acc += float(isum) * (s * db);
      off += (w.mins ? f16_to_float(w.mins[row * blocks + b]) : s) *
             (db * float(qsum[t * blocks + b]));
    }
    return acc + (w.mins ? off : -8.0f * off);
  }
};

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
                         GemvStore store, GemvX xq) {
  check_parts(outs, parts);
  uint64_t rows[kGemvMaxParts] = {};
  for (size_t p = 0; p < parts; ++p) rows[p] = outs[p].w.rows;
  const GemvGrid g = gemv_grid(rows, uint32_t(parts), false);
  const TwinX tx(x, n, outs[0].w.cols, xq);
  for (uint32_t cta = 0; cta < g.ctas(); ++cta)
    for (uint32_t warp = 0; warp < kGemvWarps; ++warp)
      for (uint32_t r = 0; r < g.rows_per_warp; ++r) {
        const GemvSlot s = gemv_slot(g, cta, warp, r);
        const GemvOut& o = outs[s.part];
        if (s.row >= o.w.rows) continue;
        for (uint64_t t = 0; t < n; ++t) {
          float v = tx.dot(o.w, s.row, t);
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
                            float* out, GemvX xq) {
  if (gate.rows != up.rows || gate.cols != up.cols)
    throw Error("gemv_int4_silu_mul: gate and up differ in shape");
  const uint64_t rows[2] = {gate.rows, up.rows};
  const GemvGrid g = gemv_grid(rows, 2, true);
  const uint32_t half = g.rows_per_warp / 2;
  const TwinX tx(x, n, gate.cols, xq);
  for (uint32_t cta = 0; cta < g.ctas(); ++cta)
    for (uint32_t warp = 0; warp < kGemvWarps; ++warp)
      for (uint32_t r = 0; r < half; ++r) {
        const GemvSlot sg = gemv_slot(g, cta, warp, r), su = gemv_slot(g, cta, warp, r + half);
        if (sg.part != 0 || su.part != 1 || sg.row != su.row)
          throw Error("gemv_int4_silu_mul: the paired grid lost its pairing");
        if (sg.row >= gate.rows) continue;
        for (uint64_t t = 0; t < n; ++t) {
          const float gv = tx.dot(gate, sg.row, t);
          const float uv = tx.dot(up, su.row, t);
          // silu_mul_cpu itself (its AVX2 exp where the CPU has it): the same bits as the
          // separate products and silu_mul_cpu, element by element.
          silu_mul_cpu(&gv, &uv, 1, out + t * gate.rows + sg.row);
        }
      }
}

}  // namespace ferry
