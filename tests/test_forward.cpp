// The CPU forward pass on the real TinyStories model: greedy tokens from BOS against the list in
// ../shared/models/tinystories-656k/SOURCE.md (computed there by an independent numpy reference).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "base/error.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const std::vector<int32_t> kSourceMdGreedy = {
    147,  201, 282, 215, 286, 598, 1662, 356, 499, 826, 1363, 1145, 1652, 615, 242,
    1482, 951, 628, 499, 826, 872, 921,  318, 385, 628, 499,  826,  617,  242, 198};

std::vector<int32_t> greedy_from_bos(const std::filesystem::path& ferry_file, size_t n) {
  Engine e({.model = ferry_file, .ctx = 64});
  std::vector<int32_t> out;
  int32_t token = 1;  // BOS <|start_story|>
  for (uint64_t pos = 0; out.size() < n; ++pos) {
    e.eval(std::span(&token, 1), pos);
    const std::span<const float> l = e.logits();
    token = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    out.push_back(token);
  }
  return out;
}

TEST(Forward, TinyStoriesBf16GreedyMatchesSourceMd) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  ConvertOptions opt;
  opt.scheme = Scheme::bf16;
  convert_checkpoint(dir, tmp / "b.ferry", opt, [](std::string_view, uint64_t, uint64_t) {});
  EXPECT_EQ(greedy_from_bos(tmp / "b.ferry", kSourceMdGreedy.size()), kSourceMdGreedy);
}

TEST(Forward, TinyStoriesInt4GreedyStartsLikeTheReference) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "q.ferry", {}, [](std::string_view, uint64_t, uint64_t) {});
  const std::vector<int32_t> got = greedy_from_bos(tmp / "q.ferry", kSourceMdGreedy.size());
  size_t same = 0;
  while (same < got.size() && got[same] == kSourceMdGreedy[same]) ++same;
  std::printf("asym-clip INT4: first %zu of %zu greedy tokens equal the reference\n", same,
              got.size());
  EXPECT_GE(same, 5u);
}

// Prefill runs the prompt in batches; its last logits must be those of token-by-token decode up
// to rounding (the batched kernels may sum in another order), whatever the batch boundaries.
TEST(Forward, BatchedPrefillEqualsTokenByToken) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "q.ferry", {}, [](std::string_view, uint64_t, uint64_t) {});
  const std::vector<int32_t> prompt = {1,    147,  201,  282, 215, 286,  598, 1662, 356, 499, 826,
                                       1363, 1145, 1652, 615, 242, 1482, 951, 628,  499, 826};
  for (uint64_t batch : {uint64_t(7), uint64_t(64)}) {
    Engine one({.model = tmp / "q.ferry", .ctx = 64, .batch = 1});
    for (size_t i = 0; i < prompt.size(); ++i) one.eval(std::span(&prompt[i], 1), i);
    Engine many({.model = tmp / "q.ferry", .ctx = 64, .batch = batch});
    many.eval(prompt, 0);
    // The KV cache the batch wrote must then serve a decode step like the one-by-one cache.
    const int32_t next = 872;
    for (int step = 0; step < 2; ++step) {
      const std::span<const float> x = one.logits(), y = many.logits();
      float max_abs = 0, max_diff = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        max_abs = std::max(max_abs, std::abs(x[i]));
        max_diff = std::max(max_diff, std::abs(x[i] - y[i]));
      }
      EXPECT_LT(max_diff, 1e-4f * max_abs) << "batch " << batch << ", step " << step;
      one.eval(std::span(&next, 1), prompt.size());
      many.eval(std::span(&next, 1), prompt.size());
    }
  }
}

// Past several attention chunks and one round of queries (64): a 600-token prompt of a
// synthesized Qwen2 in batches of 1, 64 and 600 leaves the same logits (sums in another order
// only), and so do decode steps over the KV caches they wrote.
TEST(Forward, LongPromptGivesTheSameLogitsInAnyBatch) {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  const auto image =
      synth_packed_image(so, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {});
  // 600 ids below qwen2-tiny's vocabulary of 512
  const std::vector<int32_t> prompt = test::spread_prompt(600, 500);
  std::vector<std::vector<float>> reference;  // logits after the prompt and 2 decode steps
  for (const uint64_t batch : {1, 64, 600}) {
    Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 640, .batch = batch});
    const std::vector<std::vector<float>> got = test::logits_after_prompt(e, prompt, 2);
    if (reference.empty()) {
      reference = got;
      continue;
    }
    for (size_t k = 0; k < got.size(); ++k) {
      float max_abs = 0, max_diff = 0;
      for (size_t i = 0; i < got[k].size(); ++i) {
        max_abs = std::max(max_abs, std::abs(reference[k][i]));
        max_diff = std::max(max_diff, std::abs(got[k][i] - reference[k][i]));
      }
      EXPECT_LT(max_diff, 1e-4f * max_abs) << "batch " << batch << ", call " << k;
    }
  }
}

// A weight acquired for a product that throws is released all the same: a held cache entry
// could never be evicted again.
TEST(Forward, HeldWeightIsReleasedWhenTheProductThrows) {
  struct Counting final : WeightSource {
    int acquired = 0, released = 0;
    Linear acquire(uint32_t) override { return ++acquired, Linear{}; }
    void release(uint32_t) override { ++released; }
  } src;
  {
    HeldWeight w(src, 3);
    w.release();
  }
  EXPECT_EQ(src.released, 1);  // once, not again by the destructor
  try {
    HeldWeight w(src, 4);
    throw Error("the product failed");
  } catch (const Error&) {
  }
  EXPECT_EQ(src.acquired, 2);
  EXPECT_EQ(src.released, 2);
}

// The fused products (q/k/v in one region, gate/up with SiLU * up in one) against the same pass
// with every product on its own (a source that cannot hold two weights at once): logits bit for
// bit over a batched prompt and decode steps, on Qwen2 (q/k/v biases) in INT4 and with INT8 and
// bf16 weights mixed in (those groups fall back); weights acquired in schedule order and all
// released either way.
TEST(Forward, FusedProductsAreBitIdenticalToSeparateOnes) {
  struct Source final : WeightSource {
    Source(const ModelWeights& w, bool fuse) : direct(w), fuse(fuse) {}
    Linear acquire(uint32_t id) override {
      EXPECT_EQ(id, next) << "acquired out of schedule order";
      next = id + 1 == total ? 0 : id + 1;
      ++held;
      max_held = std::max(max_held, held);
      return direct.acquire(id);
    }
    void release(uint32_t) override { --held; }
    bool can_hold(std::span<const uint32_t>) const override { return fuse; }
    DirectWeights direct;
    bool fuse;
    uint32_t next = 0, total = 0;
    int held = 0, max_held = 0;
  };
  test::ScratchDir tmp;
  SynthOptions synth;
  synth.preset = "qwen2-tiny";
  synth_checkpoint(tmp / "hf", synth, [](std::string_view, uint64_t, uint64_t) {});
  const std::vector<std::vector<KeepRule>> keeps = {
      {}, {parse_keep_rule("mlp.up=int8"), parse_keep_rule("self_attn.k=bf16")}};
  for (size_t i = 0; i < keeps.size(); ++i) {
    const std::filesystem::path file = tmp / fmt::format("q{}.ferry", i);
    convert_checkpoint(tmp / "hf", file, {.keep = keeps[i]},
                       [](std::string_view, uint64_t, uint64_t) {});
    Engine e({.model = file, .ctx = 32, .batch = 8, .threads = 3});
    const ModelConfig& c = e.config();
    const std::vector<int32_t> prompt = test::spread_prompt(11, int32_t(c.vocab));
    std::vector<std::vector<float>> runs;
    for (bool fuse : {true, false}) {
      Source src(e.weights(), fuse);
      src.total = uint32_t(e.weights().linears.size());
      const auto pass = make_cpu_forward(c, e.weights(), {.ctx = 32, .batch = 8}, e.pool());
      std::vector<float> logits(c.vocab), all;
      for (uint64_t pos = 0; pos < prompt.size(); pos += 8) {  // chunks of 8 and 3, then decode
        const uint64_t n = std::min<uint64_t>(8, prompt.size() - pos);
        pass->forward(src, std::span(prompt).subspan(pos, n), pos, logits);
        all.insert(all.end(), logits.begin(), logits.end());
      }
      for (uint64_t pos = prompt.size(); pos < prompt.size() + 3; ++pos) {
        const int32_t token =
            int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        pass->forward(src, std::span(&token, 1), pos, logits);
        all.insert(all.end(), logits.begin(), logits.end());
      }
      EXPECT_EQ(src.held, 0);
      EXPECT_EQ(src.max_held, fuse ? 3 : 1);
      runs.push_back(std::move(all));
    }
    EXPECT_EQ(runs[0], runs[1]) << "keep rules " << i;
  }
}

TEST(Forward, PositionPastContextIsAnError) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "q.ferry", {}, [](std::string_view, uint64_t, uint64_t) {});
  Engine e({.model = tmp / "q.ferry", .ctx = 4});
  const int32_t bos = 1, bad = 5000;
  EXPECT_THROW(e.eval(std::span(&bos, 1), 4), Error);
  EXPECT_THROW(e.eval(std::span(&bad, 1), 0), Error);
  const std::vector<int32_t> five(5, 1);
  EXPECT_THROW(e.eval(five, 0), Error);
}

// eval_all: every token's logits, in batches smaller than the prompt, equal the last-token logits
// eval() leaves after each prefix (the same sums: batch rows are independent in every kernel).
TEST(Forward, EvalAllGivesEachPrefixsLogits) {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  const auto image =
      synth_packed_image(so, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {});
  const std::vector<int32_t> prompt = test::spread_prompt(21, 500);
  Engine all(PackedFile::from_mapping(image), {.model = {}, .ctx = 64, .batch = 8});
  const uint64_t vocab = all.config().vocab;
  std::vector<float> rows(prompt.size() * vocab);
  all.eval_all(prompt, 0, rows);
  Engine one(PackedFile::from_mapping(image), {.model = {}, .ctx = 64, .batch = 8});
  for (size_t i = 0; i < prompt.size(); ++i) {
    one.eval(std::span(&prompt[i], 1), i);
    for (uint64_t v = 0; v < vocab; ++v)
      ASSERT_NEAR(rows[i * vocab + v], one.logits()[v], 1e-4f) << "token " << i << " id " << v;
  }
  std::vector<float> small(vocab);
  EXPECT_THROW(all.eval_all(prompt, 0, small), Error);
}

}  // namespace
}  // namespace ferry
