#include "server/http_server.hpp"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "server/chat_page.hpp"  // generated at build time from server/chat_page.html

namespace ferry {
namespace {

using namespace std::chrono_literals;

// A request's output between the scheduler's thread (which writes) and its connection's thread
// (which waits, then sends what came). Each on_text is kept as its own piece, so a stream sends
// one event per piece as OpenAI's does, however many pieces came between two polls (a small model
// on the AVX-512 kernels made all of a 16-token reply before the first poll, which then went out
// as one event).
class StreamBuffer : public RequestSink {
 public:
  void on_text(std::string_view text, int32_t) override {
    std::lock_guard lock(mu_);
    pending_.emplace_back(text);
    cv_.notify_all();
  }
  void on_done(const RequestResult& r) override {
    std::lock_guard lock(mu_);
    result_ = r;
    done_ = true;
    cv_.notify_all();
  }
  // Waits up to `wait` for text or the end; appends the pieces that came to `pieces`. True once
  // the request is done and all its text taken.
  bool take(std::vector<std::string>& pieces, std::chrono::milliseconds wait) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, wait, [&] { return done_ || !pending_.empty(); });
    for (std::string& p : pending_) pieces.push_back(std::move(p));
    pending_.clear();
    return done_;
  }
  RequestResult result() {
    std::lock_guard lock(mu_);
    return result_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> pending_;
  RequestResult result_;
  bool done_ = false;
};

// How long a connection thread waits for output before it checks that its client is still there
// (a queued request writes nothing for as long as it waits).
constexpr auto kPoll = 200ms;
constexpr int kIdlePolls = 5;  // 1 s

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_json(e), "application/json");
  if (e.status == 503) res.set_header("Retry-After", "1");
}

// What a request refused by the scheduler or cut short by it gets.
ApiError unavailable(const std::string& why) {
  return ApiError(503, "server_error", "unavailable", why + "; retry later");
}

ApiError ended_early(const RequestResult& r) {
  if (!r.error.empty())
    return ApiError(500, "server_error", "", "the model failed on this request: " + r.error);
  return unavailable("the server stopped before the reply was complete");
}

// Runs a handler, answering its exceptions as OpenAI would.
template <class F>
void guarded(httplib::Response& res, F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const QueueFull& e) {
    send_error(res, unavailable(e.what()));
  } catch (const Error& e) {
    send_error(res, ApiError(400, "invalid_request_error", "", e.what()));
  }
}

// Compares in time that depends on the key's length only, not on where a guess goes wrong.
bool same_secret(std::string_view given, std::string_view key) {
  unsigned char diff = given.size() != key.size();
  for (size_t i = 0; i < key.size(); ++i)
    diff |= static_cast<unsigned char>((i < given.size() ? given[i] : 0) ^ key[i]);
  return diff == 0;
}

uint64_t mix(uint64_t x) {  // splitmix64: distinct seeds from consecutive serials
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

HttpServer::HttpServer(ServerOptions o)
    : o_(std::move(o)),
      http_(std::make_unique<httplib::Server>()),
      seed_base_(std::random_device()()) {
  const unsigned threads = o_.connection_threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(o_.body_limit);
  if (!o_.cors_origin.empty())
    http_->set_default_headers(
        {{"Access-Control-Allow-Origin", o_.cors_origin}, {"Vary", "Origin"}});
  routes();
}

HttpServer::~HttpServer() {
  stop();
}

int HttpServer::start() {
  const int port = o_.port == 0 ? http_->bind_to_any_port(o_.host)
                                : (http_->bind_to_port(o_.host, o_.port) ? o_.port : -1);
  if (port <= 0)
    throw Error(
        fmt::format("cannot listen on {}:{}: the port is in use or the address is not "
                    "this machine's; choose another --port or --host",
                    o_.host, o_.port));
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return port;
}

void HttpServer::attach(Scheduler& scheduler, ServedModel model) {
  model_ = std::move(model);
  scheduler_.store(&scheduler, std::memory_order_release);
}

void HttpServer::stop() {
  stopping_ = true;
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

bool HttpServer::authorized(const std::string& header) const {
  if (o_.api_key.empty()) return true;
  const std::string_view prefix = "Bearer ";
  if (!header.starts_with(prefix)) return false;
  return same_secret(std::string_view(header).substr(prefix.size()), o_.api_key);
}

Scheduler* HttpServer::ready(httplib::Response& res) const {
  Scheduler* s = scheduler_.load(std::memory_order_acquire);
  if (!s)
    send_error(res, ApiError(503, "server_error", "model_loading",
                             "the model is still loading; retry in a moment"));
  return s;
}

void HttpServer::routes() {
  httplib::Server& h = *http_;
  h.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // The page and the health check are open; everything that runs or describes the model, not.
    if (req.method == "OPTIONS" || req.path == "/" || req.path == "/health" ||
        authorized(req.get_header_value("Authorization")))
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, "authentication_error", "invalid_api_key",
                             "a valid API key is needed: send 'Authorization: Bearer KEY' with "
                             "the key given to ferry serve --api-key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  h.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      send_error(res, ApiError(413, "invalid_request_error", "request_too_large",
                               "the request body is larger than the server's limit"));
    else if (res.status == 404)
      send_error(res, ApiError(404, "invalid_request_error", "not_found",
                               fmt::format("no route for {} {}", req.method, req.path)));
    else
      send_error(res, ApiError(res.status, "invalid_request_error", "", "the request was refused"));
  });
  h.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, "server_error", "", "internal error: " + what));
      });
  h.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    counters_.count(res.status);
  });
  if (!o_.cors_origin.empty())
    h.Options(".*", [](const httplib::Request&, httplib::Response& res) {
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Max-Age", "600");
    });

  h.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(kChatPage), "text/html; charset=utf-8");
  });
  h.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    Scheduler* s = scheduler_.load(std::memory_order_acquire);
    if (!s || stopping_) {
      res.status = 503;
      res.set_header("Retry-After", "1");
      res.set_content(fmt::format(R"({{"status":"{}"}})", s ? "stopping" : "loading"),
                      "application/json");
      return;
    }
    const SchedulerStats st = s->stats();
    // busy: every slot serves a request, so a new one waits in the queue
    res.set_content(
        fmt::format(R"({{"status":"{}","slots":{},"slots_used":{},"queued":{}}})",
                    st.active >= st.slots ? "busy" : "ok", st.slots, st.active, st.queued),
        "application/json");
  });
  h.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (Scheduler* s = ready(res))
      res.set_content(format_metrics(s->stats(), s->engine().cache_stats(), counters_),
                      "text/plain; version=0.0.4; charset=utf-8");
  });
  h.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    if (ready(res)) res.set_content(models_json(model_, std::time(nullptr)), "application/json");
  });
  h.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    if (Scheduler* s = ready(res))
      guarded(res,
              [&] { res.set_content(tokenize_json(req.body, s->engine()), "application/json"); });
  });
  h.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    if (Scheduler* s = ready(res))
      guarded(res,
              [&] { res.set_content(detokenize_json(req.body, s->engine()), "application/json"); });
  });
  h.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completions(Endpoint::chat, req.body, res);
  });
  h.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completions(Endpoint::completion, req.body, res);
  });
}

// One completion: parsed and submitted on this connection's thread, then either waited for
// (a whole response) or streamed chunk by chunk as the scheduler hands over text.
void HttpServer::completions(Endpoint endpoint, const std::string& body, httplib::Response& res) {
  Scheduler* s = ready(res);
  if (!s) return;
  guarded(res, [&] {
    if (stopping_) throw unavailable("the server is stopping");
    const uint64_t serial = ++serial_;
    ApiRequest a = parse_api_request(endpoint, body, s->engine(), model_, mix(seed_base_ + serial));
    auto buffer = std::make_shared<StreamBuffer>();
    const RequestId id = s->submit(std::move(a.request), buffer);
    const ResponseWriter writer(endpoint, model_.id, serial, std::time(nullptr));
    if (!a.stream) {
      std::vector<std::string> pieces;
      while (!buffer->take(pieces, kPoll)) {
      }
      std::string text;
      for (const std::string& p : pieces) text += p;
      const RequestResult r = buffer->result();
      if (r.reason == StopReason::cancelled) throw ended_early(r);
      res.set_content(writer.completion(text, r), "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: pass each event on at once
    struct Stream {
      bool started = false, finished = false;
      int idle = 0;  // polls in a row with nothing to send
    };
    auto st = std::make_shared<Stream>();
    const bool usage = a.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream",
        [=](size_t, httplib::DataSink& sink) {
          std::string out = st->started ? std::string() : writer.first_event();
          st->started = true;
          std::vector<std::string> pieces;
          const bool done = buffer->take(pieces, kPoll);
          for (const std::string& p : pieces) out += writer.text_event(p);
          if (done) {
            const RequestResult r = buffer->result();
            out += r.reason == StopReason::cancelled ? writer.error_event(ended_early(r))
                                                     : writer.last_events(r, usage);
          }
          // A queued request sends nothing for a while: an SSE comment (which clients skip) every
          // kIdlePolls polls finds out whether its client is still there.
          st->idle = out.empty() ? st->idle + 1 : 0;
          if (st->idle == kIdlePolls) out = ":\n\n", st->idle = 0;
          // A client that left: the write fails and the releaser cancels the request, which the
          // scheduler then drops before its next step.
          if (!out.empty() && !sink.write(out.data(), out.size())) return false;
          if (done) {
            st->finished = true;
            sink.done();
          }
          return true;
        },
        [=](bool) {
          if (!st->finished) s->cancel(id);
        });
  });
}

}  // namespace ferry
