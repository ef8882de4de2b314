// The OpenAI API's request and response bodies: a JSON body is checked field by field and turned
// into a scheduler Request (a refusal names the field and what it must be, as OpenAI's 400s do),
// and a request's text and result are written back as a completion, or as the chunks of a
// Server-Sent Events stream. No sockets here: server/http_server.cpp moves the bytes.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/scheduler.hpp"
#include "text/chat_template.hpp"

namespace ferry {

// An answer other than 200, as OpenAI writes it: {"error": {"message", "type", "param", "code"}}.
class ApiError : public Error {
 public:
  ApiError(int status, std::string type, std::string code, const std::string& message,
           std::string param = {})
      : Error(message),
        status(status),
        type(std::move(type)),
        code(std::move(code)),
        param(std::move(param)) {}
  int status;         // HTTP status: 400, 401, 404, 413, 500, 503
  std::string type;   // "invalid_request_error", "authentication_error", "server_error", ...
  std::string code;   // "context_length_exceeded", "invalid_api_key", ...; empty: null
  std::string param;  // the request field at fault; empty: null
};
// A 400 about one field of the request.
ApiError bad_field(const std::string& param, const std::string& message);
std::string error_json(const ApiError& e);

// The model a server serves, as its endpoints describe and use it.
struct ServedModel {
  std::string id;  // the name in /v1/models and every response: the file's stem
  // how /v1/chat/completions turns messages into a prompt; none: the model has no chat template
  // (a base model), and that endpoint says so
  std::optional<ChatTemplate> chat;
  std::vector<int32_t> stop_ids;  // EOS and end-of-turn ids: every request stops on them
};

// The prompt text of a conversation. The one place the server renders messages, so that a
// different renderer (the Jinja one) replaces a single call.
std::string render_messages(const ChatTemplate& t, std::span<const ChatMessage> messages);

enum class Endpoint { chat, completion };

struct ApiRequest {
  Endpoint endpoint = Endpoint::chat;
  Request request;             // prompt ids, sampling, stop strings, token limit, stop ids
  bool stream = false;         // answer with Server-Sent Events
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
};

// The body of POST /v1/chat/completions or /v1/completions as a Request for `engine`'s
// scheduler. Throws ApiError (400) naming the field when the body is not JSON, a field has the
// wrong type or range, it asks for what ferry does not do (n > 1, logprobs, tools), or the prompt
// with its token limit does not fit the context. `seed` seeds the sampler when the body has no
// seed (the server draws one per request, so that unseeded requests differ).
ApiRequest parse_api_request(Endpoint endpoint, std::string_view body, const Engine& engine,
                             const ServedModel& model, uint64_t seed);

// POST /tokenize {"content": text, "add_special": bool} -> {"tokens": [ids]}, and
// POST /detokenize {"tokens": [ids]} -> {"content": text}. Throw ApiError (400) on a bad body.
std::string tokenize_json(std::string_view body, const Engine& engine);
std::string detokenize_json(std::string_view body, const Engine& engine);

// GET /v1/models.
std::string models_json(const ServedModel& model, int64_t created);

// "stop" for an end of sequence or a stop string, "length" for the token limit or a full context.
std::string_view finish_reason(StopReason r);

// The response of one request: the whole completion, or the events of its stream. Each event is
// "data: {json}\n\n"; the stream ends with "data: [DONE]\n\n".
class ResponseWriter {
 public:
  ResponseWriter(Endpoint endpoint, std::string model, uint64_t serial, int64_t created);
  std::string completion(const std::string& text, const RequestResult& r) const;
  std::string first_event() const;  // chat: the assistant's role; completions: nothing
  std::string text_event(std::string_view text) const;
  // The finish_reason chunk, with ferry's timings (prompt and generation tokens/s) beside it;
  // with include_usage, then the usage chunk (no choices), and [DONE].
  std::string last_events(const RequestResult& r, bool include_usage) const;
  std::string error_event(const ApiError& e) const;

 private:
  nlohmann::json chunk(nlohmann::json choice) const;

  Endpoint endpoint_;
  std::string model_, id_;
  int64_t created_;
};

}  // namespace ferry
