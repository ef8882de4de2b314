// The CPU attention (kernels/attention_cpu.cpp), which runs the context in chunks of 32 to 256
// positions and merges them (flash-decoding), queries in rounds of 64, against the
// textbook softmax computed here in double precision: decode and prefill batches, contexts within
// one chunk and across many, grouped-query heads; and its results do not depend on the number of
// threads. The f16 KV cache: attention over it (F16C and portable paths) against the textbook
// softmax over the rounded keys and values, and store_f16_cpu's rounding and saturation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu_pool.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/exp_avx2.hpp"

namespace ferry {
namespace {

struct Shape {
  uint64_t heads, kv_heads, hd, n, pos;
};

struct Inputs {
  std::vector<float> q, k, v;  // [n, heads, hd], [pos + n, kv_heads, hd] x 2
};

Inputs random_inputs(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  // Scores of a few units, as in a trained model: the softmax is neither flat nor one-hot.
  std::normal_distribution<float> normal(0.0f, 1.5f);
  Inputs in{std::vector<float>(s.n * s.heads * s.hd),
            std::vector<float>((s.pos + s.n) * s.kv_heads * s.hd),
            std::vector<float>((s.pos + s.n) * s.kv_heads * s.hd)};
  for (auto* v : {&in.q, &in.k, &in.v})
    for (float& x : *v) x = normal(rng);
  return in;
}

// softmax(q k^T / sqrt(hd)) v over positions 0 .. pos+t for each query t, in double.
std::vector<double> textbook(const Shape& s, const Inputs& in) {
  const uint64_t kv_dim = s.kv_heads * s.hd;
  std::vector<double> out(s.n * s.heads * s.hd);
  for (uint64_t t = 0; t < s.n; ++t)
    for (uint64_t h = 0; h < s.heads; ++h) {
      const uint64_t kvh = h / (s.heads / s.kv_heads), n_ctx = s.pos + t + 1;
      std::vector<double> w(n_ctx);
      double max_score = -INFINITY, sum = 0;
      for (uint64_t p = 0; p < n_ctx; ++p) {
        double dot = 0;
        for (uint64_t d = 0; d < s.hd; ++d)
          dot += double(in.q[(t * s.heads + h) * s.hd + d]) * in.k[p * kv_dim + kvh * s.hd + d];
        w[p] = dot / std::sqrt(double(s.hd));
        max_score = std::max(max_score, w[p]);
      }
      for (double& x : w) sum += x = std::exp(x - max_score);
      for (uint64_t d = 0; d < s.hd; ++d) {
        double acc = 0;
        for (uint64_t p = 0; p < n_ctx; ++p) acc += w[p] * in.v[p * kv_dim + kvh * s.hd + d];
        out[(t * s.heads + h) * s.hd + d] = acc / sum;
      }
    }
  return out;
}

std::vector<float> run_cpu(const Shape& s, const Inputs& in, unsigned threads) {
  CpuPool pool(threads);
  // Sized as RunState does for a context of exactly pos + n (AddressSanitizer catches a write
  // past it); NaN-filled so that a read of a partial no chunk wrote shows in the result.
  std::vector<float> partials(attention_scratch_floats(s.n, s.pos + s.n, s.heads, s.hd), NAN);
  std::vector<float> out(s.n * s.heads * s.hd);
  attention_cpu(pool, in.q.data(), in.k.data(), in.v.data(), s.n, s.pos, s.heads, s.kv_heads, s.hd,
                partials.data(), out.data());
  return out;
}

// Inputs whose k and v are what an f16 cache holds: `bits` the cache, `in` its values widened.
struct F16Inputs {
  Inputs in;
  std::vector<uint16_t> k, v;
};

F16Inputs f16_inputs(const Shape& s, uint32_t seed) {
  F16Inputs f{random_inputs(s, seed), {}, {}};
  for (auto [src, dst] : {std::pair{&f.in.k, &f.k}, std::pair{&f.in.v, &f.v}}) {
    dst->resize(src->size());
    store_f16_cpu(src->data(), src->size(), dst->data());
    for (size_t i = 0; i < src->size(); ++i) (*src)[i] = f16_to_float((*dst)[i]);
  }
  return f;
}

std::vector<float> run_f16(const Shape& s, const F16Inputs& f, unsigned threads, KernelIsa isa) {
  CpuPool pool(threads);
  std::vector<float> partials(attention_scratch_floats(s.n, s.pos + s.n, s.heads, s.hd), NAN);
  std::vector<float> out(s.n * s.heads * s.hd);
  attention_cpu(pool, f.in.q.data(), f.k.data(), f.v.data(), s.n, s.pos, s.heads, s.kv_heads, s.hd,
                partials.data(), out.data(), isa);
  return out;
}

// Normalized mean squared error of got against want; `worst` gets the largest element error.
double nmse(const std::vector<float>& got, const std::vector<double>& want, double& worst) {
  double err = 0, ref = 0;
  worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
    worst = std::max(worst, std::abs(got[i] - want[i]));
  }
  return err / ref;
}

std::string describe(const Shape& s) {
  return "heads " + std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " hd " +
         std::to_string(s.hd) + " n " + std::to_string(s.n) + " pos " + std::to_string(s.pos);
}

TEST(Attention, ChunkedMatchesTheTextbookSoftmax) {
  const Shape shapes[] = {
      {4, 4, 16, 1, 0},     // one position
      {8, 2, 64, 1, 255},   // exactly one chunk
      {8, 2, 64, 1, 256},   // one position into the second chunk
      {6, 3, 32, 1, 1500},  // decode over 6 chunks
      {4, 1, 48, 20, 240},  // a prefill batch crossing a chunk boundary
      {2, 2, 128, 64, 0},   // a prefill batch from the start
      {4, 2, 32, 9, 1020},  // queries before and after 1024 positions (32 chunks of 32, then
                            // 17 of 64): the partials sized for the most, not the last
      {2, 1, 64, 1, 4096},  // 4097 positions: 17 chunks of 256
  };
  for (const Shape& s : shapes) {
    SCOPED_TRACE(describe(s));
    const Inputs in = random_inputs(s, uint32_t(s.pos * 7 + s.n));
    const std::vector<double> want = textbook(s, in);
    double worst = 0;
    // fp32 sums over at most 1.5k positions: ~1e-7 relative per term, so 1e-10 NMSE holds with
    // three orders to spare, and a wrong merge (a chunk dropped or unscaled) gives ~1e-2.
    EXPECT_LT(nmse(run_cpu(s, in, 3), want, worst), 1e-10) << "worst element off by " << worst;
  }
}

// The chunk arithmetic (kernels/attention.hpp): chunks of 32 to 256 positions, at most 32 of them
// below 8k positions, none empty; attention_max_chunks is the most of any shorter context.
TEST(Attention, ChunksSplitShortContextsAndBoundTheScratch) {
  uint64_t most = 0;
  for (uint64_t n_ctx = 1; n_ctx <= 40000; ++n_ctx) {
    const uint64_t len = attention_chunk_len(n_ctx), chunks = attention_chunks(n_ctx);
    ASSERT_TRUE(len >= kAttentionMinChunk && len <= kAttentionChunk) << n_ctx;
    ASSERT_LT((chunks - 1) * len, n_ctx) << n_ctx;  // the last chunk holds a position
    ASSERT_GE(chunks * len, n_ctx) << n_ctx;
    ASSERT_TRUE(n_ctx > 8192 || chunks <= kAttentionSplit) << n_ctx;
    most = std::max(most, chunks);
    ASSERT_EQ(attention_max_chunks(n_ctx), most) << n_ctx;
  }
  EXPECT_EQ(attention_chunks(512), 16u);  // was 2 (256 each): 8 CTAs for Qwen2-7B's 4 kv heads
  EXPECT_EQ(attention_chunks(32768), 128u);
}

// A query's result depends on its own context alone, not on the batch it ran in (its chunks
// follow from its own length): a prefill of 6 across the change of chunk length at 1024
// positions, bit for bit the 6 queries run one at a time.
TEST(Attention, AQueryGivesTheSameBitsInAnyBatch) {
  const Shape s{4, 2, 32, 6, 1021};
  const Inputs in = random_inputs(s, 3);
  const std::vector<float> batch = run_cpu(s, in, 2);
  const uint64_t q_dim = s.heads * s.hd;
  for (uint64_t t = 0; t < s.n; ++t) {
    const Shape one{s.heads, s.kv_heads, s.hd, 1, s.pos + t};
    const Inputs in1{std::vector<float>(in.q.begin() + ptrdiff_t(t * q_dim),
                                        in.q.begin() + ptrdiff_t((t + 1) * q_dim)),
                     in.k, in.v};
    const std::vector<float> got = run_cpu(one, in1, 2);
    EXPECT_EQ(got, std::vector<float>(batch.begin() + ptrdiff_t(t * q_dim),
                                      batch.begin() + ptrdiff_t((t + 1) * q_dim)))
        << "query " << t;
  }
}

#if FERRY_X86
__attribute__((target("avx2,fma"))) void exp_avx2_many(const float* x, float* y, size_t n) {
  for (size_t i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8_avx2(_mm256_loadu_ps(x + i)));
}
#endif

// The softmax's and SiLU's vector exp (kernels/exp_avx2.hpp) against std::exp: within 2^-22
// relative over [-87, 88], e^-87.34 (~2^-126) below, NaN kept.
TEST(Attention, VectorExpMatchesLibm) {
#if FERRY_X86
  if (!kernel_isa_available(KernelIsa::avx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 0.5f, -0.5f, 1.0f, -1.0f}) x.push_back(v);
  const size_t special = x.size();
  for (float v : {-1000.0f, -INFINITY, NAN, -87.5f, -88.0f, -100.0f, -90.0f, -95.0f})
    x.push_back(v);
  while (x.size() % 8) x.push_back(0.0f);
  std::vector<float> y(x.size());
  exp_avx2_many(x.data(), y.data(), x.size());
  for (size_t i = 0; i < special; ++i) {
    const double want = std::exp(double(x[i]));
    ASSERT_LE(std::fabs(y[i] - want), want * 0x1p-22) << "x = " << x[i];
  }
  for (size_t i = special; i < special + 8; ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(y[i]));
    } else {
      const double floor = std::exp(double(-87.3365448f));  // the clamp, ~2^-126
      EXPECT_LE(std::fabs(y[i] - floor), floor * 0x1p-22) << "x = " << x[i];
    }
  }
#else
  GTEST_SKIP() << "the vector exp is x86 only";
#endif
}

TEST(Attention, ResultsDoNotDependOnTheThreadCount) {
  const Shape s{8, 4, 64, 5, 700};
  const Inputs in = random_inputs(s, 9);
  const std::vector<float> one = run_cpu(s, in, 1);
  for (unsigned threads : {2u, 5u}) EXPECT_EQ(run_cpu(s, in, threads), one) << threads;
}

// The f16 forms read the rounded keys and values and compute in fp32 as the f32 form does, so they
// meet the same bound against the textbook over the rounded values. head_dim 20 and 40 take the
// F16C path's 16-, 8- and 1-element tails; 48 its 32 + 16 split.
TEST(Attention, F16CacheMatchesTheTextbookOverTheRoundedValues) {
  const Shape shapes[] = {
      {8, 2, 64, 1, 256}, {6, 3, 32, 1, 1500}, {4, 1, 48, 20, 240},
      {2, 2, 128, 64, 0}, {4, 2, 20, 3, 300},  {5, 5, 40, 2, 70},
  };
  for (const Shape& s : shapes)
    for (KernelIsa isa : {KernelIsa::portable, KernelIsa::avx2}) {
      if (!kernel_isa_available(isa)) continue;
      SCOPED_TRACE(describe(s) + (isa == KernelIsa::avx2 ? " f16c" : " portable"));
      const F16Inputs f = f16_inputs(s, uint32_t(s.pos * 5 + s.n));
      double worst = 0;
      EXPECT_LT(nmse(run_f16(s, f, 3, isa), textbook(s, f.in), worst), 1e-10)
          << "worst element off by " << worst;
    }
}

TEST(Attention, F16ResultsDoNotDependOnTheThreadCount) {
  const Shape s{8, 4, 64, 5, 700};
  const F16Inputs f = f16_inputs(s, 9);
  const std::vector<float> one = run_f16(s, f, 1, best_kernel_isa());
  for (unsigned threads : {2u, 5u})
    EXPECT_EQ(run_f16(s, f, threads, best_kernel_isa()), one) << threads;
}

// Nearest even as float_to_f16 rounds; beyond 65504 saturated, where float_to_f16 gives inf
// (from 65520 up); NaN kept.
TEST(StoreF16, RoundsToNearestEvenAndSaturates) {
  const float in[] = {1.0f,  -2.5f,  1.0f + 1.0f / 4096, 65504.0f,  65519.0f, 65520.0f, -1e6f,
                      1e-6f, -1e-8f, INFINITY,           -INFINITY, NAN,      3.14159f, 1e-30f};
  constexpr size_t n = std::size(in);
  uint16_t out[n];
  store_f16_cpu(in, n, out);
  for (size_t i = 0; i < n; ++i) {
    SCOPED_TRACE(in[i]);
    if (std::isnan(in[i])) {
      EXPECT_TRUE(std::isnan(f16_to_float(out[i])));
    } else if (std::abs(in[i]) >= 65520.0f) {
      EXPECT_EQ(f16_to_float(out[i]), std::copysign(65504.0f, in[i]));
    } else {
      EXPECT_EQ(out[i], float_to_f16(in[i]));
      // Nearest: within half a unit in the last place (2^-11 relative) of a normal value.
      if (std::abs(in[i]) >= 6.1e-5f) {
        EXPECT_LE(std::abs(f16_to_float(out[i]) - in[i]), std::abs(in[i]) * 0x1p-11f);
      }
    }
  }
  EXPECT_EQ(out[2], float_to_f16(1.0f));  // 1 + 2^-12 is a tie: even mantissa, 1.0
}

// The tiled prefill's CPU twin (kernels/attention_tiled_cpu.cpp: the blocks, tiles and online
// softmax of kernels/attention_tiled.cu) against the chunked attention_cpu over the same cache:
// head_dim 64, 128 and 256, 1 to 8 query heads per kv head, and per shape a single query, one
// block of queries exactly and one past it (Bq, Bq + 1), blocks crossing tile edges (pos one
// short of, at and past a multiple of Bk), a context that is no multiple of the tile, and 300
// queries from position 0 and from further on. Both sum in fp32, in different orders: ~1e-7
// relative per term, so 1e-10 NMSE holds with orders to spare, where a tile dropped, a rescale
// missed or a mask off by one position gives ~1e-3 or more.
std::vector<Shape> tiled_shapes() {
  std::vector<Shape> out;
  for (uint64_t hd : {64u, 128u, 256u})
    for (uint64_t group = 1; group <= 8; ++group) {
      const uint64_t kv = group % 2 ? 2 : 1, heads = kv * group;
      const uint64_t bq = attention_tile_queries(hd, group), bk = attention_tile_keys(hd);
      for (Shape s : {Shape{heads, kv, hd, 1, 0}, Shape{heads, kv, hd, 1, 3 * bk + 5},
                      Shape{heads, kv, hd, bq, bk}, Shape{heads, kv, hd, bq + 1, bk - 1},
                      Shape{heads, kv, hd, 2 * bq + 3, 0}, Shape{heads, kv, hd, 5, 2 * bk + 1}})
        out.push_back(s);
    }
  for (Shape s : {Shape{8, 1, 64, 300, 0}, Shape{5, 1, 128, 300, 0}, Shape{10, 2, 128, 300, 77},
                  Shape{3, 3, 256, 300, 40}, Shape{8, 1, 256, 130, 1000}})
    out.push_back(s);
  return out;
}

std::vector<float> run_tiled(const Shape& s, const Inputs& in, unsigned threads) {
  CpuPool pool(threads);
  std::vector<float> out(s.n * s.heads * s.hd, NAN);  // a row no block writes stays NaN
  attention_tiled_cpu(pool, in.q.data(), in.k.data(), in.v.data(), s.n, s.pos, s.heads, s.kv_heads,
                      s.hd, out.data());
  return out;
}

double nmse(const std::vector<float>& got, const std::vector<float>& want, double& worst) {
  return nmse(got, std::vector<double>(want.begin(), want.end()), worst);
}

TEST(AttentionTiled, MatchesTheChunkedAttention) {
  for (const Shape& s : tiled_shapes()) {
    SCOPED_TRACE(describe(s));
    const Inputs in = random_inputs(s, uint32_t(s.pos * 3 + s.n + s.heads));
    double worst = 0;
    EXPECT_LT(nmse(run_tiled(s, in, 2), run_cpu(s, in, 2), worst), 1e-10)
        << "worst element off by " << worst;
  }
}

// The f16 cache, as the kernel reads it: the twin's f16 form against attention_cpu's.
TEST(AttentionTiled, F16MatchesTheChunkedAttention) {
  for (const Shape& s : {Shape{40, 8, 128, 100, 37}, Shape{16, 2, 64, 150, 31},
                         Shape{14, 2, 256, 33, 15}, Shape{6, 6, 128, 64, 500}}) {
    SCOPED_TRACE(describe(s));
    const F16Inputs f = f16_inputs(s, uint32_t(s.pos + s.n));
    CpuPool pool(2);
    std::vector<float> got(s.n * s.heads * s.hd, NAN);
    attention_tiled_cpu(pool, f.in.q.data(), f.k.data(), f.v.data(), s.n, s.pos, s.heads,
                        s.kv_heads, s.hd, got.data());
    double worst = 0;
    EXPECT_LT(nmse(got, run_f16(s, f, 2, best_kernel_isa()), worst), 1e-10)
        << "worst element off by " << worst;
  }
}

TEST(AttentionTiled, ResultsDoNotDependOnTheThreadCount) {
  const Shape s{10, 2, 128, 40, 90};
  const Inputs in = random_inputs(s, 4);
  const std::vector<float> one = run_tiled(s, in, 1);
  for (unsigned threads : {2u, 3u}) EXPECT_EQ(run_tiled(s, in, threads), one) << threads;
}

// The kernel's shapes, and attention_cuda's choice: prefill from 128 CTAs (kv heads x query
// blocks), decode never.
TEST(AttentionTiled, ShapesAndTheSelectionRule) {
  EXPECT_TRUE(attention_tiled_supports(40, 8, 128));
  EXPECT_TRUE(attention_tiled_supports(64, 8, 256));
  EXPECT_FALSE(attention_tiled_supports(4, 4, 80));    // head_dim
  EXPECT_FALSE(attention_tiled_supports(16, 1, 128));  // 16 heads per kv head
  EXPECT_EQ(attention_tile_queries(128, 5), 12u);
  EXPECT_EQ(attention_tile_keys(256), 16u);
  EXPECT_FALSE(attention_tiled_applies(1, 40, 8, 128));    // decode
  EXPECT_FALSE(attention_tiled_applies(180, 40, 8, 128));  // 15 blocks x 8 kv heads = 120 CTAs
  EXPECT_TRUE(attention_tiled_applies(181, 40, 8, 128));   // 16 x 8 = 128
  EXPECT_FALSE(attention_tiled_applies(4096, 8, 8, 80));
  CpuPool pool(1);
  std::vector<float> q(16 * 80), kv(80), out(16 * 80);
  EXPECT_THROW(
      attention_tiled_cpu(pool, q.data(), kv.data(), kv.data(), 1, 0, 16, 1, 80, out.data()),
      Error);
}

TEST(Attention, ANonGroupedShapeIsAnError) {
  CpuPool pool(1);
  std::vector<float> q(6 * 8), kv(4 * 8), partials(64), out(6 * 8);
  EXPECT_THROW(attention_cpu(pool, q.data(), kv.data(), kv.data(), 1, 0, 6, 4, 8, partials.data(),
                             out.data()),
               Error);
  EXPECT_THROW(attention_cpu(pool, q.data(), kv.data(), kv.data(), 1, 0, 6, 0, 8, partials.data(),
                             out.data()),
               Error);
}

}  // namespace
}  // namespace ferry
