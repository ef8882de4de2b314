// INT4 block quantization (quantizer/int4_quantize.hpp, layout in format/int4.hpp) and the CPU
// dequantization twins (kernels/dequant.hpp): packing, the half-step error bound, padding, special
// blocks, errors, and the ranking of the schemes on Gaussian weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/dequant.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {
namespace {

constexpr Scheme kInt4Schemes[] = {Scheme::sym, Scheme::sym_clip, Scheme::asym, Scheme::asym_clip,
                                   Scheme::asym_hqq};

// One quantized weight with its buffers sized from the layout in int4.hpp.
struct Packed {
  uint64_t rows = 0, cols = 0, blocks = 0;
  Scheme scheme = Scheme::sym;
  std::vector<uint8_t> q;        // [rows, blocks * 64]
  std::vector<uint16_t> scales;  // [rows, blocks]
  std::vector<uint16_t> mins;    // [rows, blocks], empty for sym schemes
  QuantError err;

  const uint16_t* mins_ptr() const { return mins.empty() ? nullptr : mins.data(); }
  float scale(uint64_t r, uint64_t c) const {
    return f16_to_float(scales[r * blocks + c / kBlock]);
  }
  float min(uint64_t r, uint64_t c) const {
    return mins.empty() ? 0.0f : f16_to_float(mins[r * blocks + c / kBlock]);
  }
  uint8_t code(uint64_t r, uint64_t c) const {
    const uint8_t byte = q[r * blocks * kBlockBytes + c / 2];
    return c % 2 ? byte >> 4 : byte & 15;
  }
  std::vector<float> dequant() const {
    std::vector<float> out(rows * cols);
    dequant_int4_f32_cpu({q.data(), scales.data(), mins_ptr(), rows, cols}, out.data());
    return out;
  }
};

Packed alloc(uint64_t rows, uint64_t cols, Scheme s) {
  Packed p;
  p.rows = rows;
  p.cols = cols;
  p.scheme = s;
  p.blocks = int4_blocks_per_row(cols);
  p.q.assign(rows * p.blocks * kBlockBytes, 0xAB);  // garbage, to see every byte written
  p.scales.assign(rows * p.blocks, 0xFFFF);
  if (scheme_has_mins(s)) p.mins.assign(rows * p.blocks, 0xFFFF);
  return p;
}

Packed quantize(const std::vector<float>& w, uint64_t rows, uint64_t cols, Scheme s) {
  Packed p = alloc(rows, cols, s);
  p.err = quantize_int4(w.data(), rows, cols, s, p.q.data(), p.scales.data(),
                        p.mins.empty() ? nullptr : p.mins.data());
  return p;
}

// Gaussian weights (std 0.02, like a trained linear layer) with a few outliers (0.2% at 8x).
std::vector<float> gaussian(uint64_t n, uint32_t seed, double outlier_rate = 0.002) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> w(n);
  for (float& x : w) {
    x = normal(rng);
    if (u(rng) < outlier_rate) x *= 8.0f;
  }
  return w;
}

TEST(Int4, SchemeNames) {
  for (Scheme s : {Scheme::bf16, Scheme::sym, Scheme::sym_clip, Scheme::asym, Scheme::asym_clip,
                   Scheme::asym_hqq})
    EXPECT_EQ(parse_scheme(scheme_name(s)), s);
  EXPECT_TRUE(scheme_has_mins(Scheme::asym_hqq));
  EXPECT_FALSE(parse_scheme("sym_clip").has_value());
  EXPECT_FALSE(parse_scheme("").has_value());
  EXPECT_TRUE(scheme_has_mins(Scheme::asym_clip));
  EXPECT_FALSE(scheme_has_mins(Scheme::sym_clip));
  EXPECT_FALSE(scheme_is_int4(Scheme::bf16));
  EXPECT_EQ(int4_blocks_per_row(576), 5u);
  EXPECT_EQ(int4_blocks_per_row(128), 1u);
  EXPECT_EQ(int4_blocks_per_row(129), 2u);
}

TEST(Int4, QuantErrorSums) {
  QuantError a{4, 16, 0.5}, b{5, 84, 0.25};
  a.add(b);
  EXPECT_DOUBLE_EQ(a.sum_sq_err, 9);
  EXPECT_DOUBLE_EQ(a.sum_sq_ref, 100);
  EXPECT_DOUBLE_EQ(a.max_abs_err, 0.5);
  EXPECT_DOUBLE_EQ(a.relative_rms(), 0.3);
  EXPECT_EQ(QuantError{}.relative_rms(), 0.0);
}

TEST(Int4, NibbleOrderLowIsEven) {
  // One block by hand: element 0 code 3, element 1 code 12 -> byte 0xC3.
  // Element 4 has code 15 (3.5), so re-quantizing finds absmax 3.5 and the same scale 0.5.
  std::vector<uint8_t> q(kBlockBytes, 0x88);
  q[0] = 0xC3;
  q[2] = 0x8F;
  const std::vector<uint16_t> scales = {float_to_f16(0.5f)};
  std::vector<float> out(kBlock);
  dequant_int4_f32_cpu({q.data(), scales.data(), nullptr, 1, kBlock}, out.data());
  EXPECT_EQ(out[0], (3 - 8) * 0.5f);
  EXPECT_EQ(out[1], (12 - 8) * 0.5f);
  EXPECT_EQ(out[2], 0.0f);
  // And the quantizer packs the same way.
  const Packed p = quantize(out, 1, kBlock, Scheme::sym);
  EXPECT_EQ(p.scales[0], scales[0]);
  EXPECT_EQ(p.q, q);
}

// Hand-built codes -> dequant -> quantize reproduces codes, scales and mins exactly. The codes
// span the full range (sym: 1..15, so absmax = 7 * scale; asym: 0..15) so that re-quantizing
// finds the same grid; scale and min are f16 values of nearby exponents so every
// dequantized value is exact in fp32.
TEST(Int4, PackUnpackRoundTrip) {
  for (Scheme s : kInt4Schemes) {
    SCOPED_TRACE(scheme_name(s));
    const bool sym = !scheme_has_mins(s);
    const uint64_t rows = 3, cols = 256;
    Packed hand = alloc(rows, cols, s);
    std::mt19937 rng(7);
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t b = 0; b < hand.blocks; ++b) {
        uint8_t codes[kBlock];
        for (uint64_t i = 0; i < kBlock; ++i) codes[i] = uint8_t(sym ? 1 + rng() % 15 : rng() % 16);
        codes[5] = 15;  // the top code, so the range is the full grid
        codes[9] = sym ? 1 : 0;
        for (uint64_t j = 0; j < kBlockBytes; ++j)
          hand.q[(r * hand.blocks + b) * kBlockBytes + j] =
              uint8_t(codes[2 * j] | codes[2 * j + 1] << 4);
        hand.scales[r * hand.blocks + b] = float_to_f16(0.01f * float(1 + r + b));
        if (!sym) hand.mins[r * hand.blocks + b] = float_to_f16(-0.07f * float(1 + b));
      }
    }
    const std::vector<float> w = hand.dequant();
    const Packed again = quantize(w, rows, cols, s);
    EXPECT_EQ(again.q, hand.q);
    EXPECT_EQ(again.scales, hand.scales);
    EXPECT_EQ(again.mins, hand.mins);
    EXPECT_EQ(again.err.sum_sq_err, 0.0);
    EXPECT_EQ(again.err.max_abs_err, 0.0);
  }
}

// Every element inside the grid's range [lo, hi] is within half a step of its dequantized value
// (plus fp32 rounding of code * scale + min); an element outside it (only the clip schemes
// clip, and plain schemes by an f16 rounding of the scale or min) maps to the nearest end.
void expect_half_step(const std::vector<float>& w, const Packed& p) {
  const std::vector<float> dq = p.dequant();
  const bool sym = !scheme_has_mins(p.scheme);
  // asym-hqq moves the min off the block's least value: the ends it leaves out map to the grid's
  // nearest end, as clipped ones do.
  const bool clip =
      p.scheme == Scheme::sym_clip || p.scheme == Scheme::asym_clip || p.scheme == Scheme::asym_hqq;
  uint64_t bad = 0, clipped = 0;
  for (uint64_t r = 0; r < p.rows; ++r) {
    for (uint64_t c = 0; c < p.cols; ++c) {
      const float s = p.scale(r, c), m = p.min(r, c);
      const float lo = sym ? -8 * s : m, hi = sym ? 7 * s : 15 * s + m;
      const float x = w[r * p.cols + c], y = dq[r * p.cols + c];
      // fp32 rounding of the dequantized value, relative 2^-24 of the larger magnitude.
      const float tiny = 1e-6f * std::max({std::fabs(lo), std::fabs(hi), s});
      float bound = s / 2 + tiny;
      // Plain schemes: the f16 scale (rounded by at most 2^-11 relative, 15 steps) and min
      // (2^-11 of |min|) may leave the block's extreme just outside the grid.
      if (!clip) bound += 16 * std::ldexp(s, -11) + std::ldexp(std::fabs(m), -11);
      if (x >= lo && x <= hi) {
        bad += std::fabs(x - y) > bound;
      } else if (clip) {
        ++clipped;
        bad += y != (x < lo ? lo : hi) && std::fabs(y - (x < lo ? lo : hi)) > tiny;
      } else {
        bad += std::fabs(x - y) > bound;
      }
    }
  }
  EXPECT_EQ(bad, 0u);
  if (clip) {
    EXPECT_GT(clipped, 0u) << "the clip search never clipped: the test data is too tame";
  }
}

TEST(Int4, ErrorWithinHalfStep) {
  const uint64_t rows = 64, cols = 1024;
  const std::vector<float> w = gaussian(rows * cols, 1);
  for (Scheme s : kInt4Schemes) {
    SCOPED_TRACE(scheme_name(s));
    expect_half_step(w, quantize(w, rows, cols, s));
  }
}

// The reported sums are those of w - dequant(w) over the real elements, padding excluded.
void expect_error_matches_dequant(const std::vector<float>& w, const Packed& p) {
  const std::vector<float> dq = p.dequant();
  double err = 0, ref = 0, max_abs = 0;
  for (uint64_t i = 0; i < w.size(); ++i) {
    const double d = double(w[i]) - double(dq[i]);
    err += d * d;
    ref += double(w[i]) * double(w[i]);
    max_abs = std::max(max_abs, std::fabs(d));
  }
  EXPECT_NEAR(p.err.sum_sq_err, err, 1e-9 * err);
  EXPECT_NEAR(p.err.sum_sq_ref, ref, 1e-9 * ref);
  EXPECT_EQ(p.err.max_abs_err, max_abs);
}

TEST(Int4, PaddingPartialBlocks) {
  // 576 = SmolLM2's hidden size, 4.5 blocks; 100 and 101: less than one block, odd.
  for (uint64_t cols : {576u, 100u, 101u}) {
    for (Scheme s : kInt4Schemes) {
      SCOPED_TRACE(std::string(scheme_name(s)) + " cols " + std::to_string(cols));
      const uint64_t rows = 7;
      const std::vector<float> w = gaussian(rows * cols, uint32_t(cols));
      const Packed p = quantize(w, rows, cols, s);
      for (uint64_t r = 0; r < rows; ++r)
        for (uint64_t c = cols; c < p.blocks * kBlock; ++c)
          ASSERT_EQ(p.code(r, c), 0) << r << "," << c;
      expect_error_matches_dequant(w, p);
      expect_half_step(w, p);
      // The twins write exactly rows * cols elements: a guard past the end stays untouched.
      std::vector<float> f32(rows * cols + 64, -1234.5f);
      dequant_int4_f32_cpu({p.q.data(), p.scales.data(), p.mins_ptr(), rows, cols}, f32.data());
      std::vector<uint16_t> bf(rows * cols + 64, 0x7fc1);
      dequant_int4_bf16_cpu({p.q.data(), p.scales.data(), p.mins_ptr(), rows, cols}, bf.data());
      for (uint64_t i = rows * cols; i < f32.size(); ++i) {
        ASSERT_EQ(f32[i], -1234.5f);
        ASSERT_EQ(bf[i], 0x7fc1);
      }
      for (uint64_t i = 0; i < rows * cols; ++i) ASSERT_NE(f32[i], -1234.5f);
    }
  }
}

TEST(Int4, ZeroAndConstantBlocks) {
  std::vector<float> w(3 * kBlock, 0.0f);  // block 0 zeros, block 1 constant 0.3, block 2 mixed
  for (uint64_t i = kBlock; i < 2 * kBlock; ++i) w[i] = 0.3f;
  for (uint64_t i = 2 * kBlock; i < 3 * kBlock; ++i) w[i] = i % 2 ? -1.0f : 0.0f;
  for (Scheme s : kInt4Schemes) {
    SCOPED_TRACE(scheme_name(s));
    const bool sym = !scheme_has_mins(s);
    const Packed p = quantize(w, 1, w.size(), s);
    const std::vector<float> dq = p.dequant();
    // All zeros: scale 0 and dequantized exactly 0 (sym: code 8 everywhere, asym: code 0, min 0).
    EXPECT_EQ(p.scales[0], 0u);
    for (uint64_t j = 0; j < kBlockBytes; ++j) ASSERT_EQ(p.q[j], sym ? 0x88 : 0x00);
    if (!sym) {
      EXPECT_EQ(p.mins[0], 0u);
    }
    for (uint64_t i = 0; i < kBlock; ++i) ASSERT_EQ(dq[i], 0.0f);
    // Constant: asym stores scale 0 and the value as the min; sym uses the top code 15.
    if (sym) {
      EXPECT_EQ(p.scales[1], float_to_f16(0.3f / 7));
      EXPECT_EQ(p.q[kBlockBytes], 0xFF);
    } else {
      EXPECT_EQ(p.scales[1], 0u);
      EXPECT_EQ(p.mins[1], float_to_f16(0.3f));
      EXPECT_EQ(p.q[kBlockBytes], 0x00);
      for (uint64_t i = kBlock; i < 2 * kBlock; ++i)
        ASSERT_EQ(dq[i], f16_to_float(float_to_f16(0.3f)));
    }
    // Two values {0, -1}: 0 is exact and -1 lands within the f16 rounding of the scale
    // (sym: -7 * f16(1/7) = -0.99976; asym: min -1, code 15 * f16(1/15) - 1 = -0.00024).
    for (uint64_t i = 2 * kBlock; i < 3 * kBlock; ++i) ASSERT_NEAR(dq[i], w[i], 1e-3f);
  }
}

TEST(Int4, NonFiniteThrows) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (Scheme s : kInt4Schemes) {
      std::vector<float> w = gaussian(2 * 300, 3);
      w[300 + 200] = bad;  // row 1, block 1
      try {
        quantize(w, 2, 300, s);
        ADD_FAILURE() << "no error for " << bad << " with " << scheme_name(s);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("non-finite value in block"), std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("row 1, columns 128..255"), std::string::npos)
            << e.what();
      }
    }
  }
}

TEST(Int4, F16OverflowThrows) {
  for (Scheme s : kInt4Schemes) {
    SCOPED_TRACE(scheme_name(s));
    // absmax 1e6: sym needs a scale of 1e6 / 7 = 142857; asym a min of -1e6.
    std::vector<float> w(kBlock, 1.0f);
    w[3] = -1e6f;
    EXPECT_THROW(quantize(w, 1, kBlock, s), Error);
    // A constant block of 70000: asym's min (and sym's scale 10000 fits: no error).
    const std::vector<float> c(kBlock, 70000.0f);
    if (scheme_has_mins(s)) {
      EXPECT_THROW(quantize(c, 1, kBlock, s), Error);
    } else {
      EXPECT_NO_THROW(quantize(c, 1, kBlock, s));
    }
    // The range 60000 - (-60000) over 15 = 8000 fits, but 3e38 - (-3e38) overflows even fp32.
    std::vector<float> wide(kBlock, 0.0f);
    wide[0] = 3e38f;
    wide[1] = -3e38f;
    EXPECT_THROW(quantize(wide, 1, kBlock, s), Error);
  }
  std::vector<float> w(kBlock, 0.0f);
  w[0] = 1e6f;
  try {
    quantize(w, 1, kBlock, Scheme::sym);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f16 maximum"), std::string::npos) << e.what();
  }
}

// The schemes ranked on 256 x 4096 Gaussian weights with 0.2% outliers at 8x.
TEST(Int4, SchemesRankedOnGaussianWeights) {
  const uint64_t rows = 256, cols = 4096;
  const std::vector<float> w = gaussian(rows * cols, 42);
  double rms[6] = {};
  for (Scheme s : kInt4Schemes) {
    const Packed p = quantize(w, rows, cols, s);
    rms[int(s)] = p.err.relative_rms();
    std::printf("  %-9s relative RMS error %.5f  max abs error %.5f\n",
                std::string(scheme_name(s)).c_str(), rms[int(s)], p.err.max_abs_err);
  }
  EXPECT_LT(rms[int(Scheme::sym_clip)], rms[int(Scheme::sym)]);
  EXPECT_LT(rms[int(Scheme::asym_clip)], rms[int(Scheme::asym)]);
  EXPECT_LT(rms[int(Scheme::asym)], rms[int(Scheme::sym)]);
  EXPECT_LT(rms[int(Scheme::asym_clip)], rms[int(Scheme::sym_clip)]);
  EXPECT_LT(rms[int(Scheme::asym_hqq)], rms[int(Scheme::asym)]);  // the min fitted to the codes
  // Sanity of magnitude: 4-bit codes over ~+-3 sigma give roughly 10% relative error.
  EXPECT_LT(rms[int(Scheme::sym)], 0.2);
  EXPECT_GT(rms[int(Scheme::asym_clip)], 0.03);
}

TEST(Int4, Bf16TwinIsRoundedF32Twin) {
  const uint64_t rows = 9, cols = 576;
  const std::vector<float> w = gaussian(rows * cols, 5);
  for (Scheme s : kInt4Schemes) {
    SCOPED_TRACE(scheme_name(s));
    const Packed p = quantize(w, rows, cols, s);
    const std::vector<float> f32 = p.dequant();
    std::vector<uint16_t> bf(rows * cols);
    dequant_int4_bf16_cpu({p.q.data(), p.scales.data(), p.mins_ptr(), rows, cols}, bf.data());
    for (uint64_t i = 0; i < bf.size(); ++i) ASSERT_EQ(bf[i], float_to_bf16(f32[i])) << i;
  }
}

TEST(Int4, Bf16SchemeRejected) {
  std::vector<float> w(kBlock, 0.0f);
  EXPECT_THROW(quantize(w, 1, kBlock, Scheme::bf16), Error);
}

}  // namespace
}  // namespace ferry
