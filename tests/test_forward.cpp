// The CPU forward pass on the real TinyStories model: greedy tokens from BOS against the list in
// ../shared/models/tinystories-656k/SOURCE.md (computed there by an independent numpy reference).
#include <gtest/gtest.h>

#include <algorithm>

#include "quantizer/convert.hpp"
#include "quantizer/error.hpp"
#include "runtime/model.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const std::vector<int32_t> kSourceMdGreedy = {
    147,  201, 282, 215, 286, 598, 1662, 356, 499, 826, 1363, 1145, 1652, 615, 242,
    1482, 951, 628, 499, 826, 872, 921,  318, 385, 628, 499,  826,  617,  242, 198};

std::vector<int32_t> greedy_from_bos(const std::filesystem::path& ferry_file, size_t n) {
  const PackedFile f = PackedFile::open(ferry_file);
  const ModelWeights w = bind_weights(f);
  RunState s(f.config, 64);
  std::vector<int32_t> out;
  int32_t token = 1;  // BOS <|start_story|>
  for (uint64_t pos = 0; out.size() < n; ++pos) {
    forward(f.config, w, s, token, pos);
    token = int32_t(std::max_element(s.logits.begin(), s.logits.end()) - s.logits.begin());
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

TEST(Forward, PositionPastContextIsAnError) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "q.ferry", {}, [](std::string_view, uint64_t, uint64_t) {});
  const PackedFile f = PackedFile::open(tmp / "q.ferry");
  const ModelWeights w = bind_weights(f);
  RunState s(f.config, 4);
  EXPECT_THROW(forward(f.config, w, s, 1, 4), Error);
  EXPECT_THROW(forward(f.config, w, s, 5000, 0), Error);
}

}  // namespace
}  // namespace ferry
