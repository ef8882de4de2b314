// ferry's CPU forward pass against golden data from Hugging Face transformers
// (tools/reference/gen_model_golden.py; fixtures in tests/fixtures/model/): the real TinyStories
// model and synthesized tiny Qwen2 (q/k/v biases, GQA 5:1, hidden 320) and Llama 3 (llama3 rope
// scaling) checkpoints. bf16 scheme: logits within 1e-3 of HF's and 64 greedy tokens equal. INT4
// schemes: the top-1 token after each prompt equals HF's and the KL divergence stays bounded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "quantizer/convert.hpp"
#include "quantizer/packed_file.hpp"
#include "quantizer/synth.hpp"
#include "runtime/engine.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;
const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

struct Prompt {
  std::vector<int32_t> ids, greedy;
  std::vector<float> logits;  // [ids.size(), vocab] HF logits at every position
};

struct Golden {
  uint64_t vocab = 0;
  std::string synth_hash;  // xxh3 of the synthesized model.safetensors; empty for real models
  std::vector<Prompt> prompts;
};

Golden load_golden(const std::string& name) {
  const fs::path dir = fs::path(FERRY_SOURCE_DIR) / "tests" / "fixtures" / "model";
  std::ifstream jf(dir / (name + ".json"));
  const auto j = nlohmann::json::parse(jf);
  Golden g;
  g.vocab = j["vocab"];
  g.synth_hash = j.value("synth_safetensors_xxh3", "");
  std::ifstream bin(dir / (name + ".logits.f32"), std::ios::binary);
  for (const auto& p : j["prompts"]) {
    Prompt pr{p["ids"].get<std::vector<int32_t>>(), p["greedy"].get<std::vector<int32_t>>(), {}};
    pr.logits.resize(pr.ids.size() * g.vocab);
    bin.read(reinterpret_cast<char*>(pr.logits.data()), std::streamsize(pr.logits.size() * 4));
    g.prompts.push_back(std::move(pr));
  }
  EXPECT_TRUE(bin.good()) << name << ".logits.f32 is shorter than its index says";
  return g;
}

// The HF checkpoint of a golden model: ../shared's TinyStories, or ferry's synthesized preset
// regenerated here and checked against the hash the golden data was made from.
fs::path synthesize(const test::ScratchDir& tmp, const std::string& preset, const Golden& g) {
  SynthOptions o;
  o.preset = preset;
  synth_checkpoint(tmp / "hf", o, kQuiet);
  const std::vector<uint8_t> bytes = test::read_file(tmp / "hf" / "model.safetensors");
  EXPECT_EQ(checksum_hex(bytes.data(), bytes.size()), g.synth_hash)
      << "ferry synth no longer writes the checkpoint the golden data was made from: rerun "
         "tools/reference/gen_model_golden.py";
  return tmp / "hf";
}

fs::path convert(const test::ScratchDir& tmp, const fs::path& hf, Scheme scheme) {
  ConvertOptions c;
  c.scheme = scheme;
  const fs::path out = tmp / (std::string(scheme_name(scheme)) + ".ferry");
  convert_checkpoint(hf, out, c, kQuiet);
  return out;
}

int32_t argmax(std::span<const float> v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// ferry's logits at every position of the prompt, token by token (decode path).
std::vector<float> ferry_logits(Engine& e, const std::vector<int32_t>& ids) {
  std::vector<float> out;
  for (size_t i = 0; i < ids.size(); ++i) {
    e.eval(std::span(&ids[i], 1), i);
    out.insert(out.end(), e.state.logits.begin(), e.state.logits.end());
  }
  return out;
}

void check_bf16(const fs::path& model, const Golden& g, const std::string& name) {
  Engine e({.model = model, .ctx = 256, .batch = 16, .threads = 2});
  double worst = 0;
  for (const Prompt& p : g.prompts) {
    const std::vector<float> got = ferry_logits(e, p.ids);
    for (size_t pos = 0; pos < p.ids.size(); ++pos) {
      // Relative error of a position: max |ferry - HF| over the vocabulary / max |HF|.
      float diff = 0, scale = 0;
      for (uint64_t v = 0; v < g.vocab; ++v) {
        diff = std::max(diff, std::abs(got[pos * g.vocab + v] - p.logits[pos * g.vocab + v]));
        scale = std::max(scale, std::abs(p.logits[pos * g.vocab + v]));
      }
      worst = std::max(worst, double(diff / scale));
    }
    // Greedy: the prompt in one prefill batch, then 64 decode steps, as ferry run does.
    std::vector<int32_t> out;
    e.eval(p.ids, 0);
    for (size_t i = 0; i < p.greedy.size(); ++i) {
      out.push_back(argmax(e.state.logits));
      e.eval(std::span(&out.back(), 1), p.ids.size() + i);
    }
    EXPECT_EQ(out, p.greedy) << name << ": greedy continuation differs from HF";
  }
  std::printf("  %-12s bf16: worst relative logit error vs HF %.2e\n", name.c_str(), worst);
  EXPECT_LT(worst, 1e-3) << name;
}

// Mean and max over positions of KL(p_HF || p_ferry), in nats.
std::pair<double, double> kl_to_hf(const std::vector<float>& ferry, const std::vector<float>& hf,
                                   uint64_t vocab) {
  double sum = 0, worst = 0;
  const size_t positions = hf.size() / vocab;
  for (size_t pos = 0; pos < positions; ++pos) {
    const float* a = &hf[pos * vocab];
    const float* b = &ferry[pos * vocab];
    const float ma = *std::max_element(a, a + vocab), mb = *std::max_element(b, b + vocab);
    double za = 0, zb = 0;
    for (uint64_t v = 0; v < vocab; ++v) za += std::exp(a[v] - ma), zb += std::exp(b[v] - mb);
    double kl = 0;
    for (uint64_t v = 0; v < vocab; ++v) {
      const double la = a[v] - ma - std::log(za), lb = b[v] - mb - std::log(zb);
      kl += std::exp(la) * (la - lb);
    }
    sum += kl;
    worst = std::max(worst, kl);
  }
  return {sum / double(positions), worst};
}

// `mean_bound`: on the mean KL per position, the worst scheme's measured value (printed) with
// ~1.6x margin. `top1`: assert the top-1 token after each prompt. Only the real model is asked
// to: a random model's next-token distribution is nearly flat (its top two logits lie closer
// than INT4 noise moves them), so there the top-1 agreement is printed, and KL carries the test.
void check_int4(const test::ScratchDir& tmp, const fs::path& hf, const Golden& g,
                const std::string& name, double mean_bound, bool top1_required) {
  for (Scheme s : {Scheme::sym, Scheme::sym_clip, Scheme::asym, Scheme::asym_clip}) {
    Engine e({.model = convert(tmp, hf, s), .ctx = 256, .batch = 16, .threads = 2});
    double mean = 0, worst = 0;
    int top1 = 0;
    for (const Prompt& p : g.prompts) {
      const std::vector<float> got = ferry_logits(e, p.ids);
      const auto [m, w] = kl_to_hf(got, p.logits, g.vocab);
      mean += m / double(g.prompts.size());
      worst = std::max(worst, w);
      const size_t last = (p.ids.size() - 1) * g.vocab;
      top1 += argmax(std::span(got).subspan(last, g.vocab)) ==
              argmax(std::span(p.logits).subspan(last, g.vocab));
    }
    std::printf("  %-12s %-9s KL(HF || ferry) mean %.4f max %.4f nats, top-1 after prompt %d/%zu\n",
                name.c_str(), std::string(scheme_name(s)).c_str(), mean, worst, top1,
                g.prompts.size());
    EXPECT_LT(mean, mean_bound) << name << " " << scheme_name(s);
    if (top1_required) {
      EXPECT_EQ(size_t(top1), g.prompts.size()) << name << " " << scheme_name(s);
    }
  }
}

TEST(Golden, TinyStoriesMatchesTransformers) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  const Golden g = load_golden("tinystories");
  test::ScratchDir tmp;
  check_bf16(convert(tmp, dir, Scheme::bf16), g, "tinystories");
  check_int4(tmp, dir, g, "tinystories", 0.15, true);  // measured 0.055 .. 0.091
}

TEST(Golden, SynthesizedQwen2MatchesTransformers) {
  const Golden g = load_golden("qwen2_tiny");
  test::ScratchDir tmp;
  const fs::path hf = synthesize(tmp, "qwen2-tiny", g);
  check_bf16(convert(tmp, hf, Scheme::bf16), g, "qwen2-tiny");
  check_int4(tmp, hf, g, "qwen2-tiny", 0.011, false);  // measured 0.0052 .. 0.0067
}

TEST(Golden, SynthesizedLlama3MatchesTransformers) {
  const Golden g = load_golden("llama3_tiny");
  test::ScratchDir tmp;
  const fs::path hf = synthesize(tmp, "llama3-tiny", g);
  check_bf16(convert(tmp, hf, Scheme::bf16), g, "llama3-tiny");
  check_int4(tmp, hf, g, "llama3-tiny", 0.008, false);  // measured 0.0035 .. 0.0048
}

}  // namespace
}  // namespace ferry
