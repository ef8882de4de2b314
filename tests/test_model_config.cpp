// config.json as transformers 4 and 5 write it (format/model_config.cpp): the same model from
// either spelling, every field that changes the math read or refused by name, and the RoPE
// frequencies of each scaling type against transformers' formulas (runtime/model.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "format/model_config.hpp"
#include "runtime/model.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

// SmolLM2-135M's config.json, as transformers 4 wrote it.
json smollm2_v4() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"hidden_size", 576},
          {"intermediate_size", 1536},
          {"num_hidden_layers", 30},
          {"num_attention_heads", 9},
          {"num_key_value_heads", 3},
          {"vocab_size", 49152},
          {"max_position_embeddings", 8192},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 100000.0},
          {"rope_scaling", nullptr},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", true},
          {"torch_dtype", "bfloat16"},
          {"eos_token_id", 2}};
}

// The same as transformers 5 writes it: rope_parameters, dtype.
json smollm2_v5() {
  json c = smollm2_v4();
  c.erase("rope_theta");
  c.erase("rope_scaling");
  c.erase("torch_dtype");
  c["rope_parameters"] = {{"rope_theta", 100000.0}, {"rope_type", "default"}};
  c["dtype"] = "bfloat16";
  return c;
}

std::string error_of(const json& c) {
  try {
    parse_model_config(c, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, BothSpellingsGiveTheSameModel) {
  const ModelConfig a = parse_model_config(smollm2_v4(), "v4");
  const ModelConfig b = parse_model_config(smollm2_v5(), "v5");
  EXPECT_EQ(a.rope_theta, 100000.0);
  EXPECT_EQ(b.rope_theta, 100000.0);
  EXPECT_EQ(a.rope_scaling.type, "");
  EXPECT_EQ(b.rope_scaling.type, "");
  EXPECT_EQ(a.dtype, "bfloat16");
  EXPECT_EQ(b.dtype, "bfloat16");
  EXPECT_EQ(rope_inv_freq(a), rope_inv_freq(b));
}

TEST(ModelConfig, Llama3ScalingGivenEitherWay) {
  const json s = {{"rope_type", "llama3"},
                  {"factor", 8.0},
                  {"low_freq_factor", 1.0},
                  {"high_freq_factor", 4.0},
                  {"original_max_position_embeddings", 8192}};
  json v4 = smollm2_v4();
  v4["rope_scaling"] = s;
  json v5 = smollm2_v5();
  v5["rope_parameters"] = s;
  v5["rope_parameters"]["rope_theta"] = 100000.0;
  const ModelConfig a = parse_model_config(v4, "v4"), b = parse_model_config(v5, "v5");
  EXPECT_EQ(a.rope_scaling.type, "llama3");
  EXPECT_EQ(b.rope_scaling.type, "llama3");
  EXPECT_EQ(rope_inv_freq(a), rope_inv_freq(b));
}

TEST(ModelConfig, SpellingsThatDisagreeAreRefused) {
  json c = smollm2_v5();
  c["rope_theta"] = 10000.0;
  EXPECT_NE(error_of(c).find("\"rope_theta\" is 10000 at the top level and 100000 in "
                             "rope_parameters"),
            std::string::npos)
      << error_of(c);
  c = smollm2_v4();
  c["dtype"] = "float32";
  EXPECT_NE(error_of(c).find("torch_dtype 'bfloat16' and dtype 'float32' disagree"),
            std::string::npos);
  c = smollm2_v5();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_NE(error_of(c).find("rope_parameters says rope type 'default' and rope_scaling 'linear'"),
            std::string::npos);
}

TEST(ModelConfig, UnimplementedMathIsRefusedByName) {
  const std::pair<json, std::string> cases[] = {
      {{{"rope_parameters", {{"rope_type", "longrope"}, {"rope_theta", 1e5}}}},
       "rope type 'longrope' (rope_parameters) is not implemented"},
      {{{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}},
       "rope type 'dynamic' (rope_scaling) is not implemented"},
      {{{"rope_scaling", {{"rope_type", "yarn"}}}}, "rope scaling yarn needs a finite factor"},
      {{{"partial_rotary_factor", 0.5}}, "partial_rotary_factor 0.5 is not supported"},
      {{{"hidden_act", "gelu_pytorch_tanh"}}, "hidden_act 'gelu_pytorch_tanh' is not supported"},
      {{{"attention_bias", true}}, "attention_bias=true"},
      {{{"mlp_bias", true}}, "mlp_bias=true"},
      {{{"eos_token_id", "2"}}, "\"eos_token_id\" must be a token id or a list of them"},
      {{{"torch_dtype", "int8"}}, "dtype 'int8' is not float32, bfloat16 or float16"},
      {{{"layer_types", {"sliding_attention"}}}, "no sliding_window is given"},
  };
  for (const auto& [edit, expected] : cases) {
    json c = smollm2_v4();
    c.update(edit);
    EXPECT_NE(error_of(c).find(expected), std::string::npos) << edit.dump() << ": " << error_of(c);
  }
}

TEST(ModelConfig, EosHeadDimAndSlidingWindow) {
  json c = smollm2_v4();
  c["eos_token_id"] = {128001, 128009};
  c["head_dim"] = 128;  // Mistral Nemo: not hidden / heads
  EXPECT_EQ(parse_model_config(c, "c").eos_token_ids, (std::vector<int64_t>{128001, 128009}));
  EXPECT_EQ(parse_model_config(c, "c").head_dim, 128u);
  c["sliding_window"] = 4096;  // Mistral 7B v0.1: in force
  EXPECT_EQ(parse_model_config(c, "c").sliding_window, 4096u);
  c["use_sliding_window"] = false;  // Qwen2: given, but off
  EXPECT_EQ(parse_model_config(c, "c").sliding_window, 0u);
  c["sliding_window"] = nullptr;  // Mistral v0.2+
  c.erase("use_sliding_window");
  EXPECT_EQ(parse_model_config(c, "c").sliding_window, 0u);
}

TEST(ModelConfig, Qwen3AndMistralArchitectures) {
  json c = smollm2_v4();
  c["architectures"] = {"Qwen3ForCausalLM"};
  c["head_dim"] = 128;
  c["attention_bias"] = false;
  const ModelConfig q = parse_model_config(c, "qwen3");
  EXPECT_EQ(q.family, Family::qwen3);
  EXPECT_TRUE(q.qk_norm);
  EXPECT_FALSE(q.qkv_bias);
  int norms = 0;
  for (const WeightSpec& w : model_weights(q))
    if (w.name.ends_with("q_norm.weight") || w.name.ends_with("k_norm.weight")) {
      EXPECT_EQ(w.shape, std::vector<uint64_t>{128});
      ++norms;
    }
  EXPECT_EQ(norms, 2 * 30);
  c["architectures"] = {"MistralForCausalLM"};
  const ModelConfig m = parse_model_config(c, "mistral");
  EXPECT_EQ(m.family, Family::llama);
  EXPECT_FALSE(m.qk_norm);
}

// transformers' formulas, written out in double precision from their definitions.
TEST(ModelConfig, LinearAndYarnFrequencies) {
  json c = smollm2_v4();  // head_dim 64
  c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  const ModelConfig lin = parse_model_config(c, "linear");
  const std::vector<float> f = rope_inv_freq(lin);
  for (size_t i = 0; i < f.size(); ++i)
    EXPECT_FLOAT_EQ(f[i], float(std::pow(100000.0, -double(2 * i) / 64) / 4));
  EXPECT_EQ(rope_attention_factor(lin), 1.0f);

  c["rope_scaling"] = {
      {"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 2048}};
  const ModelConfig yarn = parse_model_config(c, "yarn");
  EXPECT_FLOAT_EQ(rope_attention_factor(yarn), float(0.1 * std::log(4.0) + 1));
  const auto dim = [](double rot) {
    return 64 * std::log(2048 / (rot * 2 * std::numbers::pi)) / (2 * std::log(100000.0));
  };
  const double low = std::max(std::floor(dim(32)), 0.0), high = std::min(std::ceil(dim(1)), 63.0);
  const std::vector<float> y = rope_inv_freq(yarn);
  for (size_t i = 0; i < y.size(); ++i) {
    const double base = std::pow(100000.0, -double(2 * i) / 64);
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    EXPECT_FLOAT_EQ(y[i], float(base / 4 * ramp + base * (1 - ramp))) << i;
  }
  EXPECT_FLOAT_EQ(y[0], 1.0f);                                           // fast dims kept
  EXPECT_FLOAT_EQ(y.back(), float(std::pow(100000.0, -62.0 / 64) / 4));  // slow ones slowed
}

// Qwen3's generation_config.json samples; SmolLM2's (no do_sample) is greedy.
TEST(ModelConfig, GenerationConfig) {
  const GenerationConfig q = parse_generation_config({{"do_sample", true},
                                                      {"temperature", 0.6},
                                                      {"top_k", 20},
                                                      {"top_p", 0.95},
                                                      {"eos_token_id", {151645, 151643}}},
                                                     "qwen3");
  EXPECT_TRUE(q.do_sample);
  EXPECT_EQ(q.temperature, 0.6);
  EXPECT_EQ(q.top_k, 20u);
  EXPECT_EQ(q.top_p, 0.95);
  EXPECT_EQ(q.eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  const GenerationConfig s = parse_generation_config({{"eos_token_id", 2}}, "smollm2");
  EXPECT_FALSE(s.do_sample);
  EXPECT_EQ(s.top_k, 50u);  // transformers' default, used only when do_sample is true
  EXPECT_THROW(parse_generation_config({{"top_p", 0.0}}, "bad"), Error);
  EXPECT_THROW(parse_generation_config({{"top_k", "20"}}, "bad"), Error);
}

}  // namespace
}  // namespace ferry
