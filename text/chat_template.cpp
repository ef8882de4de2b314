#include "text/chat_template.hpp"

#include <ctime>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "text/jinja_template.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

constexpr std::string_view kFormatNames = "chatml, llama3, deepseek-r1";
constexpr std::string_view kQwen25System =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr std::string_view kQwen2System = "You are a helpful assistant.";
constexpr std::string_view kLlamaKnowledge = "Cutting Knowledge Date: December 2023";

bool has(std::string_view s, std::string_view part) {
  return s.find(part) != s.npos;
}

// Python's str.isspace() for one code point: what Jinja's `trim` (str.strip) removes.
bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// The code point starting at s[i] and its length in bytes (1 for a byte that starts none).
std::pair<char32_t, size_t> code_point_at(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t n = b < 0x80           ? 1
                   : (b >> 5) == 0x6  ? 2
                   : (b >> 4) == 0xE  ? 3
                   : (b >> 3) == 0x1E ? 4
                                      : 0;
  if (n == 0 || i + n > s.size()) return {0xFFFD, 1};
  char32_t c = n == 1 ? b : b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return {c, n};
}

// Jinja's `trim` filter: strips Unicode whitespace (U+3000, U+00A0, ...) at both ends.
std::string_view py_strip(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    const auto [c, n] = code_point_at(s, b);
    if (!is_py_space(c)) break;
    b += n;
  }
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;  // back to the first byte of the last code point
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    const auto [c, n] = code_point_at(s, start);
    if (start + n != e || !is_py_space(c)) break;
    e = start;
  }
  return s.substr(b, e - b);
}

// A special token of tokenizer_config.json: a string, an AddedToken object, or absent/null.
std::optional<std::string> token_text(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& t = cfg[key];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_object() && t.contains("content") && t["content"].is_string())
    return t["content"].get<std::string>();
  return std::nullopt;
}

// The chat_template of a tokenizer_config: a string, or a list of named templates of which
// "default" is the chat one. Empty when absent.
std::string template_text(const json& cfg) {
  if (!cfg.is_object() || !cfg.contains("chat_template")) return {};
  const json& t = cfg["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())
    for (const json& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
  return {};
}

std::optional<ChatFormat> detect(std::string_view t) {
  if (has(t, "<｜User｜>") && has(t, "<｜Assistant｜>")) return ChatFormat::deepseek_r1;
  if (has(t, "<|start_header_id|>") && has(t, "<|eot_id|>")) return ChatFormat::llama3;
  if (has(t, "<|im_start|>") && has(t, "<|im_end|>")) return ChatFormat::chatml;
  return std::nullopt;
}

// Llama 3.1 writes `set date_string = "26 Jul 2024"`; 3.2 asks strftime_now for today's date,
// which transformers always provides.
std::string llama_date(std::string_view t) {
  if (!has(t, kLlamaKnowledge)) return {};
  if (has(t, "strftime_now")) {
    char buf[32];
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    return std::string(buf, std::strftime(buf, sizeof buf, "%d %b %Y", &tm));
  }
  constexpr std::string_view key = "date_string = \"";
  const size_t at = t.find(key);
  const size_t end = at == t.npos ? t.npos : t.find('"', at + key.size());
  if (end == t.npos) return "26 Jul 2024";  // the date Meta's 3.1 template uses
  return std::string(t.substr(at + key.size(), end - at - key.size()));
}

std::string default_bos(ChatFormat f) {
  if (f == ChatFormat::llama3) return "<|begin_of_text|>";
  if (f == ChatFormat::deepseek_r1) return "<｜begin▁of▁sentence｜>";
  return {};
}

std::string render_chatml(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  std::string out;
  if (!t.default_system.empty() && (messages.empty() || messages[0].role != "system"))
    out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
  for (const ChatMessage& m : messages)
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  return out;
}

std::string llama_turn(std::string_view role, std::string_view content) {
  return "<|start_header_id|>" + std::string(role) + "<|end_header_id|>\n\n" +
         std::string(content) + "<|eot_id|>";
}

// Meta's templates trim every message. From 3.1 on the system header is always written, with
// the knowledge and today's dates before the (first) system message.
std::string render_llama3(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  std::string out = t.bos;
  if (!t.today_date.empty()) {
    const bool sys = !messages.empty() && messages[0].role == "system";
    out += llama_turn("system", std::string(kLlamaKnowledge) + "\nToday Date: " + t.today_date +
                                    "\n\n" + std::string(sys ? py_strip(messages[0].content) : ""));
    if (sys) messages = messages.subspan(1);
  }
  for (const ChatMessage& m : messages) out += llama_turn(m.role, py_strip(m.content));
  return out;
}

// The last system message goes first, bare; an assistant message keeps only what follows its
// reasoning (the text after the last </think>), as the distills' template does for history.
std::string render_deepseek(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  std::string out = t.bos;
  for (const ChatMessage& m : messages)
    if (m.role == "system") out = t.bos + m.content;
  for (const ChatMessage& m : messages) {
    if (m.role == "user") out += "<｜User｜>" + m.content;
    if (m.role != "assistant") continue;
    const size_t think = m.content.rfind("</think>");
    out += "<｜Assistant｜>" +
           (think == std::string::npos ? m.content : m.content.substr(think + 8)) +
           "<｜end▁of▁sentence｜>";
  }
  return out;
}

std::string generation_prompt(const ChatTemplate& t) {
  switch (t.format) {
    case ChatFormat::chatml:
      return "<|im_start|>assistant\n";
    case ChatFormat::llama3:
      return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::deepseek_r1:
      return t.open_think ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>";
  }
  return {};
}

}  // namespace

std::string chat_template_text(std::string_view tokenizer_config_json,
                               std::string_view chat_template_jinja) {
  if (!chat_template_jinja.empty()) return std::string(chat_template_jinja);
  if (tokenizer_config_json.empty()) return {};
  return template_text(json::parse(tokenizer_config_json, nullptr, false));
}

ChatTemplate load_chat_template(std::string_view tokenizer_config_json,
                                std::string_view chat_template_jinja,
                                std::optional<ChatFormat> forced) {
  if (forced) return match_chat_template(tokenizer_config_json, forced);
  const json cfg =
      tokenizer_config_json.empty() ? json() : json::parse(tokenizer_config_json, nullptr, false);
  const std::string text = chat_template_text(tokenizer_config_json, chat_template_jinja);
  if (text.empty())
    throw Error(Setting::chat_template,
                "the model has no chat template (no chat_template.jinja, no chat_template in "
                "tokenizer_config); choose a format (" +
                    std::string(kFormatNames) + ")");
  ChatTemplate t;
  t.source = chat_template_jinja.empty() ? "tokenizer_config.json" : "chat_template.jinja";
  t.jinja = std::make_shared<const jinja::Template>(text);
  t.format = detect(text).value_or(ChatFormat::chatml);
  t.format_known = detect(text).has_value();
  // transformers passes the tokenizer's named special tokens (special_tokens_map) as variables.
  for (const char* key :
       {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (const std::optional<std::string> v = token_text(cfg, key))
      t.specials.set(key, jinja::Value::string(*v));
  return t;
}

std::vector<std::string> chat_stop_tokens(const ChatTemplate& t) {
  if (!t.jinja) return chat_stop_tokens(t.format);
  std::vector<std::string> out;
  if (t.format_known) out = chat_stop_tokens(t.format);
  if (const jinja::Value* eos = t.specials.find("eos_token")) out.push_back(eos->s);
  return out;
}

std::string describe_chat_template(const ChatTemplate& t) {
  if (t.jinja) return "the model's chat template (" + t.source + ")";
  return "the " + std::string(chat_format_name(t.format)) + " format";
}

std::optional<ChatFormat> parse_chat_format(std::string_view name) {
  if (name == "chatml") return ChatFormat::chatml;
  if (name == "llama3") return ChatFormat::llama3;
  if (name == "deepseek-r1") return ChatFormat::deepseek_r1;
  return std::nullopt;
}

std::string_view chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml:
      return "chatml";
    case ChatFormat::llama3:
      return "llama3";
    case ChatFormat::deepseek_r1:
      return "deepseek-r1";
  }
  return "?";
}

ChatTemplate match_chat_template(std::string_view tokenizer_config_json,
                                 std::optional<ChatFormat> forced) {
  const json cfg =
      tokenizer_config_json.empty() ? json() : json::parse(tokenizer_config_json, nullptr, false);
  const std::string text = template_text(cfg);
  const std::optional<ChatFormat> found = detect(text);
  const std::optional<ChatFormat> f = forced ? forced : found;
  if (!f && text.empty())
    throw Error(Setting::chat_template,
                "the model has no chat_template in its tokenizer_config; choose a format (" +
                    std::string(kFormatNames) + ")");
  if (!f)
    throw Error(Setting::chat_template,
                "the model's chat_template matches none of ferry's formats (" +
                    std::string(kFormatNames) + "); choose the closest");
  ChatTemplate t;
  t.format = *f;
  if (*f != ChatFormat::chatml) t.bos = token_text(cfg, "bos_token").value_or(default_bos(*f));
  if (found != f) {  // a forced format: the template's details do not apply; use the current
    t.open_think = *f == ChatFormat::deepseek_r1;  // revision's conventions
    return t;
  }
  if (*f == ChatFormat::chatml)
    t.default_system = has(text, kQwen25System)  ? std::string(kQwen25System)
                       : has(text, kQwen2System) ? std::string(kQwen2System)
                                                 : "";
  if (*f == ChatFormat::llama3) t.today_date = llama_date(text);
  if (*f == ChatFormat::deepseek_r1) t.open_think = has(text, "<｜Assistant｜><think>");
  return t;
}

std::string render_chat(const ChatTemplate& t, std::span<const ChatMessage> messages,
                        bool add_generation_prompt) {
  if (t.jinja) {
    jinja::Dict vars = t.specials;
    jinja::List list;
    for (const ChatMessage& m : messages) {
      jinja::Dict d;
      d.items = {{"role", jinja::Value::string(m.role)},
                 {"content", jinja::Value::string(m.content)}};
      list.push_back(jinja::Value::of_dict(std::move(d)));
    }
    vars.set("messages", jinja::Value::of_list(std::move(list)));
    vars.set("tools", jinja::Value::none());
    vars.set("documents", jinja::Value::none());
    vars.set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
    return t.jinja->render(vars);
  }
  std::string out = t.format == ChatFormat::chatml   ? render_chatml(t, messages)
                    : t.format == ChatFormat::llama3 ? render_llama3(t, messages)
                                                     : render_deepseek(t, messages);
  if (add_generation_prompt) out += generation_prompt(t);
  return out;
}

std::vector<std::string> chat_stop_tokens(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml:
      return {"<|im_end|>", "<|endoftext|>"};
    case ChatFormat::llama3:  // <|eom_id|> ends a 3.1 turn that calls a tool
      return {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"};
    case ChatFormat::deepseek_r1:
      return {"<｜end▁of▁sentence｜>"};
  }
  return {};
}

}  // namespace ferry
