// The HTTP server in-process on a loopback port, over a synthesized qwen2-tiny model (ChatML
// template, random weights), called with httplib's client: completions whole and streamed give
// exactly generate()'s greedy text for the same rendered prompt, with the right usage; stop
// strings; every error status; concurrent requests; a client that leaves frees its slot;
// /metrics agrees with what the clients counted.
#include <gtest/gtest.h>

#include <httplib.h>

#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "format/packed_file.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/generate.hpp"
#include "server/http_server.hpp"

namespace ferry {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr uint64_t kCtx = 256;
const httplib::Headers kAuth = {{"Authorization", "Bearer sesame"}};

std::shared_ptr<MappedFile> tiny_image() {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  return synth_packed_image(so, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {});
}

EngineOptions engine_options(uint64_t parallel) {
  return {.model = {}, .ctx = kCtx, .batch = 16, .parallel = parallel, .threads = 1};
}

ServedModel served(const Engine& e) {
  const auto& meta = e.file().file.metadata();
  return {.id = "tiny",
          .chat = match_chat_template(meta.at(meta::kTokenizerConfig)),
          .stop_ids = eos_token_ids(e)};
}

// Text as the server's JSON carries it: bytes that are not UTF-8 (a random model's output can
// end inside a character) replaced, as the server replaces them.
std::string as_json_text(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace))
      .get<std::string>();
}

ServerOptions server_options() {
  ServerOptions o;
  o.port = 0;
  o.api_key = "sesame";
  o.body_limit = 16384;
  return o;
}

// A server with its own engine and scheduler, on a free loopback port.
struct Served {
  explicit Served(uint64_t parallel = 2, uint64_t queue = 64, bool attach = true)
      : image(tiny_image()),
        engine(PackedFile::from_mapping(image), engine_options(parallel)),
        scheduler(engine, {.queue_limit = queue}),
        server(server_options()),
        port(server.start()),
        client("127.0.0.1", port) {
    client.set_read_timeout(120);
    scheduler.start();
    if (attach) server.attach(scheduler, served(engine));
  }
  ~Served() {
    server.stopping();
    scheduler.stop(0ms);
    server.stop();
  }
  httplib::Result post(const std::string& path, const json& body) {
    return client.Post(path.c_str(), kAuth, body.dump(), "application/json");
  }

  // What generate() gives alone for these prompt ids, on a fresh engine.
  std::pair<std::string, GenerateStats> greedy(const std::vector<int32_t>& prompt,
                                               uint64_t max_tokens,
                                               std::vector<std::string> stops = {}) {
    Engine e(PackedFile::from_mapping(image), engine_options(1));
    Sampler s({}, e.config().vocab);
    std::vector<int32_t> context = prompt;
    uint64_t evaluated = 0;
    std::string out;
    const GenerateOptions g{
        .max_tokens = max_tokens, .stop_strings = std::move(stops), .stop_ids = eos_token_ids(e)};
    const GenerateStats st =
        generate(e, s, context, evaluated, g, [&](std::string_view t) { out += t; });
    return {as_json_text(out), st};
  }
  std::vector<int32_t> chat_prompt(const std::string& user) {
    const std::vector<ChatMessage> m = {{"user", user}};
    return engine.tokenizer().encode(render_messages(*served(engine).chat, m), false);
  }

  std::shared_ptr<MappedFile> image;
  Engine engine;
  Scheduler scheduler;
  HttpServer server;
  int port;
  httplib::Client client;
};

json chat_body(const std::string& user, uint64_t max_tokens) {
  return {{"model", "tiny"},
          {"messages", {{{"role", "user"}, {"content", user}}}},
          {"max_tokens", max_tokens},
          {"temperature", 0}};
}

// The events of an SSE body, as JSON ("[DONE]" as a string); comment lines skipped.
std::vector<json> events(const std::string& body) {
  std::vector<json> out;
  size_t at = 0;
  while (at < body.size()) {
    size_t end = body.find("\n\n", at);
    if (end == std::string::npos) end = body.size();
    const std::string e = body.substr(at, end - at);
    at = end + 2;
    if (e.starts_with("data: [DONE]"))
      out.push_back("[DONE]");
    else if (e.starts_with("data: "))
      out.push_back(json::parse(e.substr(6)));
  }
  return out;
}

// A streamed request; `receive` sees each piece of the body and may return false to hang up.
struct Streamed {
  int status = 0;
  std::string body;
};
Streamed stream(int port, const json& body,
                const std::function<bool(const std::string&)>& keep_going = nullptr) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120);
  httplib::Request req;
  req.method = "POST";
  req.path = body.contains("messages") ? "/v1/chat/completions" : "/v1/completions";
  req.headers = kAuth;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  Streamed out;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    out.body.append(data, n);
    return !keep_going || keep_going(out.body);
  };
  const httplib::Result r = c.send(req);
  if (r) out.status = r->status;
  return out;
}

TEST(Server, ChatCompletionEqualsGreedyGenerate) {
  Served s;
  const auto r = s.post("/v1/chat/completions", chat_body("Hello there", 12));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  const auto prompt = s.chat_prompt("Hello there");
  const auto [text, st] = s.greedy(prompt, 12);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], st.reason == StopReason::eos ? "stop" : "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], st.generated);
  EXPECT_EQ(j["usage"]["total_tokens"], prompt.size() + st.generated);
}

TEST(Server, StreamedChatEqualsGreedyGenerate) {
  Served s;
  json body = chat_body("Tell me a story", 20);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const Streamed got = stream(s.port, body);
  ASSERT_EQ(got.status, 200) << got.body;
  const std::vector<json> ev = events(got.body);
  ASSERT_GE(ev.size(), 4u) << got.body;
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (size_t i = 0; i + 3 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    text += ev[i]["choices"][0]["delta"].value("content", "");
  }
  const auto prompt = s.chat_prompt("Tell me a story");
  const auto [expected, st] = s.greedy(prompt, 20);
  EXPECT_EQ(text, expected);
  const json& finish = ev[ev.size() - 3];
  EXPECT_EQ(finish["choices"][0]["finish_reason"],
            st.reason == StopReason::eos ? "stop" : "length");
  const json& usage = ev[ev.size() - 2];
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(usage["usage"]["completion_tokens"], st.generated);
  EXPECT_EQ(ev.back(), "[DONE]");
}

TEST(Server, CompletionOfARawPromptEqualsGreedyGenerate) {
  Served s;
  const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 10}, {"temperature", 0}};
  const auto r = s.post("/v1/completions", body);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  const auto [text, st] = s.greedy(s.engine.tokenizer().encode("Once upon a time", true), 10);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], text);
  EXPECT_EQ(j["usage"]["completion_tokens"], st.generated);
  // streamed: the same text in pieces
  json sb = body;
  sb["stream"] = true;
  std::string streamed;
  for (const json& e : events(stream(s.port, sb).body))
    if (e.is_object() && !e["choices"].empty())
      streamed += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed, text);
}

TEST(Server, StopStringEndsTheReplyBeforeIt) {
  Served s;
  const auto prompt = s.chat_prompt("Hello there");
  const std::string full = s.greedy(prompt, 24).first;
  // a stop string from the middle of the reply: two ASCII characters after the first six bytes
  size_t at = 6;
  while (at + 2 < full.size() && (uint8_t(full[at]) >= 0x80 || uint8_t(full[at + 1]) >= 0x80)) ++at;
  ASSERT_LT(at + 2, full.size()) << "no ASCII pair in the reply: " << full;
  const std::string stop = full.substr(at, 2);
  json body = chat_body("Hello there", 24);
  body["stop"] = json::array({"never appears", stop});
  const auto r = s.post("/v1/chat/completions", body);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], full.substr(0, full.find(stop)));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  // a single string is taken too, and streamed replies hold the stop string back as well
  body["stop"] = stop;
  body["stream"] = true;
  std::string text;
  for (const json& e : events(stream(s.port, body).body))
    if (e.is_object() && !e["choices"].empty())
      text += e["choices"][0]["delta"].value("content", "");
  EXPECT_EQ(text, full.substr(0, full.find(stop)));
}

// Status, error type, code and param of a refused request.
void expect_error(const httplib::Result& r, int status, const std::string& code,
                  const std::string& param = "") {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r->body;
  EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  EXPECT_TRUE(j["error"]["type"].is_string());
  EXPECT_EQ(j["error"]["code"], code.empty() ? json() : json(code)) << r->body;
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << r->body;
  }
}

TEST(Server, RefusesBadRequestsWithOpenAIErrors) {
  Served s;
  auto& c = s.client;
  expect_error(c.Post("/v1/chat/completions", kAuth, "{not json", "application/json"), 400, "");
  expect_error(c.Post("/v1/chat/completions", kAuth, "[1,2]", "application/json"), 400, "");
  json b = chat_body("hi", 4);
  b["temperature"] = "hot";
  expect_error(s.post("/v1/chat/completions", b), 400, "", "temperature");
  b = chat_body("hi", 4);
  b["n"] = 2;
  expect_error(s.post("/v1/chat/completions", b), 400, "", "n");
  b = chat_body("hi", 4);
  b["stop"] = 7;
  expect_error(s.post("/v1/chat/completions", b), 400, "", "stop");
  b = chat_body("hi", 4);
  b["messages"][0]["role"] = "tool";
  expect_error(s.post("/v1/chat/completions", b), 400, "", "messages[0].role");
  b = chat_body("hi", 4);
  b["stream_options"] = {{"include_usage", true}};  // without stream
  expect_error(s.post("/v1/chat/completions", b), 400, "", "stream_options");
  b = chat_body("hi", 4);
  b["max_tokens"] = -3;
  expect_error(s.post("/v1/chat/completions", b), 400, "", "max_tokens");
  std::string longer;
  for (int i = 0; i < 600; ++i) longer += "word ";
  expect_error(s.post("/v1/chat/completions", chat_body(longer, 4)), 400,
               "context_length_exceeded");
  expect_error(s.post("/v1/chat/completions", chat_body("hi", kCtx)), 400,
               "context_length_exceeded");
  expect_error(s.post("/v1/completions", {{"prompt", {1, 2, 999999}}}), 400, "", "prompt");
  // no key, a wrong key, a key one character short
  expect_error(c.Post("/v1/chat/completions", chat_body("hi", 4).dump(), "application/json"), 401,
               "invalid_api_key");
  for (const char* key : {"Bearer sesamE", "Bearer sesam", "sesame"})
    expect_error(c.Post("/v1/models", {{"Authorization", key}}, "", "application/json"), 401,
                 "invalid_api_key");
  expect_error(c.Get("/v1/models"), 401, "invalid_api_key");
  expect_error(c.Post("/v1/chat/completions", kAuth, std::string(20000, ' '), "application/json"),
               413, "request_too_large");
  expect_error(c.Get("/v1/nothing", kAuth), 404, "not_found");
  // none of it disturbed the server
  const auto ok = s.post("/v1/chat/completions", chat_body("hi", 4));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(s.scheduler.stats().submitted, 1u);
}

TEST(Server, FullQueueAnswers503WithRetryAfter) {
  Served s(1, 0);  // a queue of 0: every request is refused
  const auto r = s.post("/v1/chat/completions", chat_body("hi", 4));
  expect_error(r, 503, "unavailable");
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(s.scheduler.stats().rejected, 1u);
}

TEST(Server, HealthSaysLoadingUntilTheModelIsAttached) {
  Served s(1, 64, false);
  auto h = s.client.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body)["status"], "loading");
  expect_error(s.post("/v1/chat/completions", chat_body("hi", 4)), 503, "model_loading");
  s.server.attach(s.scheduler, served(s.engine));
  h = s.client.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");
  const auto page = s.client.Get("/");  // the page needs no key
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("</html>"), std::string::npos);
  const auto models = s.client.Get("/v1/models", kAuth);
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
}

TEST(Server, CorsHeadersOnlyWhenAskedFor) {
  ServerOptions o = server_options();
  o.cors_origin = "http://app.example";
  HttpServer with(o), without(server_options());
  httplib::Client a("127.0.0.1", with.start()), b("127.0.0.1", without.start());
  const auto preflight = a.Options("/v1/chat/completions");  // no key: browsers send none here
  ASSERT_TRUE(preflight);
  EXPECT_EQ(preflight->status, 204);
  EXPECT_EQ(preflight->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  EXPECT_NE(preflight->get_header_value("Access-Control-Allow-Headers").find("Authorization"),
            std::string::npos);
  const auto health = a.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  const auto plain = b.Get("/health");
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->has_header("Access-Control-Allow-Origin"));
  const auto no_preflight = b.Options("/v1/chat/completions", kAuth);
  ASSERT_TRUE(no_preflight);
  EXPECT_NE(no_preflight->status, 204);
}

TEST(Server, TokenizeAndDetokenizeRoundTrip) {
  Served s;
  const auto t = s.post("/tokenize", {{"content", "Hello world"}});
  ASSERT_TRUE(t);
  ASSERT_EQ(t->status, 200) << t->body;
  const json ids = json::parse(t->body)["tokens"];
  EXPECT_EQ(ids.get<std::vector<int32_t>>(), s.engine.tokenizer().encode("Hello world", false));
  const auto d = s.post("/detokenize", {{"tokens", ids}});
  ASSERT_TRUE(d);
  EXPECT_EQ(json::parse(d->body)["content"], "Hello world");
  expect_error(s.post("/detokenize", {{"tokens", "abc"}}), 400, "", "tokens");
}

TEST(Server, ConcurrentRequestsEachGetTheirSoloText) {
  Served s(3);
  const std::vector<std::pair<std::string, uint64_t>> asks = {
      {"one", 9},   {"two two", 17}, {"three three three", 5},
      {"four", 14}, {"five", 11},    {"six", 7}};
  std::vector<std::string> got(asks.size());
  std::vector<uint64_t> tokens(asks.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < asks.size(); ++i)
    clients.emplace_back([&, i] {
      json body = chat_body(asks[i].first, asks[i].second);
      if (i % 2) {  // half of them streamed
        body["stream"] = true;
        body["stream_options"] = {{"include_usage", true}};
        for (const json& e : events(stream(s.port, body).body)) {
          if (!e.is_object()) continue;
          if (e.contains("usage")) tokens[i] = e["usage"]["completion_tokens"];
          if (!e["choices"].empty()) got[i] += e["choices"][0]["delta"].value("content", "");
        }
      } else {
        httplib::Client c("127.0.0.1", s.port);
        c.set_read_timeout(120);
        const auto r = c.Post("/v1/chat/completions", kAuth, body.dump(), "application/json");
        if (r && r->status == 200) {
          const json j = json::parse(r->body);
          got[i] = j["choices"][0]["message"]["content"];
          tokens[i] = j["usage"]["completion_tokens"];
        }
      }
    });
  for (auto& t : clients) t.join();
  uint64_t total = 0;
  for (size_t i = 0; i < asks.size(); ++i) {
    const auto [text, st] = s.greedy(s.chat_prompt(asks[i].first), asks[i].second);
    EXPECT_EQ(got[i], text) << "request " << i;
    EXPECT_EQ(tokens[i], st.generated) << "request " << i;
    total += tokens[i];
  }
  // /metrics agrees with what the clients counted, once the scheduler has counted the last request
  // finished (its client has the reply just before): a bounded wait that only ends a hung run
  for (int i = 0; i < 600 && s.scheduler.stats().finished < asks.size(); ++i)
    std::this_thread::sleep_for(50ms);
  const auto m = s.client.Get("/metrics", kAuth);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  std::map<std::string, double> metric;
  std::istringstream lines(m->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    metric[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  EXPECT_EQ(metric["ferry_generated_tokens_total"], double(total));
  EXPECT_EQ(metric["ferry_requests_finished_total"], double(asks.size()));
  EXPECT_EQ(metric["ferry_kv_slots"], 3);
  EXPECT_EQ(metric["ferry_kv_slots_used"], 0);
  EXPECT_EQ(metric["ferry_queue_depth"], 0);
  EXPECT_GE(metric["ferry_http_responses_total{code=\"200\"}"], double(asks.size()));
}

TEST(Server, ClientThatLeavesMidStreamFreesItsSlot) {
  Served s(1);
  json body = chat_body("a long story", kCtx - 40);
  body["stream"] = true;
  // hang up as soon as the first words arrive (the second event: the first is the role's)
  const auto events_in = [](const std::string& b) {
    size_t n = 0;
    for (size_t at = b.find("data: "); at != std::string::npos; at = b.find("data: ", at + 1)) ++n;
    return n;
  };
  stream(s.port, body, [&](const std::string& b) { return events_in(b) < 2; });
  // the scheduler drops the request within a step of the failed write; wait for it (bounded)
  for (int i = 0; i < 600 && s.scheduler.stats().cancelled == 0; ++i)
    std::this_thread::sleep_for(50ms);
  const SchedulerStats st = s.scheduler.stats();
  EXPECT_EQ(st.cancelled, 1u);
  EXPECT_EQ(st.active, 0u);
  const auto solo = s.greedy(s.chat_prompt("a long story"), kCtx - 40).second;
  ASSERT_GT(solo.generated, 100u) << "the reply alone must outlast the hang-up";
  EXPECT_LT(st.generated_tokens, solo.generated);
  // the one slot serves the next request
  const auto r = s.post("/v1/chat/completions", chat_body("hi", 4));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

}  // namespace
}  // namespace ferry
