// The paging cache under the forward pass: logits bit-identical to the uncached run for every
// budget from the minimum to the whole model, under both policies and both cache formats, on the
// real TinyStories model and a synthesized Qwen2; allocation and copy failures injected at the
// N-th allocation or transfer, at load and mid-generation; damaged weights caught by the
// checksums; and `ferry run --stats` end to end.
#include <gtest/gtest.h>

#include <regex>

#include <fmt/format.h>

#include "base/error.hpp"
#include "cache/backend_cpu.hpp"
#include "kernels/dequant.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "runtime/engine.hpp"
#include "runtime/paged_weights.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

// qwen2-tiny (4 layers, hidden 320, q/k/v biases) synthesized and converted with `scheme`.
std::filesystem::path qwen2_tiny(const test::ScratchDir& tmp, Scheme scheme,
                                 std::vector<KeepRule> keep = {}) {
  const std::filesystem::path hf = tmp / "hf",
                              out = tmp / fmt::format("q{}-{}.ferry", int(scheme), keep.size());
  SynthOptions synth;
  synth.preset = "qwen2-tiny";
  if (!std::filesystem::exists(hf)) synth_checkpoint(hf, synth, kQuiet);
  convert_checkpoint(hf, out, {.scheme = scheme, .keep = std::move(keep)}, kQuiet);
  return out;
}

EngineOptions engine_options(const CacheOptions& c) {
  return {.model = {}, .ctx = 32, .batch = 8, .threads = 2, .cache = c};
}

// A prompt of 11 tokens (two forward calls of batch 8 and 3) and 4 decode steps: every logit of
// the last token of each call, in order.
std::vector<float> run_tokens(Engine& e) {
  const std::vector<int32_t> prompt = {1, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77};
  e.eval(prompt, 0);
  std::vector<float> out(e.logits().begin(), e.logits().end());
  for (uint64_t i = 0; i < 4; ++i) {
    const int32_t t = int32_t(100 + i);
    e.eval(std::span(&t, 1), prompt.size() + i);
    out.insert(out.end(), e.logits().begin(), e.logits().end());
  }
  return out;
}

// The uncached reference of the bf16 cache format: every INT4 weight dequantized to bf16 once,
// up front, and read in place, so the forward pass runs the same bf16 products as with the cache.
class DequantizedWeights final : public WeightSource {
 public:
  explicit DequantizedWeights(const ModelWeights& w) : linears_(w.linears) {
    for (Linear& l : linears_) {
      if (!l.is_int4() && !l.is_int8()) continue;
      bf16_.emplace_back(l.rows * l.cols);
      if (l.is_int8())
        dequant_int8_bf16_cpu(l.q8, bf16_.back().data());
      else
        dequant_int4_bf16_cpu(l.q4, bf16_.back().data());
      l = {.q4 = {}, .q8 = {}, .bf16 = bf16_.back().data(), .rows = l.rows, .cols = l.cols};
    }
  }
  Linear acquire(uint32_t id) override { return linears_.at(id); }
  void release(uint32_t) override {}

 private:
  std::vector<Linear> linears_;
  std::vector<std::vector<uint16_t>> bf16_;  // [linears][rows * cols]
};

std::vector<float> uncached(const PackedFile& f, CacheFormat format) {
  Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options({}));
  if (format == CacheFormat::bf16)
    e.replace_weight_source(std::make_unique<DequantizedWeights>(e.weights()));
  return run_tokens(e);
}

// Budgets from the minimum the schedule needs (its largest weight) to the whole model, both
// policies, both formats: the logits must equal the uncached run's bit for bit, and the cache
// must really have paged (evicted below the whole model, hit at the whole model).
void expect_invariant(const PackedFile& f, const std::string& name,
                      std::initializer_list<double> budgets) {
  const ModelWeights w = bind_weights(f);
  for (CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const std::vector<float> reference = uncached(f, format);
    const Schedule s = paging_schedule(f, w, format);
    const uint64_t minimum = s.minimum_budget(), whole = s.whole_bytes();
    ASSERT_LT(minimum, whole / 2) << name;  // so that the small budgets do stream
    for (double t : budgets)
      for (CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
        CacheOptions c{.enabled = true,
                       .budget_bytes = minimum + uint64_t(t * double(whole - minimum)),
                       .policy = policy,
                       .format = format};
        Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options(c));
        const std::string what = fmt::format("{} {} budget {} of {} {}", name, format_name(format),
                                             c.budget_bytes, whole, policy_name(policy));
        EXPECT_EQ(run_tokens(e), reference) << what;
        const CacheStats st = *e.cache_stats();
        EXPECT_LE(st.high_water, c.budget_bytes) << what;
        EXPECT_EQ(st.acquires, 6 * s.size()) << what;  // 6 forward calls, every weight once
        if (t < 1) {
          EXPECT_GT(st.evictions, 0u) << what;  // something streamed
        } else {
          EXPECT_GE(st.hits, 5 * s.size()) << what;  // all resident after the first pass
        }
      }
  }
}

TEST(PagingInvariance, SynthesizedQwen2LogitsAreBitIdenticalForEveryBudget) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  expect_invariant(f, "qwen2-tiny asym-clip", {0.0, 0.1, 0.25, 0.5, 0.75, 1.0});
}

// The stress modes (cache/backend.hpp): every fill and every release delayed, every evicted entry
// poisoned with 0xFF (NaN scales and bf16 weights) at the minimum budget, where every weight is
// evicted and refilled each pass: the logits stay the uncached run's, bit for bit.
TEST(PagingStress, RaceAndPoisonLeaveLogitsBitIdenticalAtTheMinimumBudget) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  const ModelWeights w = bind_weights(f);
  for (CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const std::vector<float> reference = uncached(f, format);
    for (CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
      const CacheOptions c{.enabled = true,
                           .budget_bytes = paging_schedule(f, w, format).minimum_budget(),
                           .policy = policy,
                           .format = format,
                           .stress = {.race = true, .poison = true, .delay_us = 50}};
      Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options(c));
      const std::string what = fmt::format("{} {}", format_name(format), policy_name(policy));
      EXPECT_EQ(run_tokens(e), reference) << what;
      EXPECT_GT(e.cache_stats()->evictions, 0u) << what;
    }
  }
}

// INT8 entries (the default lm_head, and here every MLP weight too) stream through the cache like
// INT4 ones: copied as stored in the int4 format, dequantized while filling in the bf16 one.
TEST(PagingInvariance, Int8WeightsLogitsAreBitIdenticalForEveryBudget) {
  test::ScratchDir tmp;
  const PackedFile f =
      PackedFile::open(qwen2_tiny(tmp, Scheme::asym, {{"mlp", WeightStorage::int8}}));
  const ModelWeights w = bind_weights(f);
  ASSERT_TRUE(w.linears.back().is_int8());              // lm_head
  ASSERT_TRUE(w.linears[linear_id(0, kUp)].is_int8());  // an MLP weight
  ASSERT_TRUE(w.linears[linear_id(0, kQ)].is_int4());   // attention stays INT4
  expect_invariant(f, "qwen2-tiny int8 mlp", {0.0, 0.1, 0.25, 0.5, 0.75, 1.0});
}

// bf16-scheme files store the linear weights unquantized: both formats copy them as they are.
TEST(PagingInvariance, Bf16SchemeFileLogitsAreBitIdenticalForEveryBudget) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::bf16));
  expect_invariant(f, "qwen2-tiny bf16", {0.0, 0.5, 1.0});
}

TEST(PagingInvariance, TinyStoriesLogitsAreBitIdenticalForEveryBudget) {
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  // lm_head in INT4, as before INT8 became its default: TinyStories' INT8 lm_head (256 KB) would be
  // more than half of its 465 KB of linear weights, and the small budgets would then not stream
  // anything but it. INT8 entries are covered by Int8WeightsLogitsAreBitIdenticalForEveryBudget.
  convert_checkpoint(dir, tmp / "t.ferry", {.keep = {{"lm_head", WeightStorage::int4}}}, kQuiet);
  expect_invariant(PackedFile::open(tmp / "t.ferry"), "tinystories",
                   {0.0, 0.1, 0.25, 0.5, 0.75, 1.0});
}

// An INT4 entry is filled by one copy (the host store holds its parts as the entry lays them
// out), so each upload is one transfer: fewer, larger PCIe copies on a GPU.
// A CPU cache whose host store and arena would exceed the host memory is refused before either
// is allocated, naming the budget; cache_host_bytes counts both.
TEST(PagingMemory, ACpuArenaLargerThanTheMemoryIsRefusedFirst) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  const ModelWeights w = bind_weights(f);
  const uint64_t store = paging_schedule(f, w, CacheFormat::int4).whole_bytes();
  const CacheOptions half{.enabled = true, .budget_fraction = 0.5};
  EXPECT_EQ(cache_host_bytes(f, w, half), store + store / 2);
  const CacheOptions huge{.enabled = true, .budget_bytes = uint64_t(1) << 52};  // 4 PB
  EXPECT_EQ(cache_host_bytes(f, w, huge), store + (uint64_t(1) << 52));
  try {
    Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options(huge));
    ADD_FAILURE() << "a 4 PB arena was accepted";
  } catch (const Error& err) {
    EXPECT_EQ(err.setting, Setting::cache_budget) << err.what();
    EXPECT_NE(std::string(err.what()).find("of host memory"), std::string::npos) << err.what();
  }
}

TEST(PagingInvariance, EachInt4UploadIsOneTransfer) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
    auto backend = std::make_shared<CpuBackend>();
    const CacheOptions c{
        .enabled = true, .budget_fraction = 0.5, .policy = policy, .backend = backend};
    Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options(c));
    const uint64_t at_load = backend->transfers();
    run_tokens(e);
    // Settled: the last pass has requested the next pass's first weights, whose transfer may
    // have started (counted) and not ended (its upload not yet counted) when it returns.
    const CacheStats st = *e.settled_cache_stats();
    EXPECT_GT(st.uploads, 0u) << policy_name(policy);
    EXPECT_EQ(backend->transfers() - at_load, st.uploads) << policy_name(policy);
  }
}

// The CPU and CUDA passes run q/k/v and gate/up as one product (launch) only where the source
// lets them hold the group together: always when reading in place and at a whole-model budget
// (where holding every weight at once works), never at the minimum budget, which guarantees room
// for one weight at a time.
TEST(PagingHold, GroupsAreHeldTogetherOnlyWhereTheyFit) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  const ModelWeights w = bind_weights(f);
  const std::vector<uint32_t> qkv = {linear_id(0, kQ), linear_id(0, kK), linear_id(0, kV)};
  EXPECT_TRUE(DirectWeights(w).can_hold(qkv));
  const Schedule s = paging_schedule(f, w, CacheFormat::int4);
  std::vector<uint32_t> every(s.size());
  for (uint32_t id = 0; id < s.size(); ++id) every[id] = id;
  for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
    const CacheOptions least{.enabled = true, .budget_bytes = s.minimum_budget(), .policy = policy};
    EXPECT_FALSE(PagedWeights(f, w, least, 2).can_hold(qkv)) << policy_name(policy);
    const CacheOptions c{.enabled = true, .budget_bytes = s.whole_bytes(), .policy = policy};
    PagedWeights all(f, w, c, 2);
    ASSERT_TRUE(all.can_hold(every)) << policy_name(policy);
    for (uint32_t id = 0; id < s.size(); ++id) all.acquire(id);  // every weight held at once
    for (uint32_t id = 0; id < s.size(); ++id) all.release(id);
  }
}

// --- faults ---------------------------------------------------------------------------------

struct FaultRun {
  std::string error;     // "" when nothing failed
  bool at_load = false;  // thrown by the Engine's constructor
  uint64_t counted = 0;  // allocations or transfers up to the end of the generation
};

// Loads the model with the n-th allocation (or transfer) failing and generates; then one more
// decode step, in which a fault of a prefetch made after the last use surfaces.
FaultRun run_with_fault(const PackedFile& f, CachePolicy policy, bool transfer, uint64_t n) {
  auto backend = std::make_shared<CpuBackend>();
  transfer ? backend->fail_transfer_at(n) : backend->fail_allocation_at(n);
  auto count = [&] { return transfer ? backend->transfers() : backend->allocations(); };
  const CacheOptions c{
      .enabled = true, .budget_fraction = 0.5, .policy = policy, .backend = backend};
  FaultRun r;
  try {
    Engine e(PackedFile::from_mapping(f.file.mapping()), engine_options(c));
    try {
      run_tokens(e);
      r.counted = count();
      const int32_t t = 7;
      e.eval(std::span(&t, 1), 15);
    } catch (const Error& ex) {
      r.error = ex.what();
      if (!r.counted) r.counted = count();
      EXPECT_THROW(run_tokens(e), Error) << "a failed cache must keep failing, not hang";
    }
  } catch (const Error& ex) {
    if (r.error.empty()) r.error = ex.what(), r.at_load = true, r.counted = count();
  }
  return r;
}

// Every N up to the last allocation (or transfer) of the run: a clear one-line error naming the
// injected fault, at load (host store, arena, pin's resident set) or mid-generation (entries
// placed or copied by the prefetch thread or on a miss). AddressSanitizer (scripts/test.sh) checks
// that nothing leaks on these paths; a hung thread would hang the test.
TEST(PagingFaults, FailureAtTheNthAllocationOrTransferIsAClearErrorAtLoadAndMidGeneration) {
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(qwen2_tiny(tmp, Scheme::asym_clip));
  for (const bool transfer : {false, true})
    for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
      int at_load = 0, mid = 0;
      for (uint64_t n = 1;; n += n < 40 ? 1 : 9) {
        const FaultRun r = run_with_fault(f, policy, transfer, n);
        if (n > r.counted) break;
        const std::string what = fmt::format("{} {} n {}: {}", transfer ? "transfer" : "allocation",
                                             policy_name(policy), n, r.error);
        EXPECT_NE(r.error.find(fmt::format("injected fault at {} {}",
                                           transfer ? "transfer" : "allocation", n)),
                  std::string::npos)
            << what;
        EXPECT_EQ(r.error.find('\n'), std::string::npos) << what;
        (r.at_load ? at_load : mid)++;
      }
      // At load: the host store and the arena (allocations), pin's resident set (both); lru
      // makes no transfer before the first use.
      if (!transfer || policy == CachePolicy::pin) {
        EXPECT_GT(at_load, 0) << policy_name(policy);
      }
      EXPECT_GT(mid, 0) << policy_name(policy);
    }
}

TEST(PagingFaults, DamagedWeightsAreCaughtByTheirChecksumsUnlessNoVerify) {
  test::ScratchDir tmp;
  const std::filesystem::path good = qwen2_tiny(tmp, Scheme::asym_clip);
  std::vector<uint8_t> bytes = test::read_file(good);
  const std::string damaged = "model.layers.2.mlp.up_proj.weight.q4";
  bytes[PackedFile::open(good).file.find(damaged)->file_offset + 100] ^= 0x10;
  test::write_file(tmp / "bad.ferry", bytes);
  const PackedFile bad = PackedFile::open(tmp / "bad.ferry");
  CacheOptions c{.enabled = true, .budget_fraction = 1.0};
  try {
    Engine e(PackedFile::from_mapping(bad.file.mapping()), engine_options(c));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(damaged + " does not match its checksum"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.setting, Setting::verify) << e.what();  // the CLI names --no-verify
  }
  c.verify = false;
  Engine e(PackedFile::from_mapping(bad.file.mapping()), engine_options(c));
  EXPECT_EQ(run_tokens(e).size(), 5u * e.config().vocab);
}

// --- ferry run --stats ------------------------------------------------------------------------

struct RunStats {
  std::string text;  // what the model generated (stdout, before the figures line)
  double hit_percent = -1, hit_byte_percent = -1, pinned_percent = -1;
};

RunStats ferry_run(const std::filesystem::path& model, const std::vector<std::string>& cache) {
  std::vector<std::string> args = {"run", model.string(), "-p", "Once upon a time", "-n", "24"};
  args.insert(args.end(), cache.begin(), cache.end());
  if (!cache.empty()) args.push_back("--stats");
  const test::RunResult r = test::run_ferry(args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  RunStats s;
  s.text = r.output.substr(0, r.output.find("\nprompt "));
  std::smatch m;
  if (std::regex_search(r.output, m, std::regex(R"(hits \(([0-9.]+)%, ([0-9.]+)% of bytes\))")))
    s.hit_percent = std::stod(m[1]), s.hit_byte_percent = std::stod(m[2]);
  if (std::regex_search(r.output, m, std::regex(R"(pinned [0-9.]+ [KMGT]?B \(([0-9.]+)%\))")))
    s.pinned_percent = std::stod(m[1]);
  EXPECT_TRUE(cache.empty() || s.hit_percent >= 0) << r.output;
  return s;
}

TEST(PagingCli, RunStatsAtHalfTheModelShowsLruThrashingAndPinKeepingItsShare) {
  test::ScratchDir tmp;
  const std::string hf = (tmp / "hf").string(), model = (tmp / "m.ferry").string();
  ASSERT_EQ(test::run_ferry({"synth", "--preset", "qwen2-tiny", "-o", hf}).exit_code, 0);
  ASSERT_EQ(test::run_ferry({"quantize", hf, "-o", model, "-q"}).exit_code, 0);

  const RunStats direct = ferry_run(model, {});
  ASSERT_GT(direct.text.size(), std::string("Once upon a time").size());
  const RunStats lru = ferry_run(model, {"--cache-budget", "50%", "--cache-policy", "lru"});
  const RunStats pin = ferry_run(model, {"--cache-budget", "50%", "--cache-policy", "pin"});
  EXPECT_LT(lru.hit_percent, 5.0);  // LRU evicts exactly what the cycle needs next
  EXPECT_GT(pin.pinned_percent, 30.0);
  EXPECT_NEAR(pin.hit_byte_percent, pin.pinned_percent, 1.0);  // every pass: resident share
  EXPECT_GT(pin.hit_percent, 20.0);
  for (const RunStats& s :
       {lru, pin, ferry_run(model, {"--cache-budget", "all"}),
        ferry_run(model, {"--cache-budget", "auto", "--cache-policy", "pin"}),
        ferry_run(model, {"--cache-budget", "50%", "--lookahead", "0"}),
        ferry_run(model, {"--cache-budget", "10%", "--cache-policy", "pin", "--lookahead", "5"})})
    EXPECT_EQ(s.text, direct.text);
  // bf16 entries run the bf16 product: the same text across budgets and policies.
  const RunStats bf16 = ferry_run(model, {"--cache-budget", "all", "--cache-format", "bf16"});
  for (const char* policy : {"lru", "pin"})
    EXPECT_EQ(ferry_run(model, {"--cache-budget", "40%", "--cache-format", "bf16", "--cache-policy",
                                policy})
                  .text,
              bf16.text)
        << policy;

  const test::RunResult small = test::run_ferry({"run", model, "--cache-budget", "1K"});
  EXPECT_EQ(small.exit_code, 1);
  EXPECT_NE(small.output.find("below the minimum of"), std::string::npos) << small.output;
  // The library's words; ferry's main() puts "--cache-budget: " in front
  // (tools/option_names.hpp).
  EXPECT_NE(small.output.find("raise it to at least"), std::string::npos) << small.output;
  const test::RunResult orphan = test::run_ferry({"run", model, "--cache-policy", "pin"});
  EXPECT_EQ(orphan.exit_code, 1);
  EXPECT_NE(orphan.output.find("--cache-policy needs --cache-budget"), std::string::npos)
      << orphan.output;
}

}  // namespace
}  // namespace ferry
