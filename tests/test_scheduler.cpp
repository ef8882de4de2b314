// The scheduler: requests queued and served give exactly the text each gives alone through
// generate(); cancellation, a full queue and a prompt too long are answered without disturbing
// the others.
#include <gtest/gtest.h>

#include <mutex>

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

// The text generate() gives for a prompt alone, on a fresh engine.
std::string solo(const std::shared_ptr<MappedFile>& image, const Request& r) {
  Engine e(PackedFile::from_mapping(image), {.model = {}, .ctx = 96, .batch = 16});
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

}  // namespace
}  // namespace ferry
