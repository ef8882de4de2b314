// Chat prompts. The model's own template (chat_template.jinja, else tokenizer_config.json's
// `chat_template`) runs on ferry's Jinja engine (text/jinja_template.hpp) with the variables
// transformers' apply_chat_template passes: messages, add_generation_prompt, tools and documents
// (None) and the tokenizer's special tokens (bos_token, eos_token, ...).
//
// Three built-in renderers remain for --template (a model without a template, or one to
// override): the checkpoint's template is matched by the markers each format uses, and the few
// details that differ between revisions of a format (Qwen2.5's default system prompt, Llama 3.1's
// date header, the distills' <think> opener) are read from the template text. Each is a few lines
// that golden tests pin to transformers' renders of the real templates (tests/fixtures/chat/).
#pragma once
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "text/jinja_template.hpp"
#include "text/jinja_value.hpp"

namespace ferry {

enum class ChatFormat {
  chatml,       // Qwen2 / Qwen2.5: <|im_start|>role\n...<|im_end|>\n
  llama3,       // Llama 3 / 3.1 Instruct: <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  deepseek_r1,  // DeepSeek-R1 distills: <｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  // The model's template on the Jinja engine; null when a built-in format renders (--template).
  std::shared_ptr<const jinja::Template> jinja;
  jinja::Dict specials;  // jinja: bos_token, eos_token, ... as tokenizer_config.json names them
  std::string source;    // jinja: where the template came from, for messages
  // The built-in format; with `jinja`, the one whose markers the template carries (its end-of-turn
  // tokens stop an answer), chatml when none.
  ChatFormat format = ChatFormat::chatml;
  bool format_known = true;    // false: a Jinja template with no built-in format's markers
  std::string bos;             // BOS text the prompt starts with (llama3, deepseek-r1), or empty
  std::string default_system;  // chatml: system prompt used when the conversation has none
  std::string today_date;      // llama3: empty for Llama 3.0; for 3.1+ the "Today Date" of the
                               // system header the template always writes ("26 Jul 2024")
  bool open_think = false;     // deepseek-r1: the generation prompt opens "<think>\n"
};

// "chatml", "llama3", "deepseek-r1"; nullopt for anything else.
std::optional<ChatFormat> parse_chat_format(std::string_view name);
std::string_view chat_format_name(ChatFormat f);

// The model's chat template, parsed: `chat_template_jinja` (the chat_template.jinja file; may be
// empty) else tokenizer_config's `chat_template` (a string, or the "default" of a list of named
// templates). `forced` (--template) picks a built-in format instead. Throws ferry::Error when there
// is no template (naming the formats to choose from) or the Jinja engine cannot parse it (naming
// the line and the construct).
ChatTemplate load_chat_template(std::string_view tokenizer_config_json,
                                std::string_view chat_template_jinja,
                                std::optional<ChatFormat> forced = std::nullopt);

// The template text load_chat_template runs, or "" when the model has none.
std::string chat_template_text(std::string_view tokenizer_config_json,
                               std::string_view chat_template_jinja);

// A built-in format for a model from its tokenizer_config.json text (may be empty): `forced` (from
// --template) when set, else the format whose markers its `chat_template` carries. Throws
// ferry::Error naming the formats and --template when the template is missing or matches none.
ChatTemplate match_chat_template(std::string_view tokenizer_config_json,
                                 std::optional<ChatFormat> forced = std::nullopt);

// The prompt text for `messages` exactly as transformers' apply_chat_template(messages,
// tokenize=False, add_generation_prompt) renders the model's template; with
// add_generation_prompt it ends with the assistant's header.
std::string render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages,
                        bool add_generation_prompt);

// The special tokens that end an assistant turn in this format (EOS and end-of-turn tokens).
std::vector<std::string> chat_stop_tokens(ChatFormat f);
// ... in this template: a Jinja template's eos_token and, when it carries a built-in format's
// markers, that format's end-of-turn tokens.
std::vector<std::string> chat_stop_tokens(const ChatTemplate& t);
// "the model's chat template (chat_template.jinja)" or "the chatml format", for the CLI banner.
std::string describe_chat_template(const ChatTemplate& t);

}  // namespace ferry
