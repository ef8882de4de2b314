// The multithreaded CPU matrix products (kernels/matmul.hpp) against the scalar reference
// matvecs (kernels/matvec.hpp), every instruction-set path, and the thread pool they run on.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>
#include <stdexcept>
#include <thread>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "kernels/matvec.hpp"
#include "kernels/q8_tile.hpp"
#include "quantizer/int4_quantize.hpp"
#include "quantizer/int8_quantize.hpp"
#include "tests/alloc_counter.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::activations;

struct Weights {
  uint64_t rows, cols;
  std::vector<uint8_t> q;              // [rows, blocks * 64]
  std::vector<uint16_t> scales, mins;  // [rows, blocks]
  std::vector<uint16_t> bf16;          // [rows, cols]
  const uint16_t* mins_or_null = nullptr;
  Int4View int4() const { return {q.data(), scales.data(), mins_or_null, rows, cols}; }
};

Weights make_weights(Scheme scheme, uint64_t rows, uint64_t cols) {
  Weights w{rows, cols, {}, {}, {}, {}, nullptr};
  std::mt19937 rng(uint32_t(rows * 131 + cols));
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> f(rows * cols);
  for (float& v : f) v = nd(rng);
  const uint64_t blocks = int4_blocks_per_row(cols);
  w.q.resize(rows * blocks * kBlockBytes);
  w.scales.resize(rows * blocks);
  w.mins.resize(rows * blocks);
  quantize_int4(f.data(), rows, cols, scheme, w.q.data(), w.scales.data(), w.mins.data());
  if (scheme_has_mins(scheme)) w.mins_or_null = w.mins.data();
  for (float v : f) w.bf16.push_back(float_to_bf16(v));
  return w;
}

// Reference: the scalar matvec per token, transposed into [n, rows].
std::vector<float> reference(const Weights& w, bool int4, const std::vector<float>& x, uint64_t n) {
  std::vector<float> y(n * w.rows);
  for (uint64_t t = 0; t < n; ++t)
    int4 ? matvec_int4_cpu(w.int4(), &x[t * w.cols], &y[t * w.rows])
         : matvec_bf16_cpu(w.bf16.data(), w.rows, w.cols, &x[t * w.cols], &y[t * w.rows]);
  return y;
}

std::vector<float> run(const Weights& w, bool int4, const std::vector<float>& x, uint64_t n,
                       unsigned threads, KernelIsa isa) {
  CpuPool pool(threads);
  std::vector<float> y(n * w.rows, NAN);
  int4 ? matmul_int4_cpu(pool, w.int4(), x.data(), n, y.data(), isa)
       : matmul_bf16_cpu(pool, w.bf16.data(), w.rows, w.cols, x.data(), n, y.data(), isa);
  return y;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += double(got[i] - want[i]) * double(got[i] - want[i]);
    ref += double(want[i]) * double(want[i]);
  }
  return std::sqrt(err / ref);
}

struct Shape {
  uint64_t rows, cols;
};

std::vector<KernelIsa> isas() {
  std::vector<KernelIsa> v = {KernelIsa::portable};
  if (kernel_isa_available(KernelIsa::avx2)) v.push_back(KernelIsa::avx2);
  if (kernel_isa_available(KernelIsa::avx512)) v.push_back(KernelIsa::avx512);
  return v;
}

TEST(Matmul, EveryPathMatchesTheScalarReference) {
  // cols: partial last blocks (320, 200, 100), a partial last group of 16 (200 % 16 = 8, 100),
  // several column chunks for multi-token tiles (4096 > 512); rows: not a multiple of the row
  // tiles (3, 4) nor of the 32-row panel.
  for (Scheme scheme : {Scheme::bf16, Scheme::sym, Scheme::asym, Scheme::asym_clip})
    for (Shape s : {Shape{67, 320}, Shape{40, 200}, Shape{33, 4096}, Shape{5, 100}})
      for (uint64_t n : {1u, 3u, 8u, 17u, 64u}) {
        const bool int4 = scheme != Scheme::bf16;
        const Weights w = make_weights(int4 ? scheme : Scheme::sym, s.rows, s.cols);
        const std::vector<float> x = activations(n, s.cols), want = reference(w, int4, x, n);
        for (KernelIsa isa : isas()) {
          SCOPED_TRACE(testing::Message() << scheme_name(scheme) << " " << s.rows << "x" << s.cols
                                          << " n=" << n << " isa=" << int(isa));
          // fp32 sums in another order (vector lanes, FMA): ~1e-7 per term, 4096 terms.
          EXPECT_LT(relative_error(run(w, int4, x, n, 2, isa), want), 2e-6);
        }
      }
}

// Wider than the 16,384 columns of a decode chunk: the accumulators cross chunk boundaries.
TEST(Matmul, WideRowsCrossColumnChunks) {
  for (bool int4 : {false, true}) {
    const Weights w = make_weights(Scheme::asym, 9, 20000);
    for (uint64_t n : {1u, 2u}) {
      const std::vector<float> x = activations(n, w.cols), want = reference(w, int4, x, n);
      for (KernelIsa isa : isas())
        EXPECT_LT(relative_error(run(w, int4, x, n, 1, isa), want), 4e-6) << int4 << n;
    }
  }
}

// INT4 x INT8: against the fp32 product within the bound of kernels/matmul_cpu.cpp's header,
// |y - y_fp32| <= sum_b d_b / 2 * sum_{i in b} |w_i| (d_b = max|x in b| / 127, the INT8 step;
// w the dequantized weights), plus fp32 rounding (1e-5 relative to the sum of |w x|).
std::vector<float> q8_bound(const Weights& w, const std::vector<float>& x, uint64_t n) {
  const uint64_t blocks = int4_blocks_per_row(w.cols);
  std::vector<float> bound(n * w.rows);
  for (uint64_t t = 0; t < n; ++t)
    for (uint64_t r = 0; r < w.rows; ++r) {
      double e = 0, mag = 0;
      for (uint64_t b = 0; b < blocks; ++b) {
        const uint64_t c0 = b * kBlock, c1 = std::min(w.cols, c0 + kBlock);
        float amax = 0;
        for (uint64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[t * w.cols + c]));
        const float s = f16_to_float(w.scales[r * blocks + b]);
        const float m = w.mins_or_null ? f16_to_float(w.mins[r * blocks + b]) : -8.0f * s;
        double wsum = 0;
        for (uint64_t c = c0; c < c1; ++c) {
          const uint8_t byte = w.q[(r * blocks + b) * kBlockBytes + (c - c0) / 2];
          const double wi = double((c - c0) % 2 ? byte >> 4 : byte & 15) * s + m;
          wsum += std::fabs(wi);
          mag += std::fabs(wi * x[t * w.cols + c]);
        }
        e += amax / 127.0 / 2 * wsum;
      }
      bound[t * w.rows + r] = float(e + 1e-5 * mag);
    }
  return bound;
}

// An INT8 weight (block-128, format/int8.hpp) of the same random values as make_weights would
// draw for another seed: the default's v_proj.
struct Int8Weights {
  std::vector<int8_t> q;         // [rows, blocks * 128]
  std::vector<uint16_t> scales;  // [rows, blocks]
  Int8View view;
};

Int8Weights make_int8_weights(uint64_t rows, uint64_t cols) {
  std::mt19937 rng(uint32_t(rows * 977 + cols));
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> f(rows * cols);
  for (float& v : f) v = nd(rng);
  Int8Weights w{std::vector<int8_t>(int8_code_bytes(rows, cols)),
                std::vector<uint16_t>(int8_scale_count(rows, cols)),
                {}};
  quantize_int8(f.data(), rows, cols, w.q.data(), w.scales.data());
  w.view = {w.q.data(), w.scales.data(), rows, cols};
  return w;
}

std::vector<float> run_q8(const Weights& w, const std::vector<float>& x, uint64_t n,
                          unsigned threads, KernelIsa isa) {
  CpuPool pool(threads);
  std::vector<float> y(n * w.rows, NAN);
  matmul_int4_q8_cpu(pool, w.int4(), x.data(), n, y.data(), isa);
  return y;
}

TEST(MatmulQ8, EveryPathWithinTheInt8RoundingBound) {
  for (Scheme scheme : {Scheme::sym, Scheme::asym, Scheme::asym_clip})
    for (Shape s : {Shape{67, 320}, Shape{40, 200}, Shape{33, 4096}, Shape{5, 100}})
      for (uint64_t n : {1u, 3u, 8u, 17u}) {
        const Weights w = make_weights(scheme, s.rows, s.cols);
        const std::vector<float> x = activations(n, s.cols), want = reference(w, true, x, n);
        const std::vector<float> bound = q8_bound(w, x, n);
        for (KernelIsa isa : isas()) {
          SCOPED_TRACE(testing::Message() << scheme_name(scheme) << " " << s.rows << "x" << s.cols
                                          << " n=" << n << " isa=" << int(isa));
          const std::vector<float> got = run_q8(w, x, n, 2, isa);
          for (size_t i = 0; i < want.size(); ++i)
            ASSERT_LE(std::fabs(got[i] - want[i]), bound[i]) << i;
          // The bound is not vacuous: the INT8 error is well under the fp32 result's size.
          EXPECT_LT(relative_error(got, want), 1e-2);
        }
      }
}

TEST(MatmulQ8, BitIdenticalAcrossThreadCountsAndBatchSplits) {
  const Weights w = make_weights(Scheme::asym, 131, 640);
  const uint64_t n = 11;
  const std::vector<float> x = activations(n, w.cols);
  for (KernelIsa isa : isas()) {
    const std::vector<float> one = run_q8(w, x, n, 1, isa);
    for (unsigned threads : {2u, 3u, 4u}) EXPECT_EQ(run_q8(w, x, n, threads, isa), one);
    for (uint64_t t = 0; t < n; ++t) {
      const std::vector<float> xt(x.begin() + t * w.cols, x.begin() + (t + 1) * w.cols);
      const std::vector<float> yt = run_q8(w, xt, 1, 3, isa);
      for (uint64_t r = 0; r < w.rows; ++r) ASSERT_EQ(yt[r], one[t * w.rows + r]) << t << "," << r;
    }
  }
}

// The activation quantizer's AVX2 path against the portable one, bit for bit: random blocks of
// every length, exact ties (x.5 steps round to even), zeros, denormals, infinities and NaNs.
TEST(MatmulQ8, QuantizerPathsAreBitIdentical) {
  if (!kernel_isa_available(KernelIsa::avx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-45f, INFINITY, -INFINITY, NAN, 3.5f, -2.5f};
  for (int round = 0; round < 2000; ++round) {
    const uint64_t len = 1 + rng() % 128;
    std::vector<float> x(len);
    const int kind = round % 4;
    for (float& v : x) {
      v = nd(rng) * (kind == 1 ? 1e-39f : 1.0f);
      if (kind == 2) v = float(int(rng() % 255) - 127) * 0.5f;  // ties once scaled by 127/127
      if (kind == 3 && rng() % 8 == 0) v = specials[rng() % std::size(specials)];
    }
    if (kind == 2) x[rng() % len] = 127.0f;  // inv = 1: the halves stay exact ties
    std::vector<int32_t> a(128, 7), b(128, 9);
    const float ma = quantize_q8_block_cpu(x.data(), len, a.data(), KernelIsa::portable);
    const float mb = quantize_q8_block_cpu(x.data(), len, b.data(), KernelIsa::avx2);
    ASSERT_EQ(std::bit_cast<uint32_t>(ma), std::bit_cast<uint32_t>(mb)) << "round " << round;
    ASSERT_EQ(a, b) << "round " << round << " kind " << kind;
  }
}

// The edge blocks the GPU's quantizer must meet the same way (kernels/gemv_int4_kernel.cuh): a
// max at or below kQ8MinBlockMax zeroes the block (127 / 1e-37 is infinite), a NaN is skipped by
// the max and quantizes to a 0 byte, and a block of nothing but NaNs has max 0.
TEST(MatmulQ8, TinyAndNanBlocksQuantizeAsDefined) {
  const auto low_bytes = [](const std::vector<int32_t>& q) {
    std::vector<int> b;
    for (int32_t v : q) b.push_back(int8_t(v));
    return b;
  };
  const std::vector<int> zeros(128, 0);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (KernelIsa isa : isas()) {
    SCOPED_TRACE(int(isa));
    std::vector<float> x(128);
    std::vector<int32_t> q(128);
    for (float& v : x) v = 1e-37f * nd(rng);
    x[3] = 0.0f;
    float m = 0;
    for (float v : x) m = std::max(m, std::fabs(v));
    EXPECT_EQ(quantize_q8_block_cpu(x.data(), 128, q.data(), isa), m);
    EXPECT_EQ(low_bytes(q), zeros);  // was +-127 for every nonzero x
    x.assign(128, 1e-31f);
    x[7] = -kQ8MinBlockMax;  // at the floor: still zero
    EXPECT_EQ(quantize_q8_block_cpu(x.data(), 128, q.data(), isa), kQ8MinBlockMax);
    EXPECT_EQ(low_bytes(q), zeros);
    x[7] = -2 * kQ8MinBlockMax;  // above it: quantized
    quantize_q8_block_cpu(x.data(), 128, q.data(), isa);
    EXPECT_EQ(q[7], -127);
    EXPECT_EQ(q[0], 6);  // 1e-31 * 127 / 2e-30 = 6.35
    x.assign(128, NAN);
    EXPECT_EQ(quantize_q8_block_cpu(x.data(), 100, q.data(), isa), 0.0f);
    EXPECT_EQ(low_bytes(q), zeros);
    x[1] = 2.0f;
    x[2] = -1.0f;
    EXPECT_EQ(quantize_q8_block_cpu(x.data(), 100, q.data(), isa), 2.0f);
    EXPECT_EQ(int8_t(q[0]), 0);
    EXPECT_EQ(q[1], 127);
    EXPECT_EQ(q[2], -64);  // -63.5 rounds to even
  }
}

// In a product, a tiny block adds exactly what a zero block does.
TEST(MatmulQ8, TinyBlockAddsWhatAZeroBlockDoes) {
  const Weights w = make_weights(Scheme::asym_clip, 21, 640);
  std::vector<float> x = activations(2, 640), zeroed = x;
  for (uint64_t c = 128; c < 256; ++c) {
    x[c] *= 1e-38f;  // token 0, block 1
    zeroed[c] = 0.0f;
  }
  for (KernelIsa isa : isas()) EXPECT_EQ(run_q8(w, x, 2, 2, isa), run_q8(w, zeroed, 2, 2, isa));
}

// The AVX-512 block packer against the scalar definition of zmm order (q8::pos_zmm): random
// codes, and int32s whose high bytes are not a sign extension (a NaN's 0x80000000), of which
// only the low byte counts.
TEST(MatmulQ8, Avx512PackerMatchesZmmOrder) {
  if (!kernel_isa_available(KernelIsa::avx512)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  std::mt19937 rng(5);
  for (int round = 0; round < 200; ++round) {
    alignas(64) int32_t qi[kBlock];
    for (int32_t& v : qi)
      v = round % 2 ? int32_t(rng() % 255) - 127 : int32_t(rng() % 8 == 0 ? 0x80000000u : rng());
    std::array<int8_t, kBlock> want{}, got{};
    int32_t want_sum = 0;
    for (uint64_t e = 0; e < kBlock; ++e) {
      want[q8::pos_zmm(e)] = int8_t(qi[e]);
      want_sum += int8_t(qi[e]);
    }
    ASSERT_EQ(q8::pack_block_avx512(qi, got.data()), want_sum) << "round " << round;
    ASSERT_EQ(got, want) << "round " << round;
  }
}

// The fused products (one parallel region for q/k/v, one for gate/up with SiLU * up) against
// separate matmul_int4_q8_cpu calls, bit for bit: odd row counts (so tasks straddle the parts),
// partial blocks, 1..17 tokens, 1..4 threads, both paths; and rows past the INT8 kernel's
// 32,768 columns, which both run on the fp32 path.
TEST(MatmulQ8Fused, QkvBitIdenticalToSeparateCalls) {
  struct Case {
    uint64_t q, k, v, cols;
  };
  for (Scheme scheme : {Scheme::sym, Scheme::asym})
    for (Case c :
         {Case{67, 13, 13, 320}, Case{64, 32, 32, 576}, Case{5, 3, 1, 100}, Case{3, 1, 2, 32832}})
      for (uint64_t n : {1u, 3u, 8u, 17u}) {
        if (c.cols > 32768 && n > 3) continue;  // the slow fp32 path: two sizes suffice
        const Weights wq = make_weights(scheme, c.q, c.cols),
                      wk = make_weights(scheme, c.k, c.cols),
                      wv = make_weights(scheme, c.v, c.cols);
        const std::vector<float> x = activations(n, c.cols);
        for (KernelIsa isa : isas()) {
          const std::vector<float> q = run_q8(wq, x, n, 1, isa), k = run_q8(wk, x, n, 1, isa),
                                   v = run_q8(wv, x, n, 1, isa);
          for (unsigned threads : {1u, 2u, 3u, 4u}) {
            SCOPED_TRACE(testing::Message()
                         << scheme_name(scheme) << " q" << c.q << " cols " << c.cols << " n=" << n
                         << " isa=" << int(isa) << " threads=" << threads);
            CpuPool pool(threads);
            std::vector<float> fq(q.size(), NAN), fk(k.size(), NAN), fv(v.size(), NAN);
            const FusedPart parts[3] = {{.q4 = wq.int4(), .q8 = {}, .y = fq.data()},
                                        {.q4 = wk.int4(), .q8 = {}, .y = fk.data()},
                                        {.q4 = wv.int4(), .q8 = {}, .y = fv.data()}};
            matmul_q8_fused_cpu(pool, parts, 3, x.data(), n, isa);
            EXPECT_EQ(fq, q);
            EXPECT_EQ(fk, k);
            EXPECT_EQ(fv, v);
          }
        }
      }
}

// The default file's q/k/v: INT4 q and k beside an INT8 v in one region (also k INT8 between
// two INT4 parts, so INT8 rows sit inside the joint range), each against its own separate call
// (matmul_int4_q8_cpu, matmul_int8_q8_cpu), bit for bit, for 1..4 threads and both paths.
TEST(MatmulQ8Fused, Int8PartsBesideInt4BitIdenticalToSeparateCalls) {
  struct Case {
    uint64_t q, k, v, cols;
  };
  for (Case c :
       {Case{67, 13, 13, 320}, Case{64, 32, 32, 576}, Case{5, 3, 1, 100}, Case{3, 1, 2, 32832}})
    for (uint64_t n : {1u, 3u, 9u}) {
      if (c.cols > 32768 && n > 1) continue;  // the slow fp32 path: one size suffices
      const Weights wq = make_weights(Scheme::asym, c.q, c.cols);
      const Int8Weights k8 = make_int8_weights(c.k, c.cols), v8 = make_int8_weights(c.v, c.cols);
      const std::vector<float> x = activations(n, c.cols);
      for (KernelIsa isa : isas()) {
        CpuPool one(1);
        std::vector<float> q = run_q8(wq, x, n, 1, isa), k(n * c.k), v(n * c.v);
        matmul_int8_q8_cpu(one, k8.view, x.data(), n, k.data(), isa);
        matmul_int8_q8_cpu(one, v8.view, x.data(), n, v.data(), isa);
        for (unsigned threads : {1u, 2u, 3u, 4u}) {
          SCOPED_TRACE(testing::Message() << "q" << c.q << " cols " << c.cols << " n=" << n
                                          << " isa=" << int(isa) << " threads=" << threads);
          CpuPool pool(threads);
          std::vector<float> fq(q.size(), NAN), fk(k.size(), NAN), fv(v.size(), NAN);
          const FusedPart qkv[3] = {{.q4 = wq.int4(), .q8 = {}, .y = fq.data()},
                                    {.q4 = {}, .q8 = k8.view, .y = fk.data(), .int8 = true},
                                    {.q4 = {}, .q8 = v8.view, .y = fv.data(), .int8 = true}};
          matmul_q8_fused_cpu(pool, qkv, 3, x.data(), n, isa);
          EXPECT_EQ(fq, q);
          EXPECT_EQ(fk, k);
          EXPECT_EQ(fv, v);
          // k INT8 between INT4 q and INT4 "v" (q again): INT8 rows in the middle of the range.
          std::fill(fq.begin(), fq.end(), NAN);
          std::fill(fk.begin(), fk.end(), NAN);
          std::vector<float> fq2(q.size(), NAN);
          const FusedPart mid[3] = {{.q4 = wq.int4(), .q8 = {}, .y = fq.data()},
                                    {.q4 = {}, .q8 = k8.view, .y = fk.data(), .int8 = true},
                                    {.q4 = wq.int4(), .q8 = {}, .y = fq2.data()}};
          matmul_q8_fused_cpu(pool, mid, 3, x.data(), n, isa);
          EXPECT_EQ(fq, q);
          EXPECT_EQ(fk, k);
          EXPECT_EQ(fq2, q);
        }
      }
    }
}

TEST(MatmulQ8Fused, GateUpBitIdenticalToSeparateCallsAndSiluMul) {
  for (Shape s : {Shape{67, 320}, Shape{1536, 576}, Shape{7, 100}, Shape{3, 32832}})
    for (uint64_t n : {1u, 2u, 9u}) {
      const Weights wg = make_weights(Scheme::asym_clip, s.rows, s.cols);
      const Weights wu = make_weights(Scheme::sym, s.rows, s.cols);
      const std::vector<float> x = activations(n, s.cols);
      for (KernelIsa isa : isas()) {
        const std::vector<float> g = run_q8(wg, x, n, 1, isa), u = run_q8(wu, x, n, 1, isa);
        std::vector<float> h(g.size());
        silu_mul_cpu(g.data(), u.data(), g.size(), h.data());
        for (unsigned threads : {1u, 2u, 3u}) {
          SCOPED_TRACE(testing::Message() << s.rows << "x" << s.cols << " n=" << n
                                          << " isa=" << int(isa) << " threads=" << threads);
          CpuPool pool(threads);
          std::vector<float> fg(g.size(), NAN), fu(u.size(), NAN);
          // h written over gate's output, as the forward pass does.
          matmul_int4_q8_gate_up_cpu(pool, wg.int4(), wu.int4(), x.data(), n, fg.data(), fu.data(),
                                     fg.data(), isa);
          EXPECT_EQ(fu, u);
          EXPECT_EQ(fg, h);
        }
      }
    }
}

TEST(MatmulQ8Fused, MismatchedShapesAreAnError) {
  CpuPool pool(2);
  const Weights a = make_weights(Scheme::sym, 4, 128), b = make_weights(Scheme::sym, 4, 256);
  const std::vector<float> x = activations(1, 256);
  std::vector<float> ya(4), yb(4), h(4);
  const FusedPart parts[2] = {{.q4 = a.int4(), .q8 = {}, .y = ya.data()},
                              {.q4 = b.int4(), .q8 = {}, .y = yb.data()}};
  EXPECT_THROW(matmul_q8_fused_cpu(pool, parts, 2, x.data(), 1, best_kernel_isa()), Error);
  const Int8Weights c8 = make_int8_weights(4, 256);  // an INT8 part of other columns
  const FusedPart mixed[2] = {{.q4 = a.int4(), .q8 = {}, .y = ya.data()},
                              {.q4 = {}, .q8 = c8.view, .y = yb.data(), .int8 = true}};
  EXPECT_THROW(matmul_q8_fused_cpu(pool, mixed, 2, x.data(), 1, best_kernel_isa()), Error);
  EXPECT_THROW(matmul_int4_q8_gate_up_cpu(pool, a.int4(), b.int4(), x.data(), 1, ya.data(),
                                          yb.data(), h.data(), best_kernel_isa()),
               Error);
}

// Paging and batching tests compare logits bit for bit: the result may not depend on the
// thread count, nor on which tokens share a batch.
TEST(Matmul, BitIdenticalAcrossThreadCountsAndBatchSplits) {
  for (bool int4 : {false, true}) {
    const Weights w = make_weights(Scheme::asym, 131, 640);
    const uint64_t n = 11;
    const std::vector<float> x = activations(n, w.cols);
    for (KernelIsa isa : isas()) {
      const std::vector<float> one = run(w, int4, x, n, 1, isa);
      for (unsigned threads : {2u, 3u, 4u}) EXPECT_EQ(run(w, int4, x, n, threads, isa), one);
      for (uint64_t t = 0; t < n; ++t) {  // each token alone, as decode would run it
        const std::vector<float> xt(x.begin() + t * w.cols, x.begin() + (t + 1) * w.cols);
        const std::vector<float> yt = run(w, int4, xt, 1, 3, isa);
        for (uint64_t r = 0; r < w.rows; ++r)
          ASSERT_EQ(yt[r], one[t * w.rows + r]) << t << "," << r;
      }
    }
  }
}

TEST(CpuPool, CoversEveryIndexOnceForAnySplit) {
  for (unsigned threads : {1u, 2u, 5u}) {
    CpuPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (uint64_t n : {0u, 1u, 7u, 100u, 1001u})
      for (uint64_t grain : {1u, 3u, 64u}) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, grain, [&](uint64_t b, uint64_t e) {
          for (uint64_t i = b; i < e; ++i) hits[i]++;
        });
        for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << "/" << grain;
      }
  }
}

TEST(CpuPool, RethrowsAWorkersExceptionAndStaysUsable) {
  CpuPool pool(3);
  EXPECT_THROW(pool.parallel_for(300, 1,
                                 [](uint64_t b, uint64_t) {
                                   if (b > 0) throw std::runtime_error("worker failed");
                                 }),
               std::runtime_error);
  std::atomic<uint64_t> sum = 0;
  pool.parallel_for(300, 1, [&](uint64_t b, uint64_t e) { sum += e - b; });
  EXPECT_EQ(sum.load(), 300u);
}

// Back-to-back calls, as decode makes them, with pauses long enough for the workers to fall
// asleep between some of them: no call may lose a worker's share or its wake-up.
TEST(CpuPool, ManyCallsAcrossSpinAndSleep) {
  CpuPool pool(4);
  std::vector<std::atomic<uint64_t>> count(64);
  for (int call = 0; call < 1000; ++call) {
    pool.parallel_for(64, 1, [&](uint64_t b, uint64_t e) {
      for (uint64_t i = b; i < e; ++i) count[i]++;
    });
    if (call % 100 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto& c : count) ASSERT_EQ(c.load(), 1000u);
}

// A call from inside fn (or from a second thread while one runs) does its work on its caller.
TEST(CpuPool, NestedCallRunsInline) {
  CpuPool pool(3);
  std::vector<std::atomic<int>> hits(30 * 10);
  pool.parallel_for(30, 1, [&](uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i)
      pool.parallel_for(10, 1, [&](uint64_t b2, uint64_t e2) {
        for (uint64_t k = b2; k < e2; ++k) hits[i * 10 + k]++;
      });
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

// Decode calls the kernels ~7 times per layer per token: no call may allocate (the pool's
// std::function holds one captured pointer in place, the scratch is on the stack).
TEST(Matmul, CallsDoNotAllocate) {
#ifndef FERRY_COUNT_ALLOCATIONS
  GTEST_SKIP() << "allocations are not counted under AddressSanitizer";
#endif
  const Weights w = make_weights(Scheme::asym, 200, 640);
  const std::vector<float> x = activations(9, w.cols);
  std::vector<float> y(9 * w.rows);
  CpuPool pool(3);
  for (KernelIsa isa : isas()) {
    const uint64_t before = test::allocations();
    for (uint64_t n : {1u, 9u}) {
      matmul_int4_cpu(pool, {w.q.data(), w.scales.data(), w.mins.data(), w.rows, w.cols}, x.data(),
                      n, y.data(), isa);
      matmul_int4_cpu(pool, {w.q.data(), w.scales.data(), nullptr, w.rows, w.cols}, x.data(), n,
                      y.data(), isa);
      matmul_bf16_cpu(pool, w.bf16.data(), w.rows, w.cols, x.data(), n, y.data(), isa);
    }
    EXPECT_EQ(test::allocations(), before) << int(isa);
  }
}

TEST(Matmul, TooManyColumnsIsAnError) {
  CpuPool pool(1);
  EXPECT_ANY_THROW(
      matmul_int4_cpu(pool, {nullptr, nullptr, nullptr, 1, 1u << 20}, nullptr, 1, nullptr));
}

}  // namespace
}  // namespace ferry
