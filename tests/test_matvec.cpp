// The CPU matrix-vector kernels against a double-precision product of the dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "base/dtype.hpp"
#include "kernels/dequant.hpp"
#include "kernels/matvec.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {
namespace {

struct Case {
  Scheme scheme;
  uint64_t rows, cols;
};

class MatvecInt4 : public testing::TestWithParam<Case> {};

TEST_P(MatvecInt4, MatchesDequantizedProduct) {
  const auto [scheme, rows, cols] = GetParam();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(rows * cols), x(cols);
  for (float& v : w) v = nd(rng);
  for (float& v : x) v = nd(rng) * 50;
  const uint64_t blocks = int4_blocks_per_row(cols);
  std::vector<uint8_t> q(rows * blocks * kBlockBytes);
  std::vector<uint16_t> scales(rows * blocks), mins(rows * blocks);
  const bool has_mins = scheme_has_mins(scheme);
  quantize_int4(w.data(), rows, cols, scheme, q.data(), scales.data(),
                has_mins ? mins.data() : nullptr);
  std::vector<float> dq(rows * cols), y(rows);
  const Int4View view{q.data(), scales.data(), has_mins ? mins.data() : nullptr, rows, cols};
  dequant_int4_f32_cpu(view, dq.data());
  matvec_int4_cpu(view, x.data(), y.data());
  double err = 0, ref_norm = 0;
  for (uint64_t r = 0; r < rows; ++r) {
    double ref = 0;
    for (uint64_t c = 0; c < cols; ++c) ref += double(dq[r * cols + c]) * x[c];
    err += (ref - y[r]) * (ref - y[r]);
    ref_norm += ref * ref;
  }
  EXPECT_LT(std::sqrt(err / ref_norm), 1e-5);  // fp32 accumulation over <= 4096 terms
}

INSTANTIATE_TEST_SUITE_P(Schemes, MatvecInt4,
                         testing::Values(Case{Scheme::sym, 64, 4096}, Case{Scheme::asym, 64, 4096},
                                         Case{Scheme::asym_clip, 70, 320},  // padded last block
                                         Case{Scheme::sym_clip, 9, 100}));

TEST(MatvecBf16, MatchesDoubleProduct) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const uint64_t rows = 33, cols = 577;
  std::vector<uint16_t> w(rows * cols);
  std::vector<float> x(cols), y(rows);
  for (auto& v : w) v = float_to_bf16(nd(rng));
  for (auto& v : x) v = nd(rng);
  matvec_bf16_cpu(w.data(), rows, cols, x.data(), y.data());
  for (uint64_t r = 0; r < rows; ++r) {
    double ref = 0;
    for (uint64_t c = 0; c < cols; ++c) ref += double(bf16_to_float(w[r * cols + c])) * x[c];
    EXPECT_NEAR(y[r], ref, 1e-4 * std::sqrt(double(cols)));
  }
}

}  // namespace
}  // namespace ferry
