// The fused decode GEMV's grid (kernels/gemv_fused.hpp) and its CPU twins, without a GPU: every
// row of every weight is computed by exactly one slot of the kernel's grid, and the twins, which
// walk that grid, equal the unfused steps of runtime/forward_cpu.cpp (product, add_bias, add,
// silu_mul) bit for bit. tests/test_gpu_kernels.cpp holds the CUDA launchers to these twins.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/cpu_pool.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matvec.hpp"
#include "quantizer/int4_quantize.hpp"
#include "quantizer/int8_quantize.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

// Counts how often each (part, row) is a slot of the grid; rows past a part's end are skipped
// as the kernel skips them.
std::vector<std::vector<int>> coverage(const std::vector<uint64_t>& rows, bool paired) {
  const GemvGrid g = gemv_grid(rows.data(), uint32_t(rows.size()), paired);
  std::vector<std::vector<int>> seen;
  for (uint64_t r : rows) seen.emplace_back(r, 0);
  for (uint32_t cta = 0; cta < g.ctas(); ++cta) {
    uint32_t first_part = ~0u;
    for (uint32_t warp = 0; warp < kGemvWarps; ++warp)
      for (uint32_t r = 0; r < g.rows_per_warp; ++r) {
        const GemvSlot s = gemv_slot(g, cta, warp, r);
        EXPECT_LT(s.part, rows.size());
        if (!paired) {  // every CTA serves one weight: its loads and epilogue are uniform
          if (first_part == ~0u) first_part = s.part;
          EXPECT_EQ(s.part, first_part) << "CTA " << cta;
        } else {  // r and r + R/2 are the same row of gate and up
          const uint32_t half = g.rows_per_warp / 2;
          EXPECT_EQ(s.part, r / half);
          EXPECT_EQ(s.row, gemv_slot(g, cta, warp, r % half).row);
        }
        if (s.row < rows[s.part]) ++seen[s.part][s.row];
      }
  }
  return seen;
}

TEST(GemvFused, GridComputesEveryRowOnce) {
  const std::vector<std::vector<uint64_t>> shapes = {
      {5120, 1024, 1024},  // Qwen2-32B q, k, v: 7168 rows, 2 a warp
      {896, 128, 128},     // Qwen2-0.5B: 1 a warp
      {37, 5, 70},         // parts smaller than a CTA, not multiples of 8
      {27648},             // gate alone: 4 a warp
      {1},
  };
  for (const auto& rows : shapes) {
    const auto seen = coverage(rows, false);
    for (size_t p = 0; p < rows.size(); ++p)
      for (uint64_t i = 0; i < rows[p]; ++i)
        ASSERT_EQ(seen[p][i], 1) << "part " << p << " row " << i << " of " << rows[p];
  }
  for (uint64_t r : {27648u, 4864u, 100u, 1u}) {  // gate/up pairs, R = 4, 2, 2, 2
    const auto seen = coverage({r, r}, true);
    for (size_t p = 0; p < 2; ++p)
      for (uint64_t i = 0; i < r; ++i)
        ASSERT_EQ(seen[p][i], 1) << "pair part " << p << " row " << i;
  }
  const uint64_t qkv[3] = {5120, 1024, 1024}, gate_up[2] = {27648, 27648}, small[2] = {64, 64};
  EXPECT_EQ(gemv_grid(qkv, 3, false).rows_per_warp, 2u);
  EXPECT_EQ(gemv_grid(gate_up, 2, true).rows_per_warp, 4u);
  EXPECT_EQ(gemv_grid(small, 2, true).rows_per_warp, 2u);  // a pair needs two rows a warp
}

// The CUDA launchers' grid: at most max_ctas CTAs (the card's resident count by default), never
// more than the groups, never none; and the kernel's loop over cta, cta + grid, ... serves each
// group once.
TEST(GemvFused, LaunchGridCapsAndEveryGroupIsServedOnce) {
  EXPECT_EQ(gemv_launch_ctas(1184, kGemvGridResident, 264), 264u);  // 7B gate/up on an H200
  EXPECT_EQ(gemv_launch_ctas(100, kGemvGridResident, 264), 100u);   // fewer groups than slots
  EXPECT_EQ(gemv_launch_ctas(1184, kGemvGridFull, 264), 1184u);
  EXPECT_EQ(gemv_launch_ctas(1184, 3, 264), 3u);
  EXPECT_EQ(gemv_launch_ctas(2, 3, 264), 2u);
  EXPECT_EQ(gemv_launch_ctas(5, kGemvGridResident, 0), 1u);  // a resident count of 0: one CTA
  for (uint32_t groups : {1u, 7u, 264u, 265u, 1184u})
    for (uint32_t cap : {kGemvGridResident, kGemvGridFull, 1u, 3u, 100u}) {
      const uint32_t grid = gemv_launch_ctas(groups, cap, 264);
      ASSERT_GE(grid, 1u);
      ASSERT_LE(grid, groups);
      std::vector<int> served(groups, 0);
      for (uint32_t block = 0; block < grid; ++block)
        for (uint32_t cta = block; cta < groups; cta += grid) ++served[cta];
      EXPECT_EQ(served, std::vector<int>(groups, 1)) << groups << " groups, cap " << cap;
    }
}

struct Weight {
  std::vector<uint8_t> q;
  std::vector<uint16_t> scales, mins, bias;
  Int4View view;
};

Weight make_weight(uint64_t rows, uint64_t cols, Scheme scheme, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<float> w(rows * cols);
  for (float& v : w) v = 0.05f * normal(rng);
  Weight out;
  out.q.resize(rows * blocks * kBlockBytes);
  out.scales.resize(rows * blocks);
  out.mins.resize(rows * blocks);
  quantize_int4(w.data(), rows, cols, scheme, out.q.data(), out.scales.data(), out.mins.data());
  for (uint64_t i = 0; i < rows; ++i) out.bias.push_back(float_to_bf16(0.1f * normal(rng)));
  out.view = {out.q.data(), out.scales.data(), scheme_has_mins(scheme) ? out.mins.data() : nullptr,
              rows, cols};
  return out;
}

// The unfused product: y[n, rows] = x W^T, token by token with the scalar reference.
std::vector<float> product(const Weight& w, const std::vector<float>& x, uint64_t n) {
  std::vector<float> y(n * w.view.rows);
  for (uint64_t t = 0; t < n; ++t)
    matvec_int4_cpu(w.view, x.data() + t * w.view.cols, y.data() + t * w.view.rows);
  return y;
}

TEST(GemvFused, QkvWithBiasesEqualsThreeProductsAndAddBias) {
  const uint64_t cols = 384;  // three blocks, a partial chunk
  for (Scheme s : {Scheme::sym, Scheme::asym})
    for (uint64_t n : {1u, 3u, 8u}) {
      SCOPED_TRACE(std::string(scheme_name(s)) + " n=" + std::to_string(n));
      const Weight q = make_weight(96, cols, s, 1), k = make_weight(40, cols, s, 2),
                   v = make_weight(40, cols, s, 3);
      const std::vector<float> x = test::activations(n, cols);
      std::vector<float> yq(n * 96, NAN), yk(n * 40, NAN), yv(n * 40, NAN);
      const GemvOut outs[3] = {{q.view, yq.data(), q.bias.data()},
                               {k.view, yk.data(), k.bias.data()},
                               {v.view, yv.data(), nullptr}};  // v without a bias
      gemv_int4_fused_cpu(outs, 3, x.data(), n, GemvStore::set, GemvX::f32);
      std::vector<float> wq = product(q, x, n), wk = product(k, x, n), wv = product(v, x, n);
      add_bias_cpu(wq.data(), q.bias.data(), n, 96);
      add_bias_cpu(wk.data(), k.bias.data(), n, 40);
      EXPECT_EQ(yq, wq);
      EXPECT_EQ(yk, wk);
      EXPECT_EQ(yv, wv);
    }
}

TEST(GemvFused, ResidualStoreEqualsProductThenAdd) {
  const uint64_t rows = 130, cols = 1100, n = 2;  // a whole chunk and a partial one
  for (Scheme s : {Scheme::sym_clip, Scheme::asym_hqq}) {
    const Weight o = make_weight(rows, cols, s, 7);
    const std::vector<float> x = test::activations(n, cols);
    std::vector<float> residual = test::activations(n, rows);
    std::vector<float> want = residual;
    const std::vector<float> proj = product(o, x, n);
    add_cpu(want.data(), proj.data(), n * rows);
    const GemvOut out{o.view, residual.data(), nullptr};
    gemv_int4_fused_cpu(&out, 1, x.data(), n, GemvStore::add, GemvX::f32);
    EXPECT_EQ(residual, want) << scheme_name(s);
  }
}

// The INT8 twin's epilogue: y = W x + b and y += W x + b equal matvec_int8_cpu, add_bias and add.
TEST(GemvFused, Int8EpilogueEqualsProductBiasAndAdd) {
  const uint64_t rows = 45, cols = 300, n = 3;  // a partial last block
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(rows * cols);
  for (float& v : w) v = nd(rng);
  std::vector<int8_t> q(int8_code_bytes(rows, cols));
  std::vector<uint16_t> scales(int8_scale_count(rows, cols)), bias(rows);
  quantize_int8(w.data(), rows, cols, q.data(), scales.data());
  for (uint16_t& b : bias) b = float_to_bf16(10 * nd(rng));
  const Int8View view{q.data(), scales.data(), rows, cols};
  const std::vector<float> x = test::activations(n, cols), residual = test::activations(n, rows);
  std::vector<float> product(n * rows);
  for (uint64_t t = 0; t < n; ++t)
    matvec_int8_cpu(view, x.data() + t * cols, product.data() + t * rows);
  add_bias_cpu(product.data(), bias.data(), n, rows);
  std::vector<float> set(n * rows, NAN), added = residual, want_added = residual;
  const GemvOut8 out{view, set.data(), bias.data()};
  gemv_int8_fused_cpu(&out, 1, x.data(), n, GemvStore::set);
  EXPECT_EQ(set, product);
  add_cpu(want_added.data(), product.data(), n * rows);
  const GemvOut8 out_add{view, added.data(), bias.data()};
  gemv_int8_fused_cpu(&out_add, 1, x.data(), n, GemvStore::add);
  EXPECT_EQ(added, want_added);
  // Two weights of one input in one launch (k and v): each output as its own product.
  const uint64_t rows2 = 13;
  std::vector<int8_t> q2(int8_code_bytes(rows2, cols));
  std::vector<uint16_t> scales2(int8_scale_count(rows2, cols));
  quantize_int8(w.data(), rows2, cols, q2.data(), scales2.data());
  const Int8View view2{q2.data(), scales2.data(), rows2, cols};
  std::vector<float> y1(n * rows, NAN), y2(n * rows2, NAN), want2(n * rows2);
  for (uint64_t t = 0; t < n; ++t)
    matvec_int8_cpu(view2, x.data() + t * cols, want2.data() + t * rows2);
  const GemvOut8 both[2] = {{view, y1.data(), bias.data()}, {view2, y2.data(), nullptr}};
  gemv_int8_fused_cpu(both, 2, x.data(), n, GemvStore::set);
  EXPECT_EQ(y1, product);
  EXPECT_EQ(y2, want2);
  const Int8View narrow{q2.data(), scales2.data(), rows2, cols - 1};
  const GemvOut8 mismatched[2] = {{view, y1.data(), nullptr}, {narrow, y2.data(), nullptr}};
  EXPECT_THROW(gemv_int8_fused_cpu(mismatched, 2, x.data(), n, GemvStore::set), Error);
}

TEST(GemvFused, GateUpEqualsTwoProductsAndSiluMul) {
  const uint64_t cols = 256;
  for (uint64_t rows : {200u, 4300u})  // 2 rows a warp (1 pair); 8600 rows in all: 4 (2 pairs)
    for (uint64_t n : {1u, 5u}) {
      SCOPED_TRACE(std::to_string(rows) + " rows n=" + std::to_string(n));
      const Weight gate = make_weight(rows, cols, Scheme::asym, 11),
                   up = make_weight(rows, cols, Scheme::sym, 12);  // schemes may differ
      const std::vector<float> x = test::activations(n, cols);
      std::vector<float> got(n * rows, NAN);
      gemv_int4_silu_mul_cpu(gate.view, up.view, x.data(), n, got.data(), GemvX::f32);
      std::vector<float> g = product(gate, x, n);
      const std::vector<float> u = product(up, x, n);
      silu_mul_cpu(g.data(), u.data(), n * rows, g.data());
      EXPECT_EQ(got, g);
    }
}

// GemvX::q8: the twin is the CPU's own INT4 x INT8 product (matmul_int4_q8_cpu's portable path,
// the same expression on the same quantized x) bit for bit, through the fused grid and epilogues,
// for sym and asym weights, a partial last block and 1..8 tokens.
TEST(GemvFused, Q8TwinEqualsTheCpuInt8ActivationProduct) {
  CpuPool pool(1);
  const uint64_t cols = 1100;  // a whole chunk and a partial one, a partial last block
  auto q8_product = [&](const Weight& w, const std::vector<float>& x, uint64_t n) {
    std::vector<float> y(n * w.view.rows);
    matmul_int4_q8_cpu(pool, w.view, x.data(), n, y.data(), KernelIsa::portable);
    return y;
  };
  for (Scheme s : {Scheme::sym, Scheme::asym_hqq})
    for (uint64_t n : {1u, 3u, 8u}) {
      SCOPED_TRACE(std::string(scheme_name(s)) + " n=" + std::to_string(n));
      const Weight q = make_weight(96, cols, s, 21), k = make_weight(40, cols, s, 22);
      const std::vector<float> x = test::activations(n, cols);
      std::vector<float> yq(n * 96, NAN), yk(n * 40, NAN);
      const GemvOut outs[2] = {{q.view, yq.data(), q.bias.data()}, {k.view, yk.data(), nullptr}};
      gemv_int4_fused_cpu(outs, 2, x.data(), n, GemvStore::set, GemvX::q8);
      std::vector<float> wq = q8_product(q, x, n);
      add_bias_cpu(wq.data(), q.bias.data(), n, 96);
      EXPECT_EQ(yq, wq);
      EXPECT_EQ(yk, q8_product(k, x, n));
      // Paired gate/up: silu(gate x) * (up x) of the q8 products.
      const Weight up = make_weight(40, cols, s, 23);
      std::vector<float> h(n * 40, NAN), g = q8_product(k, x, n);
      gemv_int4_silu_mul_cpu(k.view, up.view, x.data(), n, h.data(), GemvX::q8);
      const std::vector<float> u = q8_product(up, x, n);
      silu_mul_cpu(g.data(), u.data(), n * 40, g.data());
      EXPECT_EQ(h, g);
      // And they differ from the fp32 products by the q8 rounding only: a relative error of ~1%.
      const std::vector<float> f = product(q, x, n);
      double num = 0, den = 0;
      for (size_t i = 0; i < f.size(); ++i) {
        const double e = double(yq[i]) - double(f[i]) - bf16_to_float(q.bias[i % 96]);
        num += e * e;
        den += double(f[i]) * f[i];
      }
      EXPECT_LT(num / den, 1e-3);
      EXPECT_GT(num / den, 0.0);  // the q8 path really ran
    }
}

TEST(GemvFused, RefusesWhatOneLaunchCannotServe) {
  const Weight a = make_weight(8, 256, Scheme::sym, 1), b = make_weight(8, 128, Scheme::sym, 2);
  const std::vector<float> x = test::activations(1, 256);
  std::vector<float> y(8);
  const GemvOut mixed[2] = {{a.view, y.data(), nullptr}, {b.view, y.data(), nullptr}};
  EXPECT_THROW(gemv_int4_fused_cpu(mixed, 2, x.data(), 1, GemvStore::set, GemvX::f32), Error);
  const GemvOut four[4] = {mixed[0], mixed[0], mixed[0], mixed[0]};
  EXPECT_THROW(gemv_int4_fused_cpu(four, 4, x.data(), 1, GemvStore::set, GemvX::q8), Error);
  EXPECT_THROW(gemv_int4_silu_mul_cpu(a.view, b.view, x.data(), 1, y.data(), GemvX::q8), Error);
}

}  // namespace
}  // namespace ferry
