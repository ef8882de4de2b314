// A Jinja template as transformers' apply_chat_template renders it (jinja2 3.1 in an
// ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loopcontrols, plus the
// raise_exception and strftime_now globals and a tojson that keeps non-ASCII text). ferry runs the
// subset chat templates use; docs/chat.md lists it. Parsing checks every statement, filter, test
// and method name, so a template ferry cannot run fails when it is loaded, not mid-conversation.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "text/jinja_value.hpp"

namespace ferry::jinja {

struct Stmt;

class Template {
 public:
  // Throws ferry::Error "chat template line N: ..." naming the construct it cannot parse.
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `vars` as the global variables (messages, add_generation_prompt, bos_token, ...).
  // Throws ferry::Error with the template line on a runtime error, and "the chat template
  // refused the conversation: <message>" when the template calls raise_exception(message).
  std::string render(const Dict& vars) const;

 private:
  struct Parsed;
  std::unique_ptr<Parsed> parsed_;
};

}  // namespace ferry::jinja
