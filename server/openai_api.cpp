#include "server/openai_api.hpp"

#include <fmt/format.h>

#include "runtime/generate.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;

// Text of a JSON value for a message: short, and never invalid UTF-8.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool bool_field(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean())
    throw bad_field(name, fmt::format("must be true or false, got {}", shown(*v)));
  return v->get<bool>();
}

double number_field(const json& body, const char* name, double lo, double hi, double fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number() || v->get<double>() < lo || v->get<double>() > hi)
    throw bad_field(name, fmt::format("must be a number from {} to {}, got {}", lo, hi, shown(*v)));
  return v->get<double>();
}

// A whole number >= lo; 0 when absent.
uint64_t count_field(const json& body, const char* name, uint64_t lo) {
  const json* v = field(body, name);
  if (!v) return 0;
  if (!v->is_number_integer() || (v->is_number_integer() && v->get<int64_t>() < int64_t(lo)))
    throw bad_field(name,
                    fmt::format("must be a whole number of at least {}, got {}", lo, shown(*v)));
  return v->get<uint64_t>();
}

// Options ferry does not implement: refused rather than ignored, so that no client believes it
// got what it asked for.
void refuse_unsupported(const json& body) {
  if (const json* n = field(body, "n"); n && (!n->is_number_integer() || n->get<int64_t>() != 1))
    throw bad_field(
        "n", fmt::format("ferry returns one choice per request: n must be 1, got {}", shown(*n)));
  if (const json* lp = field(body, "logprobs"); lp && *lp != json(false))
    throw bad_field("logprobs", "log probabilities are not returned by ferry; leave it out");
  if (field(body, "top_logprobs"))
    throw bad_field("top_logprobs", "log probabilities are not returned by ferry; leave it out");
  for (const char* f : {"tools", "functions"})
    if (const json* t = field(body, f); t && !(t->is_array() && t->empty()))
      throw bad_field(f, "ferry does not call tools; leave it out");
  for (const char* f : {"frequency_penalty", "presence_penalty"})
    if (number_field(body, f, -2, 2, 0) != 0)
      throw bad_field(f, "ferry does not apply this penalty; leave it out or give 0");
  if (const json* rf = field(body, "response_format");
      rf && !(rf->is_object() && rf->value("type", json()) == "text"))
    throw bad_field("response_format", "ferry writes plain text only: use {\"type\": \"text\"}");
  if (const json* m = field(body, "model"); m && !m->is_string())
    throw bad_field("model", fmt::format("must be a string, got {}", shown(*m)));
}

std::vector<std::string> stop_field(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  const std::string must = "must be a string or a list of up to 4 non-empty strings";
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array() && v->size() <= 4) {
    for (const json& s : *v) {
      if (!s.is_string()) throw bad_field("stop", fmt::format("{}, got {}", must, shown(*v)));
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad_field("stop", fmt::format("{}, got {}", must, shown(*v)));
  }
  for (const std::string& s : out)
    if (s.empty()) throw bad_field("stop", must + ", got an empty string");
  return out;
}

// A message's content: a string, or a list of {"type": "text", "text": ...} parts.
std::string content_text(const json& content, size_t i) {
  const std::string param = fmt::format("messages[{}].content", i);
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    throw bad_field(
        param, fmt::format("must be a string or a list of text parts, got {}", shown(content)));
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string())
      throw bad_field(param, fmt::format("ferry reads text parts only ({{\"type\": \"text\", "
                                         "\"text\": ...}}), got {}",
                                         shown(part)));
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> messages_field(const json& body) {
  const json* v = field(body, "messages");
  if (!v || !v->is_array() || v->empty())
    throw bad_field("messages", "must be a non-empty list of {\"role\", \"content\"} objects");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content"))
      throw bad_field(
          fmt::format("messages[{}]", i),
          fmt::format("must be an object with a string 'role' and a 'content', got {}", shown(m)));
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role != "system" && role != "user" && role != "assistant")
      throw bad_field(fmt::format("messages[{}].role", i),
                      fmt::format("must be system, developer, user or assistant, got '{}'", role));
    out.push_back({std::move(role), content_text(m["content"], i)});
  }
  return out;
}

// /v1/completions' prompt: a string, a list of token ids, or a list holding one of either.
std::vector<int32_t> prompt_field(const json& body, const Engine& e) {
  const json* v = field(body, "prompt");
  const std::string must = "must be a string or a list of token ids (one prompt per request)";
  if (!v) throw bad_field("prompt", must);
  const json& p = v->is_array() && v->size() == 1 && !(*v)[0].is_number() ? (*v)[0] : *v;
  if (p.is_string()) return e.tokenizer().encode(p.get<std::string>(), true);
  if (!p.is_array() || p.empty())
    throw bad_field("prompt", fmt::format("{}, got {}", must, shown(*v)));
  std::vector<int32_t> ids;
  for (const json& id : p) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<uint64_t>() >= e.config().vocab)
      throw bad_field("prompt", fmt::format("token ids must be from 0 to {}, got {}",
                                            e.config().vocab - 1, shown(id)));
    ids.push_back(id.get<int32_t>());
  }
  return ids;
}

json parse_body(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded())
    throw ApiError(400, "invalid_request_error", "", "the body is not valid JSON");
  if (!j.is_object())
    throw ApiError(400, "invalid_request_error", "",
                   "the body must be a JSON object, got " + shown(j));
  return j;
}

// max_completion_tokens (or the older max_tokens), checked against the room the prompt leaves.
uint64_t token_limit(const json& body, uint64_t prompt, uint64_t ctx) {
  const uint64_t a = count_field(body, "max_tokens", 1),
                 b = count_field(body, "max_completion_tokens", 1);
  if (a && b && a != b)
    throw bad_field("max_tokens", "max_tokens and max_completion_tokens differ; give one");
  const uint64_t asked = b ? b : a;
  if (prompt >= ctx || prompt + asked > ctx)
    throw ApiError(
        400, "invalid_request_error", "context_length_exceeded",
        fmt::format("the context holds {} tokens; the prompt has {}{}; shorten it, "
                    "lower max_tokens, or restart ferry serve with a larger --ctx",
                    ctx, prompt, asked ? fmt::format(" and max_tokens asks {}", asked) : ""),
        "messages");
  return asked ? asked : ctx - prompt;  // OpenAI's default: whatever room the context leaves
}

}  // namespace

ApiError bad_field(const std::string& param, const std::string& message) {
  return ApiError(400, "invalid_request_error", "", "'" + param + "' " + message, param);
}

std::string error_json(const ApiError& e) {
  return dump({{"error",
                {{"message", e.what()},
                 {"type", e.type},
                 {"param", e.param.empty() ? json() : json(e.param)},
                 {"code", e.code.empty() ? json() : json(e.code)}}}});
}

std::string render_messages(const ChatTemplate& t, std::span<const ChatMessage> messages) {
  return render_chat(t, messages, true);
}

ApiRequest parse_api_request(Endpoint endpoint, std::string_view body, const Engine& engine,
                             const ServedModel& model, uint64_t seed) {
  const json j = parse_body(body);
  refuse_unsupported(j);
  ApiRequest out;
  out.endpoint = endpoint;
  out.stream = bool_field(j, "stream", false);
  if (const json* so = field(j, "stream_options")) {
    if (!out.stream) throw bad_field("stream_options", "is only allowed when 'stream' is true");
    if (!so->is_object()) throw bad_field("stream_options", "must be an object");
    out.include_usage = bool_field(*so, "include_usage", false);
  }
  Request& r = out.request;
  r.sampling.temperature = float(number_field(j, "temperature", 0, 2, 1));  // OpenAI's default
  r.sampling.top_p = float(number_field(j, "top_p", 0, 1, 1));
  if (r.sampling.top_p == 0) throw bad_field("top_p", "must be above 0 (1 keeps every token)");
  const json* s = field(j, "seed");
  if (s && !s->is_number_integer())
    throw bad_field("seed", "must be a whole number, got " + shown(*s));
  r.sampling.seed = s ? s->get<uint64_t>() : seed;
  r.stop_strings = stop_field(j);
  r.stop_ids = model.stop_ids;
  if (endpoint == Endpoint::chat) {
    if (!model.chat)
      throw ApiError(400, "invalid_request_error", "no_chat_template",
                     "this model has no chat template: use /v1/completions, or restart ferry "
                     "serve with --template chatml, llama3 or deepseek-r1");
    const std::string text = render_messages(*model.chat, messages_field(j));
    r.prompt = engine.tokenizer().encode(text, false);  // the template writes any BOS itself
  } else {
    for (const char* f : {"suffix", "echo", "best_of"})
      if (const json* v = field(j, f); v && *v != json(false) && *v != json(1))
        throw bad_field(f, "is not supported by ferry; leave it out");
    r.prompt = prompt_field(j, engine);
  }
  if (r.prompt.empty())
    throw bad_field(endpoint == Endpoint::chat ? "messages" : "prompt",
                    "encodes to no tokens; give some text");
  r.max_tokens = token_limit(j, r.prompt.size(), engine.ctx());
  return out;
}

std::string tokenize_json(std::string_view body, const Engine& engine) {
  const json j = parse_body(body);
  const json* c = field(j, "content");
  if (!c || !c->is_string()) throw bad_field("content", "must be a string");
  return dump({{"tokens", engine.tokenizer().encode(c->get<std::string>(),
                                                    bool_field(j, "add_special", false))}});
}

std::string detokenize_json(std::string_view body, const Engine& engine) {
  const json j = parse_body(body);
  const json* t = field(j, "tokens");
  if (!t || !t->is_array()) throw bad_field("tokens", "must be a list of token ids");
  std::vector<int32_t> ids;
  for (const json& id : *t) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<uint64_t>() >= engine.config().vocab)
      throw bad_field("tokens", fmt::format("token ids must be from 0 to {}, got {}",
                                            engine.config().vocab - 1, shown(id)));
    ids.push_back(id.get<int32_t>());
  }
  return dump({{"content", engine.tokenizer().decode(ids, false)}});
}

std::string models_json(const ServedModel& model, int64_t created) {
  return dump(
      {{"object", "list"},
       {"data",
        {{{"id", model.id}, {"object", "model"}, {"created", created}, {"owned_by", "ferry"}}}}});
}

std::string_view finish_reason(StopReason r) {
  return r == StopReason::eos || r == StopReason::stop_string ? "stop" : "length";
}

namespace {

json usage(const RequestResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.generated},
          {"total_tokens", r.prompt_tokens + r.generated}};
}

// llama.cpp's server names the same figures "timings"; clients that do not know them ignore them.
json timings(const RequestResult& r) {
  const auto rate = [](uint64_t n, double s) { return s > 0 ? double(n) / s : 0.0; };
  return {
      {"queued_ms", r.queued_seconds * 1e3},
      {"prompt_n", r.prompt_tokens},
      {"prompt_ms", r.prompt_seconds * 1e3},
      {"prompt_per_second", rate(r.prompt_tokens, r.prompt_seconds)},
      {"predicted_n", r.generated},
      {"predicted_ms", r.generate_seconds * 1e3},
      // the first token comes with the prompt's pass: the rest took generate_seconds
      {"predicted_per_second", rate(r.generated > 0 ? r.generated - 1 : 0, r.generate_seconds)}};
}

std::string event(const json& j) {
  return "data: " + dump(j) + "\n\n";
}

}  // namespace

ResponseWriter::ResponseWriter(Endpoint endpoint, std::string model, uint64_t serial,
                               int64_t created)
    : endpoint_(endpoint),
      model_(std::move(model)),
      id_(fmt::format("{}-{}", endpoint == Endpoint::chat ? "chatcmpl" : "cmpl", serial)),
      created_(created) {}

std::string ResponseWriter::completion(const std::string& text, const RequestResult& r) const {
  const bool chat = endpoint_ == Endpoint::chat;
  json choice = {{"index", 0}, {"finish_reason", finish_reason(r.reason)}, {"logprobs", nullptr}};
  if (chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return dump({{"id", id_},
               {"object", chat ? "chat.completion" : "text_completion"},
               {"created", created_},
               {"model", model_},
               {"choices", json::array({choice})},
               {"usage", usage(r)},
               {"timings", timings(r)}});
}

json ResponseWriter::chunk(json choice) const {
  const bool chat = endpoint_ == Endpoint::chat;
  return {{"id", id_},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"choices", choice.is_null() ? json::array() : json::array({choice})}};
}

std::string ResponseWriter::first_event() const {
  if (endpoint_ != Endpoint::chat) return {};
  return event(chunk({{"index", 0},
                      {"delta", {{"role", "assistant"}, {"content", ""}}},
                      {"logprobs", nullptr},
                      {"finish_reason", nullptr}}));
}

std::string ResponseWriter::text_event(std::string_view text) const {
  if (text.empty()) return {};
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (endpoint_ == Endpoint::chat)
    choice["delta"] = {{"content", text}};
  else
    choice["text"] = text;
  return event(chunk(choice));
}

std::string ResponseWriter::last_events(const RequestResult& r, bool include_usage) const {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason(r.reason)}};
  if (endpoint_ == Endpoint::chat)
    choice["delta"] = json::object();
  else
    choice["text"] = "";
  json last = chunk(choice);
  last["timings"] = timings(r);
  std::string out = event(last);
  if (include_usage) {
    json u = chunk(nullptr);
    u["usage"] = usage(r);
    out += event(u);
  }
  return out + "data: [DONE]\n\n";
}

std::string ResponseWriter::error_event(const ApiError& e) const {
  return "data: " + error_json(e) + "\n\n";
}

}  // namespace ferry
