// libFuzzer target for the chat template engine: arbitrary bytes as a template. Parsing either
// succeeds or throws ferry::Error; a template that parses is rendered with a small conversation,
// and that too either succeeds or throws ferry::Error (raise_exception, a type error, ...).
//   ./fuzz_jinja CORPUS_COPY_DIR  (seeds: tests/fuzz_corpus/jinja and tests/fixtures/chat/*.jinja)
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/error.hpp"
#include "text/jinja_template.hpp"

namespace {

ferry::jinja::Dict conversation() {
  using ferry::jinja::Value;
  ferry::jinja::Dict d;
  d.set("messages", ferry::jinja::value_from_json(R"([{"role": "system", "content": " Be brief. "},
                                          {"role": "user", "content": "Hi <think>x</think> é"},
                                          {"role": "assistant", "content": "Hello"}])"));
  d.set("add_generation_prompt", Value::boolean(true));
  d.set("bos_token", Value::string("<s>"));
  d.set("eos_token", Value::string("</s>"));
  d.set("tools", Value::none());
  return d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ferry::jinja::Dict vars = conversation();
  const std::string_view src(reinterpret_cast<const char*>(data), size);
  try {
    const ferry::jinja::Template t(src);
    (void)t.render(vars);
  } catch (const ferry::Error&) {
  }
  return 0;
}
