#include "runtime/scheduler.hpp"

#include <algorithm>
#include <atomic>

#include <fmt/format.h>

#include "kernels/elementwise.hpp"

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
  uint64_t slot = 0;                 // its KV slot while it runs
  std::atomic<bool> cancel = false;  // set by cancel() on any thread
  RequestResult result;
  Clock::time_point submitted = Clock::now(), started, first_token;
};

Scheduler::Scheduler(Engine& engine, SchedulerOptions o)
    : engine_(engine),
      o_(o),
      logits_(engine.parallel() * engine.config().vocab),
      argmax_(engine.parallel()) {
  stats_.slots = engine.parallel();
  for (uint64_t s = engine.parallel(); s-- > 0;) free_slots_.push_back(s);
  chunks_.reserve(engine.parallel());
  stepped_.reserve(engine.parallel());
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

// Takes queued requests into free slots; requests cancelled while queued come back in `dropped`
// to be finished without running.
void Scheduler::admit(std::vector<std::shared_ptr<Entry>>& dropped) {
  std::lock_guard lock(mu_);
  while (!free_slots_.empty() && !queue_.empty()) {
    auto next = queue_.front();
    queue_.pop_front();
    if (next->cancel) {
      dropped.push_back(next);
      continue;
    }
    next->slot = free_slots_.back();
    free_slots_.pop_back();
    running_.push_back(next);
  }
  stats_.queued = queue_.size();
  stats_.active = running_.size();
}

// Ends a request: its sink hears the result once, and its slot is free for the next step.
void Scheduler::finish(const std::shared_ptr<Entry>& e, StopReason reason) {
  e->result.reason = reason;
  if (e->first_token != Clock::time_point{})
    e->result.generate_seconds = seconds_between(e->first_token, Clock::now());
  if (e->result.error.empty() && reason != StopReason::stop_string)
    e->sink->on_text(e->filter.push(e->decoder.flush()) + e->filter.flush(), -1);
  e->sink->on_done(e->result);
  std::lock_guard lock(mu_);
  if (std::erase(running_, e)) free_slots_.push_back(e->slot);
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

// The step's chunks, at most batch() tokens in all: first the next token of every decoding
// sequence (one each), then pieces of prompts still in prefill, in an order that rotates each
// step so that no sequence waits behind the same others twice.
void Scheduler::plan_step(std::vector<std::shared_ptr<Entry>>& running) {
  chunks_.clear();
  stepped_.clear();
  uint64_t budget = engine_.batch();
  const size_t count = running.size();
  for (int pass = 0; pass < 2; ++pass)
    for (size_t k = 0; k < count && budget > 0; ++k) {
      const std::shared_ptr<Entry>& e = running[(k + rotate_) % count];
      const uint64_t pending = e->context.size() - e->evaluated;
      if ((pass == 0) != (pending == 1) || e->cancel) continue;
      const uint64_t n = std::min(pending, budget);
      chunks_.push_back({.slot = e->slot,
                         .pos = e->evaluated,
                         .tokens = std::span(e->context).subspan(e->evaluated, n)});
      stepped_.push_back(e);
      budget -= n;
    }
  ++rotate_;
}

// The token a sequence whose chunk reached the end of its context goes on with: the device's
// choice (greedy steps), or its sampler's on its row of logits.
int32_t Scheduler::choose(Entry& e, size_t i, bool device_argmax) {
  if (device_argmax) return argmax_[i];
  const std::span<float> row(logits_.data() + i * engine_.config().vocab, engine_.config().vocab);
  if (e.sampler.plain_greedy()) {
    int32_t best = 0;
    argmax_cpu(row.data(), row.size(), &best);
    return best;
  }
  return e.sampler.sample(row, e.context);
}

// One forward pass over every running sequence's next chunk; each sequence whose chunk reached
// the end of its context takes its next token at once.
bool Scheduler::step() {
  std::vector<std::shared_ptr<Entry>> dropped, running;
  admit(dropped);
  for (auto& d : dropped) {
    d->result.reason = StopReason::cancelled;
    d->sink->on_done(d->result);
    std::lock_guard lock(mu_);
    ++stats_.cancelled, ++stats_.finished;
  }
  {
    std::lock_guard lock(mu_);
    running = running_;
  }
  for (auto& e : running)
    if (e->cancel) finish(e, StopReason::cancelled);
  std::erase_if(running, [](const auto& e) { return e->cancel.load(); });
  if (running.empty()) return !dropped.empty();

  plan_step(running);
  const auto t0 = Clock::now();
  bool all_greedy = true;
  uint64_t tokens = 0, prompt_tokens = 0;
  for (size_t i = 0; i < chunks_.size(); ++i) {
    Entry& e = *stepped_[i];
    tokens += chunks_[i].tokens.size();
    if (e.evaluated < e.req.prompt.size()) prompt_tokens += chunks_[i].tokens.size();
    if (e.evaluated == 0) {
      e.started = t0;
      e.result.queued_seconds = seconds_between(e.submitted, t0);
      e.result.prompt_tokens = e.req.prompt.size();
    }
    if (e.evaluated + chunks_[i].tokens.size() == e.context.size())
      all_greedy = all_greedy && e.sampler.plain_greedy();
  }
  try {
    engine_.eval_seqs(chunks_, logits_, all_greedy ? std::span(argmax_) : std::span<int32_t>());
  } catch (const std::exception& ex) {
    for (auto& e : stepped_) {
      e->result.error = ex.what();
      finish(e, StopReason::cancelled);
    }
    return true;
  }
  const auto t1 = Clock::now();
  {
    std::lock_guard lock(mu_);
    ++stats_.steps;
    stats_.prompt_tokens += prompt_tokens;
    stats_.busy_seconds += seconds_between(t0, t1);
    stats_.step_tokens += tokens;
  }
  for (size_t i = 0; i < chunks_.size(); ++i) {
    const std::shared_ptr<Entry> e = stepped_[i];
    const bool prefilling = e->evaluated < e->req.prompt.size();
    e->evaluated += chunks_[i].tokens.size();
    if (e->evaluated < e->context.size()) continue;  // more of its prompt next step
    if (prefilling) {
      e->first_token = t1;
      e->result.prompt_seconds = seconds_between(e->started, t1);
    }
    if (const auto reason = accept(*e, choose(*e, i, all_greedy))) finish(e, *reason);
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
