// Chat prompts. ferry does not run Jinja: the checkpoint's `chat_template` (tokenizer_config.json)
// is matched, by the markers each format uses, to one of three built-in renderers, and the few
// details that differ between revisions of a format (Qwen2.5's default system prompt, Llama 3.1's
// date header, the distills' <think> opener) are read from the template text. Three formats cover
// the model families ferry loads; each renderer is a few lines that golden tests pin to what
// transformers' apply_chat_template produces from the real templates (tests/fixtures/chat/).
// Tools, documents and tool-call messages are not rendered: ferry chats in plain text.
#pragma once
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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
  ChatFormat format = ChatFormat::chatml;
  std::string bos;             // BOS text the prompt starts with (llama3, deepseek-r1), or empty
  std::string default_system;  // chatml: system prompt used when the conversation has none
  std::string today_date;      // llama3: empty for Llama 3.0; for 3.1+ the "Today Date" of the
                               // system header the template always writes ("26 Jul 2024")
  bool open_think = false;     // deepseek-r1: the generation prompt opens "<think>\n"
};

// "chatml", "llama3", "deepseek-r1"; nullopt for anything else.
std::optional<ChatFormat> parse_chat_format(std::string_view name);
std::string_view chat_format_name(ChatFormat f);

// The template of a model from its tokenizer_config.json text (may be empty): `forced` (from
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

}  // namespace ferry
