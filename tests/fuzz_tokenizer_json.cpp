// libFuzzer target for the tokenizer.json loader: a .ferry file carries its tokenizer as text,
// so the loader parses untrusted input. Every input must build a tokenizer or throw ferry::Error;
// any other exception, a crash or a sanitizer report is a finding. A tokenizer that builds then
// encodes and decodes a fixed mixed-script text, which again may only throw ferry::Error.
//   ./fuzz_tokenizer_json CORPUS_COPY_DIR  (seeds: tests/fixtures/tokenizer/*.tokenizer.json)
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/error.hpp"
#include "text/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    const ferry::Tokenizer t = ferry::Tokenizer::from_json(json);
    const std::vector<int32_t> ids =
        t.encode("Once upon a time, 42 cafés\n\n  日本語 🙂!", true);
    for (int32_t id : ids)
      if (id < 0 || size_t(id) >= t.vocab_size()) __builtin_trap();  // an id past the vocabulary
    volatile size_t sink = t.decode(ids, false).size();
    (void)sink;
  } catch (const ferry::Error&) {
    // A rejected tokenizer: the expected outcome for almost every input.
  }
  return 0;
}
