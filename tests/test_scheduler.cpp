// The scheduler: requests queued and served give exactly the text each gives alone through
// generate(); cancellation, a full queue and a prompt too long are answered without disturbing
// the others.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <mutex>
#include <thread>

#include "cache/stats.hpp"
#include "format/packed_file.hpp"
#include "quantizer/synth_packed.hpp"
#include "runtime/scheduler.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

std::shared_ptr<MappedFile> tiny_image() {
  SynthOptions so;
  so.preset = "qwen2-tiny";
  return synth_packed_image(so, Scheme::asym_clip, [](std::string_view, uint64_t, uint64_t) {});
}

// Collects a request's stream; optionally cancels it after `cancel_after` pieces of text.
struct Collector : RequestSink {
  std::mutex mu;
  std::string text;
  std::vector<int32_t> tokens;
  int done = 0;
  RequestResult result;
  void on_text(std::string_view t, int32_t token) override {
    std::lock_guard lock(mu);
    text += t;
    if (token >= 0) tokens.push_back(token);
  }
  void on_done(const RequestResult& r) override {
    std::lock_guard lock(mu);
    ++done;
    result = r;
  }
};

EngineOptions options(uint64_t parallel, CacheOptions cache = {}) {
  return {.model = {}, .ctx = 96, .batch = 16, .parallel = parallel, .cache = cache};
}

// The text generate() gives for a prompt alone, on a fresh engine of one slot.
std::string solo(const std::shared_ptr<MappedFile>& image, const Request& r,
                 CacheOptions cache = {}) {
  Engine e(PackedFile::from_mapping(image), options(1, cache));
  Sampler s(r.sampling, e.config().vocab);
  std::vector<int32_t> context = r.prompt;
  uint64_t evaluated = 0;
  std::string out;
  GenerateOptions g{
      .max_tokens = r.max_tokens, .stop_strings = r.stop_strings, .stop_ids = r.stop_ids};
  generate(e, s, context, evaluated, g, [&](std::string_view t) { out += t; });
  return out;
}

Request request(size_t prompt_len, uint64_t max_tokens, float temperature, uint64_t seed) {
  Request r;
  r.prompt = test::spread_prompt(prompt_len, 500);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  return r;
}

TEST(Scheduler, EachRequestGivesItsSoloText) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 96, .batch = 16});
  Scheduler sched(e);
  const std::vector<Request> reqs = {request(5, 12, 0, 0), request(40, 20, 0.8f, 7),
                                     request(17, 9, 0, 0), request(3, 30, 1.0f, 3)};
  std::vector<std::shared_ptr<Collector>> sinks;
  for (const Request& r : reqs) {
    sinks.push_back(std::make_shared<Collector>());
    sched.submit(r, sinks.back());
  }
  sched.run_until_idle();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(sinks[i]->done, 1) << i;
    EXPECT_EQ(sinks[i]->text, solo(image, reqs[i])) << "request " << i;
    EXPECT_EQ(sinks[i]->result.generated, reqs[i].max_tokens) << i;
    EXPECT_EQ(sinks[i]->result.prompt_tokens, reqs[i].prompt.size()) << i;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.finished, 4u);
  EXPECT_EQ(st.generated_tokens, 12u + 20 + 9 + 30);
  EXPECT_EQ(st.prompt_tokens, 5u + 40 + 17 + 3);
}

TEST(Scheduler, CancelledRequestEndsAndOthersGoOn) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 96, .batch = 16});
  Scheduler sched(e);
  auto a = std::make_shared<Collector>(), b = std::make_shared<Collector>();
  const Request ra = request(6, 20, 0, 0), rb = request(9, 10, 0, 0);
  const RequestId ia = sched.submit(ra, a);
  sched.submit(rb, b);
  sched.cancel(ia);
  sched.run_until_idle();
  EXPECT_EQ(a->done, 1);
  EXPECT_EQ(a->result.reason, StopReason::cancelled);
  EXPECT_EQ(b->text, solo(image, rb));
  EXPECT_EQ(sched.stats().cancelled, 1u);
}

TEST(Scheduler, RefusesWhatItCannotServe) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 32, .batch = 16});
  Scheduler sched(e, {.queue_limit = 2});
  auto sink = std::make_shared<Collector>();
  EXPECT_THROW(sched.submit(request(32, 4, 0, 0), sink), Error);  // no room to generate
  Request bad = request(4, 4, 0, 0);
  bad.prompt[1] = 100000;
  EXPECT_THROW(sched.submit(bad, sink), Error);
  sched.submit(request(4, 4, 0, 0), sink);
  sched.submit(request(4, 4, 0, 0), sink);
  EXPECT_THROW(sched.submit(request(4, 4, 0, 0), sink), QueueFull);
  sched.run_until_idle();
  EXPECT_EQ(sink->done, 2);
}

TEST(Scheduler, ThreadServesAndStopsWithinGrace) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 96, .batch = 16});
  Scheduler sched(e);
  sched.start();
  auto a = std::make_shared<Collector>();
  const Request ra = request(8, 16, 0, 0);
  sched.submit(ra, a);
  auto b = std::make_shared<Collector>();
  sched.submit(request(8, 60, 0, 0), b);
  sched.stop(std::chrono::milliseconds(0));  // whatever still runs is cancelled
  EXPECT_EQ(a->done, 1);
  EXPECT_EQ(b->done, 1);
  EXPECT_THROW(sched.submit(ra, a), QueueFull);
}

// Seven requests of mixed prompt lengths, limits and sampling through `parallel` slots: each
// text equals its solo run bit for bit (every linear is row-independent and attention reads only
// its own slot), whichever requests shared its steps.
void expect_batched_equals_solo(uint64_t parallel, CacheOptions cache, const std::string& what) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), options(parallel, cache));
  Scheduler sched(e);
  const std::vector<Request> reqs = {request(5, 12, 0, 0),    request(40, 20, 0.8f, 7),
                                     request(17, 9, 0, 0),    request(3, 30, 1.0f, 3),
                                     request(60, 6, 0.7f, 1), request(1, 25, 0, 0),
                                     request(33, 14, 1.2f, 9)};
  std::vector<std::shared_ptr<Collector>> sinks;
  for (const Request& r : reqs) {
    sinks.push_back(std::make_shared<Collector>());
    sched.submit(r, sinks.back());
  }
  sched.run_until_idle();
  uint64_t tokens = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(sinks[i]->done, 1) << what << " request " << i;
    EXPECT_EQ(sinks[i]->text, solo(image, reqs[i], cache)) << what << " request " << i;
    EXPECT_EQ(sinks[i]->result.generated, reqs[i].max_tokens) << what << " request " << i;
    tokens += reqs[i].prompt.size() + reqs[i].max_tokens;
  }
  const SchedulerStats st = sched.stats();
  EXPECT_EQ(st.slots, parallel) << what;
  EXPECT_EQ(st.active, 0u) << what;
  // Every step's tokens are counted once; the last sampled token of each request is never run.
  EXPECT_EQ(st.step_tokens, tokens - reqs.size()) << what;
  if (cache.enabled && cache.budget_fraction < 1) {
    EXPECT_GT(e.cache_stats()->evictions, 0u) << what << ": nothing streamed";
  }
  if (parallel > 1) {  // the decoders really shared steps: fewer steps than one request at a time
    Engine one(PackedFile::from_mapping(image), options(1, cache));
    Scheduler serial(one);
    for (const Request& r : reqs) serial.submit(r, std::make_shared<Collector>());
    serial.run_until_idle();
    EXPECT_LT(st.steps * 3, serial.stats().steps * 2) << what;
  }
}

TEST(Scheduler, BatchedRequestsGiveTheirSoloText) {
  for (uint64_t parallel : {2, 3, 4, 8}) expect_batched_equals_solo(parallel, {}, "no cache");
}

// Every budget from the schedule's minimum to the whole model, both policies, both cache formats.
TEST(Scheduler, BatchedRequestsThroughThePagingCache) {
  const PackedFile f = PackedFile::from_mapping(tiny_image());
  for (CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const uint64_t minimum = paging_schedule(f, bind_weights(f), format).minimum_budget();
    for (CachePolicy policy : {CachePolicy::lru, CachePolicy::pin})
      for (double fraction : {0.0, 0.3, 1.0}) {
        CacheOptions c{.enabled = true, .policy = policy, .format = format};
        if (fraction == 0)
          c.budget_bytes = minimum;
        else
          c.budget_fraction = fraction;
        expect_batched_equals_solo(4, c,
                                   fmt::format("{} {} budget {}", format_name(format),
                                               policy_name(policy), fraction ? fraction : 0));
      }
  }
}

// Requests that arrive while others run join at the next step and leave when done; cancelling
// one mid-stream (from its own sink, as a server does on a disconnect) ends only that one.
TEST(Scheduler, LateArrivalsAndOneCancelledAmongRunning) {
  const auto image = tiny_image();
  Engine e(PackedFile::from_mapping(image), options(3));
  Scheduler sched(e);
  struct CancelAfter : Collector {
    Scheduler* sched = nullptr;
    RequestId id = 0;
    size_t after = 0;
    void on_text(std::string_view t, int32_t token) override {
      Collector::on_text(t, token);
      if (tokens.size() == after) sched->cancel(id);
    }
  };
  sched.start();
  const std::vector<Request> early = {request(12, 40, 0, 0), request(7, 35, 0.9f, 5)};
  std::vector<std::shared_ptr<Collector>> sinks;
  for (const Request& r : early) {
    sinks.push_back(std::make_shared<Collector>());
    sched.submit(r, sinks.back());
  }
  auto victim = std::make_shared<CancelAfter>();
  victim->sched = &sched;
  victim->after = 4;
  victim->id = sched.submit(request(20, 50, 0, 0), victim);
  // Wait until the first request is generating, then add two more (one waits for a slot).
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard lock(sinks[0]->mu);
      if (sinks[0]->tokens.size() >= 3) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const std::vector<Request> late = {request(25, 10, 0, 0), request(2, 18, 1.1f, 11)};
  for (const Request& r : late) {
    sinks.push_back(std::make_shared<Collector>());
    sched.submit(r, sinks.back());
  }
  sched.stop(std::chrono::seconds(60));
  std::vector<Request> all = early;
  all.insert(all.end(), late.begin(), late.end());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(sinks[i]->done, 1) << i;
    EXPECT_EQ(sinks[i]->result.reason, StopReason::max_tokens) << i;
    EXPECT_EQ(sinks[i]->text, solo(image, all[i])) << "request " << i;
  }
  EXPECT_EQ(victim->done, 1);
  EXPECT_EQ(victim->result.reason, StopReason::cancelled);
  EXPECT_GE(victim->tokens.size(), 4u);
  EXPECT_LE(victim->tokens.size(), 5u);  // freed within one step of the cancel
  EXPECT_EQ(sched.stats().cancelled, 1u);
}

TEST(Scheduler, ParallelOutsideItsRangeIsRefused) {
  const auto image = tiny_image();
  for (uint64_t p : {0, 5000}) try {
      Engine e(PackedFile::from_mapping(image), options(p));
      ADD_FAILURE() << p << " accepted";
    } catch (const Error& err) {
      EXPECT_EQ(err.setting, Setting::parallel) << err.what();
    }
}

}  // namespace
}  // namespace ferry
