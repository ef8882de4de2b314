#include "runtime/scheduler.hpp"

#include <algorithm>
#include <atomic>

#include <fmt/format.h>

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// One request in the queue or in a slot: its sequence, sampler and the text state of its stream.
struct Scheduler::Entry {
  Entry(RequestId id_, Request r, std::shared_ptr<RequestSink> s, const Engine& e)
      : id(id_),
        req(std::move(r)),
        sink(std::move(s)),
        sampler(req.sampling, e.config().vocab),
        decoder(e.tokenizer()),
        filter(req.stop_strings),
        context(req.prompt) {}
  RequestId id;
  Request req;
  std::shared_ptr<RequestSink> sink;
  Sampler sampler;
  StreamDecoder decoder;
  StopStringFilter filter;
  std::vector<int32_t> context;      // prompt, then every sampled token
  uint64_t evaluated = 0;            // tokens of `context` in the KV cache
  std::atomic<bool> cancel = false;  // set by cancel() on any thread
  RequestResult result;
  Clock::time_point submitted = Clock::now(), started, first_token;
};

Scheduler::Scheduler(Engine& engine, SchedulerOptions o) : engine_(engine), o_(o) {
  stats_.slots = 1;
}

Scheduler::~Scheduler() {
  stop(std::chrono::milliseconds(0));
}

RequestId Scheduler::submit(Request r, std::shared_ptr<RequestSink> sink) {
  if (r.prompt.empty()) throw Error("the request has no prompt tokens");
  if (r.prompt.size() >= engine_.ctx())
    throw Error(Setting::ctx, fmt::format("the prompt ({} tokens) leaves no room in the context "
                                          "of {} tokens; shorten it or raise the context",
                                          r.prompt.size(), engine_.ctx()));
  for (int32_t id : r.prompt)
    if (id < 0 || uint64_t(id) >= engine_.config().vocab)
      throw Error(
          fmt::format("token id {} is outside the vocabulary of {}", id, engine_.config().vocab));
  std::lock_guard lock(mu_);
  if (stopping_) throw QueueFull("the server is stopping");
  if (queue_.size() >= o_.queue_limit) {
    ++stats_.rejected;
    throw QueueFull(
        fmt::format("{} requests are waiting, the most the queue holds", queue_.size()));
  }
  const RequestId id = next_id_++;
  queue_.push_back(std::make_shared<Entry>(id, std::move(r), std::move(sink), engine_));
  ++stats_.submitted;
  stats_.queued = queue_.size();
  wake_.notify_all();
  return id;
}

void Scheduler::cancel(RequestId id) {
  std::lock_guard lock(mu_);
  for (auto& e : queue_)
    if (e->id == id) e->cancel = true;
  for (auto& e : running_)
    if (e->id == id) e->cancel = true;
  wake_.notify_all();
}

// Takes what the queue holds into the free slot; requests cancelled while queued come back in
// `dropped` to be finished without running.
std::shared_ptr<Scheduler::Entry> Scheduler::fill_slot(
    std::vector<std::shared_ptr<Entry>>& dropped) {
  std::lock_guard lock(mu_);
  while (running_.empty() && !queue_.empty()) {
    auto next = queue_.front();
    queue_.pop_front();
    (next->cancel ? dropped : running_).push_back(next);
  }
  stats_.queued = queue_.size();
  stats_.active = running_.size();
  return running_.empty() ? nullptr : running_.front();
}

// Ends a request: its sink hears the result once, and its slot is free for the next step.
void Scheduler::finish(const std::shared_ptr<Entry>& e, StopReason reason) {
  e->result.reason = reason;
  if (e->started != Clock::time_point{})
    e->result.generate_seconds = seconds_between(e->first_token, Clock::now());
  if (e->result.error.empty() && reason != StopReason::stop_string)
    e->sink->on_text(e->filter.push(e->decoder.flush()) + e->filter.flush(), -1);
  e->sink->on_done(e->result);
  std::lock_guard lock(mu_);
  std::erase(running_, e);
  ++stats_.finished;
  if (reason == StopReason::cancelled) ++stats_.cancelled;
  stats_.active = running_.size();
}

// Appends a chosen token to the request's sequence and streams its text; returns the reason the
// request ends with it, if it does.
std::optional<StopReason> Scheduler::accept(Entry& e, int32_t next) {
  const auto& stops = e.req.stop_ids;
  if (std::find(stops.begin(), stops.end(), next) != stops.end()) return StopReason::eos;
  e.context.push_back(next);
  ++e.result.generated;
  {
    std::lock_guard lock(mu_);
    ++stats_.generated_tokens;
  }
  e.sink->on_text(e.filter.push(e.decoder.push(next)), next);
  if (e.filter.found()) return StopReason::stop_string;
  if (e.result.generated == e.req.max_tokens) return StopReason::max_tokens;
  if (e.context.size() == engine_.ctx()) return StopReason::context_full;
  return std::nullopt;
}

// One forward pass for the request in the slot: its prompt (in prefill batches) the first time,
// then its last token; the token chosen from the pass's logits is accepted at once.
bool Scheduler::step() {
  std::vector<std::shared_ptr<Entry>> dropped;
  const std::shared_ptr<Entry> e = fill_slot(dropped);
  for (auto& d : dropped) {
    d->result.reason = StopReason::cancelled;
    d->sink->on_done(d->result);
    std::lock_guard lock(mu_);
    ++stats_.cancelled, ++stats_.finished;
  }
  if (!e) return !dropped.empty();
  if (e->cancel) return finish(e, StopReason::cancelled), true;

  const auto t0 = Clock::now();
  try {
    const bool greedy = e->sampler.plain_greedy();
    const bool prefill = e->evaluated == 0;
    const std::span<const int32_t> tokens =
        prefill ? std::span<const int32_t>(e->context) : std::span(&e->context.back(), 1);
    if (prefill) {
      e->started = t0;
      e->result.queued_seconds = seconds_between(e->submitted, t0);
      e->result.prompt_tokens = tokens.size();
    }
    int32_t next = greedy ? engine_.eval_greedy(tokens, e->evaluated) : -1;
    if (!greedy) engine_.eval(tokens, e->evaluated);
    e->evaluated = e->context.size();
    if (!greedy) next = e->sampler.sample(engine_.logits(), e->context);
    if (prefill) {
      e->first_token = Clock::now();
      e->result.prompt_seconds = seconds_between(t0, e->first_token);
    }
    {
      std::lock_guard lock(mu_);
      ++stats_.steps;
      if (prefill) stats_.prompt_tokens += tokens.size();
      stats_.busy_seconds += seconds_between(t0, Clock::now());
    }
    if (const auto reason = accept(*e, next)) finish(e, *reason);
  } catch (const std::exception& ex) {
    e->result.error = ex.what();
    finish(e, StopReason::cancelled);
  }
  return true;
}

void Scheduler::run_until_idle() {
  while (step()) {
  }
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || !running_.empty(); });
      if (stopping_ && queue_.empty() && running_.empty()) return;
      if (stopping_ && Clock::now() >= deadline_) {
        for (auto& e : queue_) e->cancel = true;
        for (auto& e : running_) e->cancel = true;
      }
    }
    step();
  }
}

void Scheduler::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Scheduler::stop(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    deadline_ = Clock::now() + grace;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace ferry
