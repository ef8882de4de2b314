// Many requests on one Engine: a queue, and a step loop that serves the requests in its slots.
// `ferry serve` and `ferry run --parallel` submit requests here; each request has its own
// sampling, stop strings, token limit and cancellation, and its text comes back through its sink
// as it becomes final. The slots are the engine's KV cache slots (EngineOptions::parallel): up to
// that many requests run at once, continuously batched (a request joins as soon as a slot is
// free and leaves when it ends); each step runs one forward pass over every running request's
// next token and the chunks of prompts still in prefill, at most the engine's batch() tokens.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/error.hpp"
#include "runtime/engine.hpp"
#include "runtime/generate.hpp"
#include "runtime/sampler.hpp"

namespace ferry {

using RequestId = uint64_t;

struct Request {
  std::vector<int32_t> prompt;  // token ids, BOS included where the model wants one
  uint64_t max_tokens = 128;
  SamplerOptions sampling;                // this request's temperature, top-p, top-k, seed
  std::vector<std::string> stop_strings;  // matched on the decoded text, never streamed
  std::vector<int32_t> stop_ids;          // EOS and end-of-turn ids (eos_token_ids())
};

struct RequestResult {
  StopReason reason = StopReason::max_tokens;
  uint64_t prompt_tokens = 0, generated = 0;
  double queued_seconds = 0;    // submit() to the first step that evaluated its prompt
  double prompt_seconds = 0;    // its prompt's evaluation
  double generate_seconds = 0;  // first sampled token to the last
  std::string error;            // non-empty when the request failed (reason is then cancelled)
};

// Where a request's output goes. Called on the scheduler's thread: keep it short (queue the text
// for a socket, print it); never call the scheduler back from inside, except cancel().
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  // Text that is final (whole UTF-8 characters; a possible stop string is held back), and the
  // id of the token that completed it (-1 for the flush at the end).
  virtual void on_text(std::string_view text, int32_t token) = 0;
  // Exactly once per accepted request, after its last on_text().
  virtual void on_done(const RequestResult& result) = 0;
};

struct SchedulerOptions {
  uint64_t queue_limit = 64;  // requests waiting for a slot; submit() refuses beyond it
};

// A snapshot for /metrics and `bench --parallel`, consistent with itself.
struct SchedulerStats {
  uint64_t slots = 0, active = 0, queued = 0;
  uint64_t submitted = 0, finished = 0, cancelled = 0, rejected = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0;
  uint64_t steps = 0;        // forward passes the loop ran
  uint64_t step_tokens = 0;  // tokens those passes ran (decode and prompt): / steps = batch size
  double busy_seconds = 0;
};

// submit() when the queue is full: the server answers 503 with Retry-After.
class QueueFull : public Error {
 public:
  using Error::Error;
};

class Scheduler {
 public:
  Scheduler(Engine& engine, SchedulerOptions o = {});
  ~Scheduler();  // stop(0)
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Throws QueueFull when queue_limit requests wait, and ferry::Error (naming
  // --ctx) when its prompt leaves no room in a slot's context or holds an id outside the
  // vocabulary: a refused request never reaches the sink.
  RequestId submit(Request r, std::shared_ptr<RequestSink> sink);
  // Ends a request before the next step (queued or running); its sink gets on_done(cancelled).
  // An unknown or finished id is ignored.
  void cancel(RequestId id);

  // Either drive the loop from this thread until every request is done (`ferry run -f`)...
  void run_until_idle();
  // ...or run it on a thread of its own (`ferry serve`). stop() refuses new requests, lets the
  // running ones go on for up to `grace`, cancels what is left, and joins.
  void start();
  void stop(std::chrono::milliseconds grace);

  SchedulerStats stats() const;
  Engine& engine() { return engine_; }

 private:
  struct Entry;
  bool step();  // one forward pass over the slots; false when there was nothing to do
  void loop();
  void admit(std::vector<std::shared_ptr<Entry>>& dropped);
  void plan_step(std::vector<std::shared_ptr<Entry>>& running);
  int32_t choose(Entry& e, size_t i, bool device_argmax);
  std::optional<StopReason> accept(Entry& e, int32_t next);
  void finish(const std::shared_ptr<Entry>& e, StopReason reason);

  Engine& engine_;
  SchedulerOptions o_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Entry>> queue_;
  std::vector<std::shared_ptr<Entry>> running_;  // in their slots
  std::vector<uint64_t> free_slots_;
  // The step loop's own state (one thread at a time runs step()), sized at construction:
  std::vector<float> logits_;                    // [slots, vocab] each stepped sequence's row
  std::vector<int32_t> argmax_;                  // [slots] the device's greedy choices
  std::vector<SeqChunk> chunks_;                 // [<= slots] the step's chunks
  std::vector<std::shared_ptr<Entry>> stepped_;  // [<= slots] their requests, in chunk order
  uint64_t rotate_ = 0;                          // where the next step starts its round
  SchedulerStats stats_;
  RequestId next_id_ = 1;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point deadline_;  // stop(): cancel what runs past it
  std::thread thread_;
};

}  // namespace ferry
