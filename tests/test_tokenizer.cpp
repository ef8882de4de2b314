// Tokenizer against Hugging Face tokenizers: golden ids and text from
// tools/reference/gen_tokenizer_golden.py (tests/fixtures/tokenizer/golden_*.json).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "test_util.hpp"
#include "text/tokenizer.hpp"

namespace ferry {
namespace {

using nlohmann::json;

const std::filesystem::path kFixtures =
    std::filesystem::path(FERRY_SOURCE_DIR) / "tests" / "fixtures" / "tokenizer";

std::string read_text(const std::filesystem::path& p) {
  const std::vector<uint8_t> bytes = test::read_file(p);
  return std::string(bytes.begin(), bytes.end());
}

bool valid_utf8(const std::string& s) {
  // Decoding and re-checking through the tokenizer's own helper would prove nothing; this is
  // an independent, deliberately simple checker (no overlongs, surrogates or > U+10FFFF).
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80                 ? 1
               : b >= 0xC2 && b <= 0xDF ? 2
               : b >= 0xE0 && b <= 0xEF ? 3
               : b >= 0xF0 && b <= 0xF4 ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t c = n == 1 ? b : b & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto cb = static_cast<unsigned char>(s[i + k]);
      if ((cb & 0xC0) != 0x80) return false;
      c = (c << 6) | (cb & 0x3F);
    }
    if ((n == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))) ||
        (n == 4 && (c < 0x10000 || c > 0x10FFFF))) {
      return false;
    }
    i += n;
  }
  return true;
}

// Checks every golden case of `name`; returns the number of cases checked.
size_t check_golden(const Tokenizer& tok, const std::string& name) {
  const json golden = json::parse(read_text(kFixtures / ("golden_" + name + ".json")));
  size_t n = 0;
  for (const json& c : golden.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(name + " case " + std::to_string(n) + ": " + json(text).dump());
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    const auto ids_special = c.at("ids_special").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text, false), ids);
    EXPECT_EQ(tok.encode(text, true), ids_special);
    const std::string decoded = c.at("decoded").get<std::string>();
    EXPECT_EQ(tok.decode(ids_special), decoded);
    EXPECT_EQ(tok.decode(ids_special, false), c.at("decoded_all").get<std::string>());

    StreamDecoder stream(tok);
    std::string streamed;
    for (const int32_t id : ids_special) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(valid_utf8(piece)) << "partial UTF-8 emitted: " << json(piece).dump();
      streamed += piece;
    }
    const std::string rest = stream.flush();
    EXPECT_TRUE(valid_utf8(rest));
    streamed += rest;
    EXPECT_EQ(streamed, decoded);
    ++n;
  }
  return n;
}

Tokenizer fixture_tokenizer(const std::string& name) {
  return Tokenizer::from_json(read_text(kFixtures / (name + ".tokenizer.json")),
                              read_text(kFixtures / (name + ".tokenizer_config.json")));
}

// The edit gen_tokenizer_golden.py's metaspace_variant makes (keep the two in step).
std::string metaspace_variant(const std::string& tok_json, const std::string& scheme, bool split) {
  json d = json::parse(tok_json);
  d["normalizer"] = nullptr;
  const json meta = {{"type", "Metaspace"},
                     {"replacement", "\xE2\x96\x81"},
                     {"prepend_scheme", scheme},
                     {"split", split}};
  d["pre_tokenizer"] = meta;
  if (scheme == "always") {
    d["decoder"] = {{"type", "Sequence"},
                    {"decoders", {meta, {{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  }
  return d.dump();
}

TEST(Tokenizer, Qwen2ByteLevelMatchesHuggingFace) {
  const Tokenizer tok = fixture_tokenizer("qwen2_tiny");
  EXPECT_GT(check_golden(tok, "qwen2_tiny"), 70u);
}

TEST(Tokenizer, Llama3ByteLevelIgnoreMergesMatchesHuggingFace) {
  const Tokenizer tok = fixture_tokenizer("llama3_tiny");
  EXPECT_GT(check_golden(tok, "llama3_tiny"), 70u);
}

TEST(Tokenizer, AddedTokenFlagsMatchHuggingFace) {
  // lstrip, rstrip, single_word and a normalized (NFC) added token.
  const Tokenizer tok =
      Tokenizer::from_json(read_text(kFixtures / "qwen2_tiny_flags.tokenizer.json"));
  EXPECT_GT(check_golden(tok, "qwen2_tiny_flags"), 80u);
}

TEST(Tokenizer, Gpt2ByteLevelAndTemplateMatchHuggingFace) {
  // ByteLevel pre-tokenizer with its own regex and add_prefix_space; a Sequence post-processor
  // whose template adds a token on each side.
  const Tokenizer tok = Tokenizer::from_json(read_text(kFixtures / "gpt2_style.tokenizer.json"));
  EXPECT_GT(check_golden(tok, "gpt2_style"), 80u);
}

TEST(Tokenizer, TinyStoriesSentencePieceBpeMatchesHuggingFace) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  const Tokenizer tok = Tokenizer::from_json(read_text(dir / "tokenizer.json"),
                                             read_text(dir / "tokenizer_config.json"));
  EXPECT_GT(check_golden(tok, "tinystories"), 70u);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.vocab_size(), 2048u);
}

TEST(Tokenizer, MetaspacePreTokenizerMatchesHuggingFace) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  const std::string raw = read_text(dir / "tokenizer.json");
  EXPECT_GT(check_golden(Tokenizer::from_json(metaspace_variant(raw, "first", false)),
                         "tinystories_metaspace_first"),
            70u);
  EXPECT_GT(check_golden(Tokenizer::from_json(metaspace_variant(raw, "always", true)),
                         "tinystories_metaspace_always"),
            70u);
}

TEST(Tokenizer, SpecialTokenIdsFromConfig) {
  const Tokenizer qwen = fixture_tokenizer("qwen2_tiny");
  EXPECT_EQ(qwen.bos_id(), -1);  // bos_token is null
  EXPECT_EQ(qwen.eos_id(), qwen.token_to_id("<|im_end|>"));
  EXPECT_GE(qwen.eos_id(), 0);
  const Tokenizer llama = fixture_tokenizer("llama3_tiny");
  EXPECT_EQ(llama.bos_id(), llama.token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(llama.eos_id(), llama.token_to_id("<|eot_id|>"));
  // Without a config there is nothing to name them.
  const Tokenizer bare =
      Tokenizer::from_json(read_text(kFixtures / "qwen2_tiny.tokenizer.json"), "");
  EXPECT_EQ(bare.bos_id(), -1);
  EXPECT_EQ(bare.eos_id(), -1);
  EXPECT_EQ(bare.vocab_size(), 499u);  // HF get_vocab_size(): 496 BPE + 3 added
  EXPECT_EQ(llama.vocab_size(), 501u);
}

TEST(Tokenizer, UnsupportedComponentNamesItsType) {
  const json base = json::parse(read_text(kFixtures / "qwen2_tiny.tokenizer.json"));
  const std::vector<std::pair<std::string, json>> cases = {
      {"normalizer", {{"type", "Lowercase"}}},
      {"pre_tokenizer", {{"type", "Whitespace"}}},
      {"decoder", {{"type", "CTC"}}},
      {"post_processor", {{"type", "RobertaProcessing"}}},
  };
  for (const auto& [key, component] : cases) {
    json j = base;
    j[key] = component;
    const std::string type = component["type"].get<std::string>();
    try {
      (void)Tokenizer::from_json(j.dump());
      ADD_FAILURE() << key << " " << type << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(type), std::string::npos) << e.what();
    }
  }
  json nested = base;
  nested["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Precompiled"}}}}};
  EXPECT_THROW((void)Tokenizer::from_json(nested.dump()), Error);
  json model = base;
  model["model"]["type"] = "WordPiece";
  EXPECT_THROW((void)Tokenizer::from_json(model.dump()), Error);
  EXPECT_THROW((void)Tokenizer::from_json("{not json"), Error);
}

// Found by fuzz_tokenizer_json: a token id that is a float (converting 5.6e113 to an integer is
// undefined behaviour), negative or past int32, and a post-processor id past the vocabulary.
TEST(Tokenizer, BadTokenIdsAreErrors) {
  const json base = json::parse(read_text(kFixtures / "gpt2_style.tokenizer.json"));
  for (const json& id : {json(5.6e113), json(3.5), json(-1), json(uint64_t(1) << 40)}) {
    json vocab = base, added = base;
    vocab["model"]["vocab"]["hello"] = id;
    added["added_tokens"][0]["id"] = id;
    EXPECT_THROW((void)Tokenizer::from_json(vocab.dump()), Error) << id;
    EXPECT_THROW((void)Tokenizer::from_json(added.dump()), Error) << id;
  }
  ASSERT_TRUE(base["post_processor"].dump().find("TemplateProcessing") != std::string::npos);
  json past = base;
  for (json& p : past["post_processor"]["processors"])
    if (p["type"] == "TemplateProcessing")
      for (auto& [name, spec] : p["special_tokens"].items()) spec["ids"] = {99999};
  EXPECT_THROW((void)Tokenizer::from_json(past.dump()), Error);
}

TEST(Tokenizer, RejectsInvalidUtf8Text) {
  const Tokenizer tok = fixture_tokenizer("qwen2_tiny");
  EXPECT_THROW((void)tok.encode("ab\xC3", false), Error);
  EXPECT_THROW((void)tok.encode("\xED\xA0\x80", false), Error);  // a surrogate
}

TEST(Tokenizer, StreamHoldsBackIncompleteCharacters) {
  const Tokenizer tok = fixture_tokenizer("qwen2_tiny");
  const std::string text = "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80!";  // 你好 😀!
  const std::vector<int32_t> ids = tok.encode(text, false);
  ASSERT_GT(ids.size(), 4u);  // the tiny vocab spells these characters byte by byte
  StreamDecoder stream(tok);
  std::string out;
  size_t held = 0;
  for (const int32_t id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_TRUE(valid_utf8(piece));
    held += piece.empty();
    out += piece;
  }
  out += stream.flush();
  EXPECT_EQ(out, text);
  EXPECT_GT(held, 0u);
}

TEST(Tokenizer, EncodesLargeTextQuickly) {
  const Tokenizer tok = fixture_tokenizer("qwen2_tiny");
  std::string text;
  while (text.size() < 100'000) {
    text += "Once upon a time, there was a little girl named Lily. She liked 123 apples! ";
    text += "\xE4\xBD\xA0\xE5\xA5\xBD caf\xC3\xA9\n\n  ";
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 1.0);
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(Tokenizer, EncodesLargeUnsplitTextQuickly) {
  // No pre-tokenizer: the whole normalized text is one BPE word, merged with a priority queue.
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  const Tokenizer tok = Tokenizer::from_json(read_text(dir / "tokenizer.json"));
  std::string text;
  while (text.size() < 100'000) {
    text += "Once upon a time, there was a little girl named Lily. She liked 123 apples!\n";
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 1.0);
  EXPECT_EQ(tok.decode(ids), text);
}

}  // namespace
}  // namespace ferry
