// ferry serve MODEL.ferry: an OpenAI-compatible HTTP server with a web chat page at /. It listens
// before the model loads (/health says "loading" meanwhile), serves until SIGINT or SIGTERM, then
// refuses new requests, lets the running ones finish for up to --grace seconds, cancels the rest,
// and exits 0.
#include <pthread.h>

#include <csignal>
#include <cstdio>

#include <fmt/format.h>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/generate.hpp"
#include "runtime/scheduler.hpp"
#include "server/http_server.hpp"
#include "tools/commands.hpp"

namespace ferry {
namespace {

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

std::string meta_text(const PackedFile& f, const char* key) {
  const auto it = f.file.metadata().find(key);
  return it == f.file.metadata().end() ? std::string() : it->second;
}

// The model as the endpoints name and use it: its chat template (none for a base model without
// one: /v1/chat/completions then says so) and the ids that end a reply.
ServedModel served_model(const Engine& e, const std::string& path, const cxxopts::ParseResult& a) {
  ServedModel m;
  m.id = std::filesystem::path(path).stem().string();
  std::optional<ChatFormat> forced;
  if (a.count("template")) {
    forced = parse_chat_format(a["template"].as<std::string>());
    if (!forced)
      throw Error("--template: '" + a["template"].as<std::string>() +
                  "' is not a chat format; choose chatml, llama3 or deepseek-r1");
  }
  const std::string config = meta_text(e.file(), meta::kTokenizerConfig);
  try {
    m.chat = load_chat_template(config, meta_text(e.file(), meta::kChatTemplate), forced);
  } catch (const Error& err) {
    std::fprintf(stderr, "ferry serve: /v1/chat/completions is off: %s\n", err.what());
  }
  m.stop_ids = eos_token_ids(e);
  if (m.chat)
    for (const std::string& t : chat_stop_tokens(*m.chat))
      if (const int32_t id = e.tokenizer().token_to_id(t); id >= 0) m.stop_ids.push_back(id);
  return m;
}

ServerOptions server_options(const cxxopts::ParseResult& a, uint64_t parallel, uint64_t queue) {
  ServerOptions s;
  s.host = a["host"].as<std::string>();
  const int port = a["port"].as<int>();
  if (port < 0 || port > 65535)
    throw Error(fmt::format("--port: {} is not from 1 to 65535 (or 0: any free port)", port));
  s.port = port;
  if (a.count("api-key")) {
    s.api_key = a["api-key"].as<std::string>();
    if (s.api_key.empty()) throw Error("--api-key: the key is empty; give one, or leave it out");
  }
  if (a.count("cors")) s.cors_origin = a["cors"].as<std::string>();
  s.body_limit = parse_size(a["body-limit"].as<std::string>(), "--body-limit");
  // every running and queued streaming client holds a connection thread, plus a few for
  // /health, /metrics and clients being refused
  s.connection_threads = unsigned(parallel + queue + 8);
  return s;
}

}  // namespace

int cmd_serve(int argc, char** argv) {
  cxxopts::Options o("ferry serve",
                     "Serve a .ferry model over HTTP: the OpenAI API (/v1/chat/completions, "
                     "/v1/completions, /v1/models), /health, /metrics, and a chat page at /.");
  o.positional_help("MODEL.ferry");
  add_engine_options(o);
  o.add_options()("host", "address to listen on (0.0.0.0: every interface)",
                  cxxopts::value<std::string>()->default_value("127.0.0.1"))(
      "port", "TCP port (0: any free one, printed on stderr)",
      cxxopts::value<int>()->default_value("8080"))(
      "parallel", "requests served at once (KV slots of --ctx tokens each)",
      cxxopts::value<uint64_t>()->default_value("4"))(
      "queue", "requests that may wait for a slot; beyond them: 503 with Retry-After",
      cxxopts::value<uint64_t>()->default_value("64"))(
      "api-key", "require 'Authorization: Bearer KEY' (the page and /health stay open)",
      cxxopts::value<std::string>())(
      "cors", "allow browser pages from this origin (e.g. http://localhost:3000, or *)",
      cxxopts::value<std::string>())("body-limit", "largest request body; larger ones get 413",
                                     cxxopts::value<std::string>()->default_value("8M"))(
      "grace", "on SIGINT/SIGTERM: seconds running requests may take to finish",
      cxxopts::value<double>()->default_value("5"))(
      "template", "chat format: chatml, llama3 or deepseek-r1 (default: the model's)",
      cxxopts::value<std::string>())("h,help", "this help");
  o.parse_positional({"model"});
  const auto a = parse_command(o, argc, argv);
  if (a.count("help")) return std::puts(o.help().c_str()), 0;

  EngineOptions eo = engine_options(a);
  eo.parallel = a["parallel"].as<uint64_t>();
  if (eo.parallel < 1) throw Error("--parallel: give at least 1");
  const uint64_t queue = a["queue"].as<uint64_t>();
  const double grace = a["grace"].as<double>();
  if (!(grace >= 0)) throw Error("--grace: give a number of seconds, 0 or more");

  // SIGINT and SIGTERM are taken by sigwait below: blocked before any thread starts, so that
  // every thread inherits the mask. A shell starts a background job with SIGINT ignored, and an
  // ignored signal is discarded before sigwait can see it: both are set back to the default
  // first (blocked, the default never runs). A client gone mid-write must not kill the server
  // (SIGPIPE).
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  const sigset_t signals = stop_signals();
  if (pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0)
    throw Error("cannot set up SIGINT/SIGTERM handling (pthread_sigmask failed)");
  std::signal(SIGPIPE, SIG_IGN);

  HttpServer server(server_options(a, eo.parallel, queue));
  const int port = server.start();
  std::fprintf(stderr, "ferry serve: listening on http://%s:%d/ (loading %s)\n",
               a["host"].as<std::string>().c_str(), port, eo.model.c_str());
  Engine e(eo);
  warn_about_context(e);
  Scheduler scheduler(e, {.queue_limit = queue});
  scheduler.start();
  server.attach(scheduler, served_model(e, eo.model.string(), a));
  std::fprintf(stderr,
               "ferry serve: ready: %llu slots of %llu tokens; open http://%s:%d/ or call "
               "/v1/chat/completions; Ctrl-C stops\n",
               (unsigned long long)e.parallel(), (unsigned long long)e.ctx(),
               a["host"].as<std::string>().c_str(), port);

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  const SchedulerStats st = scheduler.stats();
  std::fprintf(stderr, "ferry serve: %s: stopping (%llu running, %llu queued; up to %.1f s)\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)st.active,
               (unsigned long long)st.queued, grace);
  server.stopping();
  scheduler.stop(std::chrono::milliseconds(int64_t(grace * 1000)));
  server.stop();
  const SchedulerStats end = scheduler.stats();
  std::fprintf(
      stderr, "ferry serve: stopped: %llu requests served, %llu cancelled, %llu tokens generated\n",
      (unsigned long long)end.finished, (unsigned long long)end.cancelled,
      (unsigned long long)end.generated_tokens);
  return 0;
}

}  // namespace ferry
