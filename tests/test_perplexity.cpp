// ferry perplexity: llama-perplexity's chunking and scoring checked against a prefix-by-prefix
// reference and against HF transformers on the real TinyStories model; the KL divergence of a
// model from itself is exactly 0 whether the base is run or read back from --save-logits; files
// saved for other tokens and texts too short for a chunk are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "format/packed_file.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/perplexity.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::filesystem::path story() {
  return std::filesystem::path(FERRY_SOURCE_DIR) / "tests/fixtures/perplexity/story.txt";
}

std::shared_ptr<MappedFile> tiny_image() {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  return synth_packed_image(so, Scheme::asym, kQuiet);
}

PerplexityRun against(BaseLogprobs* base) {
  PerplexityRun r;
  r.base = base;
  return r;
}

PerplexityRun saving(const std::filesystem::path& path) {
  PerplexityRun r;
  r.save = path;
  return r;
}

EngineOptions options(uint64_t ctx, KvType kv = KvType::f16) {
  return {.model = {}, .ctx = ctx, .kv = kv, .batch = 16, .threads = 2};
}

// The mean NLL of the plan's scored tokens, each from a fresh run of its own prefix (eval() of
// one sequence, not eval_all): positions, targets and BOS checked independently of the chunking
// code.
double prefix_mean_nll(Engine& e, const PerplexityPlan& plan) {
  double nll = 0;
  uint64_t n = 0;
  for (uint64_t i = 0; i < plan.chunks; ++i) {
    const std::vector<int32_t> chunk = plan.chunk(i);
    for (uint64_t j = plan.first(); j + 1 < plan.ctx; ++j) {
      e.eval(std::span(chunk).first(j + 1), 0);
      const std::span<const float> l = e.logits();
      double top = l[0], sum = 0;
      for (float x : l) top = std::max(top, double(x));
      for (float x : l) sum += std::exp(double(x) - top);
      nll -= double(l[size_t(plan.target(i, j))]) - top - std::log(sum);
      ++n;
    }
  }
  return nll / double(n);
}

TEST(Perplexity, ChunksAndScoresAsLlamaPerplexity) {
  Engine e(PackedFile::from_mapping(tiny_image()), options(24));
  const std::string text = read_all(story());
  const PerplexityPlan plan = plan_perplexity(e, text, 24);
  const std::vector<int32_t> all = e.tokenizer().encode(text, true);
  EXPECT_EQ(plan.chunks, all.size() / 24);
  EXPECT_EQ(plan.scored(), 24u - 1 - 12);
  EXPECT_EQ(plan.target(1, 12), all[24 + 13]);
  const PerplexityPlan two{
      .tokens = std::vector<int32_t>(plan.tokens.begin(), plan.tokens.begin() + 2 * 24),
      .ctx = 24,
      .chunks = 2,
      .bos = plan.bos};
  const PerplexityResult r = run_perplexity(e, two, {});
  EXPECT_EQ(r.scored, 2 * two.scored());
  EXPECT_NEAR(r.mean_nll, prefix_mean_nll(e, two), 1e-5);
  EXPECT_NEAR(r.ppl, std::exp(r.mean_nll), 1e-9 * r.ppl);
  EXPECT_GT(r.ppl_stderr, 0);
  EXPECT_FALSE(r.kl);
}

TEST(Perplexity, KlAgainstItselfIsZeroRunOrSaved) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), options(32));
  Engine base(PackedFile::from_mapping(image), options(32));
  const PerplexityPlan plan = plan_perplexity(e, read_all(story()), 32);
  test::ScratchDir tmp;
  const auto engine_base = base_from_engine(base, plan);
  const PerplexityResult run =
      run_perplexity(e, plan, {.base = engine_base.get(), .save = tmp / "lp.bin", .progress = {}});
  ASSERT_TRUE(run.kl);
  EXPECT_EQ(run.kl->mean, 0);
  EXPECT_EQ(run.kl->max, 0);
  EXPECT_EQ(run.kl->top1, 1);
  EXPECT_EQ(run.kl->ppl_ratio, 1);
  EXPECT_EQ(std::filesystem::file_size(tmp / "lp.bin"), logprobs_file_bytes(plan, 512));
  const auto file_base = base_from_file(tmp / "lp.bin", plan, e.config().vocab);
  const PerplexityResult read = run_perplexity(e, plan, against(file_base.get()));
  EXPECT_EQ(read.kl->mean, 0);
  EXPECT_EQ(read.kl->top1, 1);
  EXPECT_EQ(read.ppl, run.ppl);
  EXPECT_EQ(read.kl->base_ppl, run.ppl);
}

// Another model (a different seed's weights) as the base: a real divergence, read back the same.
TEST(Perplexity, KlFromAnotherModelIsPositiveAndTheSameFromItsFile) {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  so.seed = 99;
  Engine other(PackedFile::from_mapping(synth_packed_image(so, Scheme::asym, kQuiet)), options(32));
  Engine e(PackedFile::from_mapping(tiny_image()), options(32));
  const PerplexityPlan plan = plan_perplexity(e, read_all(story()), 32);
  test::ScratchDir tmp;
  run_perplexity(other, plan, saving(tmp / "other.bin"));
  const auto run_base = base_from_engine(other, plan);
  const PerplexityResult a = run_perplexity(e, plan, against(run_base.get()));
  const auto file = base_from_file(tmp / "other.bin", plan, 512);
  const PerplexityResult b = run_perplexity(e, plan, against(file.get()));
  ASSERT_TRUE(a.kl && b.kl);
  EXPECT_GT(a.kl->mean, 0.01);
  EXPECT_GE(a.kl->p99, a.kl->mean);
  EXPECT_GE(a.kl->max, a.kl->p99);
  EXPECT_LT(a.kl->top1, 1);
  EXPECT_EQ(a.kl->mean, b.kl->mean);
  EXPECT_EQ(a.kl->top1, b.kl->top1);
  EXPECT_NEAR(a.kl->ppl_ratio, a.ppl / a.kl->base_ppl, 1e-12);
}

TEST(Perplexity, RefusesWhatDoesNotMatch) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), options(64));
  const std::string text = read_all(story());
  EXPECT_THROW(plan_perplexity(e, "Once upon a time", 32), Error);  // under one chunk
  EXPECT_THROW(plan_perplexity(e, text, 4), Error);                 // below 8
  EXPECT_THROW(plan_perplexity(e, text, 65), Error);                // past the context
  const PerplexityPlan p32 = plan_perplexity(e, text, 32), p64 = plan_perplexity(e, text, 64);
  test::ScratchDir tmp;
  run_perplexity(e, p32, saving(tmp / "lp.bin"));
  EXPECT_THROW(base_from_file(tmp / "lp.bin", p64, 512), Error);  // another --ctx
  PerplexityPlan other_text = p32;
  other_text.tokens[5] ^= 1;
  EXPECT_THROW(base_from_file(tmp / "lp.bin", other_text, 512), Error);
  EXPECT_THROW(base_from_file(tmp / "lp.bin", p32, 513), Error);  // another vocabulary
  std::filesystem::resize_file(tmp / "lp.bin", std::filesystem::file_size(tmp / "lp.bin") - 4);
  EXPECT_THROW(base_from_file(tmp / "lp.bin", p32, 512), Error);  // truncated
  test::write_file(tmp / "junk.bin", std::vector<uint8_t>(100, 7));
  EXPECT_THROW(base_from_file(tmp / "junk.bin", p32, 512), Error);
}

// The real model, bf16 scheme, against HF transformers' perplexity with the same chunking
// (tools/reference/gen_perplexity_golden.py): the issue asks for 1%; with the exact f32 KV cache
// the two agree to 1e-5 (30.8153 both), with the default f16 one to 1e-3.
TEST(Perplexity, TinyStoriesMatchesTransformers) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "t.ferry", {.scheme = Scheme::bf16}, kQuiet);
  const auto golden =
      nlohmann::json::parse(read_all(std::filesystem::path(FERRY_SOURCE_DIR) /
                                     "tests/fixtures/perplexity/tinystories_ctx128.json"));
  const double want = golden["ppl"].get<double>();
  for (const auto& [kv, bound] : {std::pair{KvType::f32, 1e-4}, std::pair{KvType::f16, 1e-3}}) {
    EngineOptions o = options(128, kv);
    o.model = tmp / "t.ferry";
    Engine e(o);
    const PerplexityPlan plan = plan_perplexity(e, read_all(story()), 128);
    EXPECT_EQ(plan.chunk(2)[0], e.tokenizer().bos_id());  // each chunk starts with BOS
    const PerplexityResult r = run_perplexity(e, plan, {});
    EXPECT_EQ(r.scored, golden["scored"].get<uint64_t>());
    EXPECT_NEAR(r.ppl / want, 1.0, bound) << kv_type_name(kv) << ": " << r.ppl << " vs " << want;
  }
}

// SmolLM2-135M-Instruct (tools/reference/gen_smollm2.py writes it into ../shared), bf16 scheme, on
// the first 4 chunks of 256 tokens of Debian's GPL-3 text: HF transformers' perplexity with the
// same chunking, to 1e-4 with the f32 KV cache (the issue asks for 1%). The whole text at chunks
// of 512 gives 18.1312 in both.
TEST(Perplexity, SmolLM2MatchesTransformers) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "smollm2-135m-instruct");
  const std::filesystem::path text = "/usr/share/common-licenses/GPL-3";
  if (!std::filesystem::exists(text)) GTEST_SKIP() << text << " is absent (Debian's base-files)";
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "s.ferry", {.scheme = Scheme::bf16}, kQuiet);
  const auto golden =
      nlohmann::json::parse(read_all(std::filesystem::path(FERRY_SOURCE_DIR) /
                                     "tests/fixtures/perplexity/smollm2_gpl3_ctx256_4chunks.json"));
  EngineOptions o = options(256, KvType::f32);
  o.model = tmp / "s.ferry";
  o.threads = 0;
  Engine e(o);
  const PerplexityPlan plan = plan_perplexity(e, read_all(text), 256, 4);
  EXPECT_EQ(plan.chunks, 4u);
  const PerplexityResult r = run_perplexity(e, plan, {});
  EXPECT_EQ(r.scored, golden["scored"].get<uint64_t>());
  EXPECT_NEAR(r.ppl / golden["ppl"].get<double>(), 1.0, 1e-4) << r.ppl;
}

// The command: figures on stdout, JSON, and its errors before any work.
TEST(Perplexity, CommandLine) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  const std::string model = (tmp / "t.ferry").string(), text = story().string();
  ASSERT_EQ(test::run_ferry({"quantize", "-q", dir.string(), "-o", model}).exit_code, 0);
  const auto r = test::run_ferry({"perplexity", model, "-f", text, "--ctx", "128", "--kl-base",
                                  model, "--json", (tmp / "p.json").string(), "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("4 chunks of 128"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("top-1 agreement 100.00%"), std::string::npos) << r.output;
  const auto j = nlohmann::json::parse(read_all(tmp / "p.json"));
  EXPECT_EQ(j["kl"]["mean"].get<double>(), 0);
  EXPECT_EQ(j["scored_tokens"].get<int>(), 252);
  const auto both = test::run_ferry(
      {"perplexity", model, "-f", text, "--kl-base", model, "--kl-logits", "x.bin"});
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_NE(both.output.find("both given"), std::string::npos) << both.output;
  const auto none = test::run_ferry({"perplexity", model});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.output.find("pass -f TEXT"), std::string::npos) << none.output;
  const auto shorter = test::run_ferry({"perplexity", model, "-f", text, "--ctx", "4096"});
  EXPECT_EQ(shorter.exit_code, 1);
  EXPECT_NE(shorter.output.find("less than one chunk"), std::string::npos) << shorter.output;
}

}  // namespace
}  // namespace ferry
