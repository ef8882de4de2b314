// libFuzzer target for encoding: arbitrary bytes through the real tokenizer pipelines (byte-level
// BPE with the Qwen2 and Llama 3 PCRE2 pre-tokenizers and NFC; a GPT-2 style one), loaded from the
// fixtures. Valid UTF-8 must encode; anything else must throw ferry::Error. Every id must lie in
// the vocabulary, and ASCII text (which NFC leaves alone) must decode back to itself where the
// pipeline adds no prefix space.
//   ./fuzz_tokenizer_text CORPUS_COPY_DIR  (seeds: tests/fuzz_corpus/tokenizer_text)
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "text/tokenizer.hpp"

namespace {

std::string read_fixture(const char* name) {
  std::ifstream in(std::string(FERRY_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Loaded {
  ferry::Tokenizer tokenizer;
  // decode(encode(text)) == text for ASCII text: not with GPT-2's add_prefix_space, which (as
  // HF does) puts a space before the text and before each run that follows an added token.
  bool lossless;
};

// Loaded once per process; never modified after.
const std::vector<Loaded>& tokenizers() {
  static const std::vector<Loaded> all = [] {
    std::vector<Loaded> v;
    v.push_back({ferry::Tokenizer::from_json(read_fixture("qwen2_tiny.tokenizer.json")), true});
    v.push_back({ferry::Tokenizer::from_json(read_fixture("llama3_tiny.tokenizer.json")), true});
    v.push_back({ferry::Tokenizer::from_json(read_fixture("gpt2_style.tokenizer.json")), false});
    return v;
  }();
  return all;
}

bool ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const Loaded& l : tokenizers()) {
    std::vector<int32_t> ids;
    try {
      ids = l.tokenizer.encode(text, false);
    } catch (const ferry::Error&) {
      continue;  // not UTF-8
    }
    for (int32_t id : ids)
      if (id < 0 || size_t(id) >= l.tokenizer.vocab_size()) __builtin_trap();
    // Byte-level BPE loses nothing, and added tokens decode to their own text (skip_special off).
    if (l.lossless && ascii(text) && l.tokenizer.decode(ids, false) != text) __builtin_trap();
  }
  return 0;
}
