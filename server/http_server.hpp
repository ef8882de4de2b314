// `ferry serve`'s HTTP layer on cpp-httplib: the OpenAI-compatible routes, the web chat page at
// /, /health, /metrics, /tokenize and /detokenize; the API key, CORS and body-limit checks; and
// streaming, where each response's connection thread waits on its request's output and a client
// that leaves cancels its request. It only talks to the scheduler: the model runs elsewhere.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "runtime/scheduler.hpp"
#include "server/metrics.hpp"
#include "server/openai_api.hpp"

namespace httplib {
class Server;
struct Response;
}  // namespace httplib

namespace ferry {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (tests)
  std::string api_key;             // empty: no key asked; else "Authorization: Bearer KEY"
  std::string cors_origin;         // empty: no CORS headers; else Access-Control-Allow-Origin
  uint64_t body_limit = 8 << 20;   // bytes of a request body; larger ones get 413
  // Connection threads: each streaming client holds one for its whole reply, so at least the
  // slots plus the queue, or waiting clients are not even read.
  unsigned connection_threads = 16;
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions o);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and serves on a thread of its own; returns the port. Until attach() the API answers
  // 503 and /health says "loading". Throws ferry::Error when the address cannot be bound.
  int start();
  // The model is loaded: requests go to `scheduler` (which must outlive stop()).
  void attach(Scheduler& scheduler, ServedModel model);
  // /health says "stopping" and new requests get 503 (the caller then stops the scheduler).
  void stopping() { stopping_ = true; }
  // Stops accepting and waits for every connection's handler to return.
  void stop();

 private:
  void routes();
  void completions(Endpoint endpoint, const std::string& body, httplib::Response& res);
  Scheduler* ready(httplib::Response& res) const;  // nullptr (and a 503) before attach()
  bool authorized(const std::string& header) const;

  ServerOptions o_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::atomic<Scheduler*> scheduler_ = nullptr;  // set once by attach(), after model_
  ServedModel model_;
  std::atomic<bool> stopping_ = false;
  std::atomic<uint64_t> serial_ = 0;  // response ids and the seeds of unseeded requests
  uint64_t seed_base_;                // drawn at start: unseeded requests differ between runs
  HttpCounters counters_;
};

}  // namespace ferry
