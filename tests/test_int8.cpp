// INT8 block-128 weights (format/int8.hpp): the quantizer's rounding bound, the CPU kernels
// against the scalar reference (every instruction-set path, every thread count), the packed file
// plan (--keep rules, the INT8 lm_head default, version 1 files still read) and `ferry inspect`.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include <fmt/format.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "format/packed_file.hpp"
#include "kernels/dequant.hpp"
#include "kernels/matmul_int8.hpp"
#include "kernels/matvec.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/int8_quantize.hpp"
#include "quantizer/synth.hpp"
#include "runtime/model.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

using test::activations;

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

struct Weights8 {
  uint64_t rows, cols;
  std::vector<float> f;
  std::vector<int8_t> q;
  std::vector<uint16_t> scales;
  QuantError err;
  Int8View view() const { return {q.data(), scales.data(), rows, cols}; }
};

Weights8 make_weights(uint64_t rows, uint64_t cols) {
  Weights8 w{rows, cols, std::vector<float>(rows * cols), {}, {}, {}};
  std::mt19937 rng(uint32_t(rows * 131 + cols));
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (float& v : w.f) v = nd(rng);
  w.q.resize(int8_code_bytes(rows, cols));
  w.scales.resize(int8_scale_count(rows, cols));
  w.err = quantize_int8(w.f.data(), rows, cols, w.q.data(), w.scales.data());
  return w;
}

TEST(Int8Quantize, EveryWeightIsWithinHalfAStepAndPaddingIsZero) {
  const Weights8 w = make_weights(7, 200);  // a partial second block (72 of 128)
  std::vector<float> d(w.rows * w.cols);
  dequant_int8_f32_cpu(w.view(), d.data());
  const uint64_t blocks = int8_blocks_per_row(w.cols);
  for (uint64_t r = 0; r < w.rows; ++r)
    for (uint64_t c = 0; c < w.cols; ++c) {
      const float s = f16_to_float(w.scales[r * blocks + c / kBlock]);
      EXPECT_LE(std::fabs(d[r * w.cols + c] - w.f[r * w.cols + c]), 0.5f * s * 1.001f);
    }
  for (uint64_t r = 0; r < w.rows; ++r)
    for (uint64_t i = 72; i < kBlock; ++i) EXPECT_EQ(w.q[(r * blocks + 1) * kBlock + i], 0);
  for (int8_t c : w.q) EXPECT_GE(c, -kInt8MaxCode);
  // Gaussian weights: the step is absmax / 127 ~ 2.6 sigma / 127, the error its / sqrt(12).
  EXPECT_LT(w.err.relative_rms(), 0.01);
  // bf16 dequantization is the fp32 value rounded once.
  std::vector<uint16_t> b(w.rows * w.cols);
  dequant_int8_bf16_cpu(w.view(), b.data());
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], float_to_bf16(d[i])) << i;
}

std::vector<KernelIsa> isas() {
  std::vector<KernelIsa> v = {KernelIsa::portable};
  if (kernel_isa_available(KernelIsa::avx2)) v.push_back(KernelIsa::avx2);
  if (kernel_isa_available(KernelIsa::avx512)) v.push_back(KernelIsa::avx512);
  return v;
}

// q8: matmul_int8_q8_cpu (activations quantized to INT8), else matmul_int8_cpu.
std::vector<float> run(const Weights8& w, const std::vector<float>& x, uint64_t n, unsigned threads,
                       KernelIsa isa, bool q8 = false) {
  CpuPool pool(threads);
  std::vector<float> y(n * w.rows, NAN);
  q8 ? matmul_int8_q8_cpu(pool, w.view(), x.data(), n, y.data(), isa)
     : matmul_int8_cpu(pool, w.view(), x.data(), n, y.data(), isa);
  return y;
}

TEST(Int8Matmul, EveryPathMatchesTheScalarReferenceAndIsThreadInvariant) {
  for (auto [rows, cols] :
       {std::pair<uint64_t, uint64_t>{67, 320}, {40, 200}, {33, 4096}, {5, 100}, {9, 20000}})
    for (uint64_t n : {1u, 3u, 8u, 17u}) {
      const Weights8 w = make_weights(rows, cols);
      const std::vector<float> x = activations(n, cols);
      std::vector<float> want(n * rows);
      for (uint64_t t = 0; t < n; ++t) matvec_int8_cpu(w.view(), &x[t * cols], &want[t * rows]);
      double ref = 0;
      for (float v : want) ref += double(v) * v;
      for (KernelIsa isa : isas()) {
        SCOPED_TRACE(fmt::format("{}x{} n={} isa={}", rows, cols, n, int(isa)));
        const std::vector<float> one = run(w, x, n, 1, isa);
        double err = 0;
        for (size_t i = 0; i < want.size(); ++i)
          err += double(one[i] - want[i]) * double(one[i] - want[i]);
        EXPECT_LT(std::sqrt(err / ref), 2e-6);  // fp32 sums in another order
        EXPECT_EQ(run(w, x, n, 3, isa), one);   // every output by one thread, fixed order
        if (n > 1) {                            // a token alone gives what it gave in the batch
          const std::vector<float> x1(x.end() - int64_t(cols), x.end());
          const std::vector<float> y1 = run(w, x1, 1, 2, isa);
          for (uint64_t r = 0; r < rows; ++r) ASSERT_EQ(y1[r], one[(n - 1) * rows + r]);
        }
      }
    }
}

// INT8 x INT8 against the fp32 product of the same weights, within the bound of
// kernels/matmul_int8_cpu.cpp's header: sum over blocks of d_b / 2 * sum |w_i| (d_b = the block's
// max|x| / 127), plus fp32 rounding; bit-identical across thread counts and batch splits.
TEST(Int8MatmulQ8, EveryPathWithinTheInt8RoundingBoundAndThreadInvariant) {
  for (auto [rows, cols] :
       {std::pair<uint64_t, uint64_t>{67, 320}, {40, 200}, {33, 4096}, {5, 100}, {9, 20000}})
    for (uint64_t n : {1u, 2u, 3u, 5u, 8u, 17u}) {
      const Weights8 w = make_weights(rows, cols);
      const std::vector<float> x = activations(n, cols);
      std::vector<float> want(n * rows), wf(rows * cols);
      for (uint64_t t = 0; t < n; ++t) matvec_int8_cpu(w.view(), &x[t * cols], &want[t * rows]);
      dequant_int8_f32_cpu(w.view(), wf.data());
      std::vector<float> bound(n * rows);
      double mean_err = 0, mean_bound = 0;
      for (uint64_t t = 0; t < n; ++t)
        for (uint64_t r = 0; r < rows; ++r) {
          double e = 0, mag = 0;
          for (uint64_t c0 = 0; c0 < cols; c0 += kBlock) {
            const uint64_t c1 = std::min(cols, c0 + kBlock);
            double amax = 0, wsum = 0;
            for (uint64_t c = c0; c < c1; ++c) {
              amax = std::max(amax, double(std::fabs(x[t * cols + c])));
              wsum += std::fabs(wf[r * cols + c]);
              mag += std::fabs(wf[r * cols + c] * x[t * cols + c]);
            }
            e += amax / 127.0 / 2.0 * wsum;
          }
          bound[t * rows + r] = float(e + 1e-5 * mag);
        }
      for (KernelIsa isa : isas()) {
        SCOPED_TRACE(fmt::format("{}x{} n={} isa={}", rows, cols, n, int(isa)));
        const std::vector<float> one = run(w, x, n, 1, isa, true);
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_LE(std::fabs(one[i] - want[i]), bound[i]) << i;
          mean_err += std::fabs(one[i] - want[i]);
          mean_bound += bound[i];
        }
        EXPECT_EQ(run(w, x, n, 3, isa, true), one);
        if (n > 1) {
          const std::vector<float> x1(x.end() - int64_t(cols), x.end());
          const std::vector<float> y1 = run(w, x1, 1, 2, isa, true);
          for (uint64_t r = 0; r < rows; ++r) ASSERT_EQ(y1[r], one[(n - 1) * rows + r]);
        }
      }
      // The bound is not vacuous (the typical error sits well inside it), and the products are
      // not all zero.
      EXPECT_LT(mean_err, 0.5 * mean_bound);
      EXPECT_GT(mean_err, 0.0);
    }
}

TEST(Int8Plan, KeepRulesParseAndBadOnesAreOneLineErrors) {
  EXPECT_EQ(parse_keep_rule("lm_head=bf16").storage, WeightStorage::bf16);
  EXPECT_EQ(parse_keep_rule("*.mlp.*=int8").pattern, "*.mlp.*");
  for (const char* bad : {"lm_head", "=int8", "lm_head=int2", "lm_head=", ""}) {
    try {
      parse_keep_rule(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("PATTERN=int4|int8|bf16"), std::string::npos);
    }
  }
  EXPECT_TRUE(
      keep_rule_matches({"*.mlp.*", WeightStorage::int8}, "model.layers.0.mlp.up_proj.weight"));
  EXPECT_FALSE(
      keep_rule_matches({"*.mlp", WeightStorage::int8}, "model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(
      keep_rule_matches({"up_proj", WeightStorage::int8}, "model.layers.0.mlp.up_proj.weight"));
}

// qwen2-tiny (tied embeddings) converted with `options`.
std::filesystem::path convert(const test::ScratchDir& tmp, const std::string& name,
                              const ConvertOptions& options) {
  const std::filesystem::path hf = tmp / "hf", out = tmp / name;
  SynthOptions synth;
  synth.preset = "qwen2-tiny";
  if (!std::filesystem::exists(hf)) synth_checkpoint(hf, synth, kQuiet);
  convert_checkpoint(hf, out, options, kQuiet);
  return out;
}

TEST(Int8Plan, LmHeadAndValueProjectionsAreInt8ByDefaultAndRulesOverrideThem) {
  test::ScratchDir tmp;
  const PackedFile def = PackedFile::open(convert(tmp, "d.ferry", {}));
  EXPECT_EQ(def.version, kFormatVersion);
  EXPECT_EQ(def.storage.lm_head, LmHeadStorage::int8);
  ASSERT_NE(def.file.find("lm_head.weight.q8"), nullptr);
  EXPECT_EQ(def.file.find("lm_head.weight.q8")->dtype, DType::I8);
  EXPECT_NE(def.file.find("model.embed_tokens.weight"), nullptr);  // rows stay bf16
  EXPECT_NE(def.file.find("model.layers.0.mlp.up_proj.weight.q4"), nullptr);
  // The value and key projections are INT8 by default too (docs/quantization.md), the other
  // linears INT4.
  for (const char* name :
       {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"})
    EXPECT_NE(def.file.find(fmt::format("model.layers.1.{}.weight.q4", name)), nullptr) << name;
  EXPECT_NE(def.file.find("model.layers.1.self_attn.v_proj.weight.q8"), nullptr);
  EXPECT_NE(def.file.find("model.layers.1.self_attn.k_proj.weight.q8"), nullptr);
  EXPECT_TRUE(def.verify_checksums(2).empty());

  const PackedFile mixed = PackedFile::open(convert(tmp, "m.ferry",
                                                    {.keep = {{"mlp", WeightStorage::int8},
                                                              {"down_proj", WeightStorage::bf16},
                                                              {"lm_head", WeightStorage::int4}}}));
  EXPECT_EQ(mixed.storage.lm_head, LmHeadStorage::int4);
  EXPECT_NE(mixed.file.find("model.layers.1.mlp.gate_proj.weight.q8"), nullptr);
  EXPECT_NE(mixed.file.find("model.layers.1.mlp.down_proj.weight"), nullptr);  // later rule wins
  EXPECT_NE(mixed.file.find("model.layers.1.self_attn.q_proj.weight.q4"), nullptr);

  const PackedFile kept =
      PackedFile::open(convert(tmp, "k.ferry", {.keep = {{"lm_head", WeightStorage::bf16}}}));
  EXPECT_EQ(kept.storage.lm_head,
            kept.config.tied_embeddings ? LmHeadStorage::embedding : LmHeadStorage::bf16);
  EXPECT_THROW(
      convert(tmp, "b.ferry", {.scheme = Scheme::bf16, .keep = {{"q_proj", WeightStorage::int4}}}),
      Error);
}

// Rewrites the "ferry.format_version" value in place (same length), as an older writer stored it.
void set_version(const std::filesystem::path& p, char v) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  std::string head(1 << 16, '\0');
  f.read(head.data(), std::streamsize(head.size()));
  const std::string key = "\"ferry.format_version\":\"";
  const size_t at = head.find(key);
  ASSERT_NE(at, std::string::npos);
  f.clear();
  f.seekp(std::streamoff(at + key.size()));
  f.put(v);
}

TEST(Int8Plan, Version1FilesStillOpenAndRunButMayNotHoldInt8) {
  test::ScratchDir tmp;
  // What a version 1 writer produced: INT4 everywhere, lm_head included.
  const auto v1 = convert(tmp, "v1.ferry",
                          {.keep = {{"lm_head", WeightStorage::int4},
                                    {"v_proj", WeightStorage::int4},
                                    {"k_proj", WeightStorage::int4}}});
  set_version(v1, '1');
  const PackedFile f = PackedFile::open(v1);
  EXPECT_EQ(f.version, 1);
  EXPECT_EQ(f.storage.lm_head, LmHeadStorage::int4);
  const ModelWeights w = bind_weights(f);
  EXPECT_TRUE(w.linears.back().is_int4());

  const auto bad = convert(tmp, "v1bad.ferry", {});  // INT8 lm_head, k_proj and v_proj
  set_version(bad, '1');
  EXPECT_THROW(PackedFile::open(bad), Error);
  set_version(bad, '3');
  EXPECT_THROW(PackedFile::open(bad), Error);
}

TEST(Int8Cli, QuantizeKeepAndInspectShowInt8) {
  test::ScratchDir tmp;
  const auto hf = tmp / "hf";
  SynthOptions synth;
  synth.preset = "qwen2-tiny";
  synth_checkpoint(hf, synth, kQuiet);
  const auto out = (tmp / "c.ferry").string();
  const test::RunResult q =
      test::run_ferry({"quantize", hf.string(), "-o", out, "-q", "--keep", "up_proj=int8"});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  const test::RunResult i = test::run_ferry({"inspect", out});
  ASSERT_EQ(i.exit_code, 0) << i.output;
  EXPECT_NE(i.output.find("INT8"), std::string::npos) << i.output;
  EXPECT_NE(i.output.find("lm_head: INT8"), std::string::npos) << i.output;
  const test::RunResult bad =
      test::run_ferry({"quantize", hf.string(), "-o", out, "-q", "--keep", "up_proj=int3"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("PATTERN=int4|int8|bf16"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace ferry
