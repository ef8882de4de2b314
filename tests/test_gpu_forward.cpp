// The CUDA forward pass end to end against the CPU one (the reference every faster path is
// checked against): logits of a prefill of 11 tokens in batches of 8 and 3 and of 4 decode
// steps, on the real TinyStories model and synthesized Qwen2 (q/k/v biases, hidden 320) and
// Llama 3 (llama3 rope scaling) models, for both cache formats, both policies and budgets from
// the minimum to the whole model. On the GPU, paging must not change a bit either: every budget
// and policy of a format gives the same logits. A 600-token prompt crosses attention chunks and
// query rounds. The default f16 KV cache throughout, and the f32 one once; decode steps as CUDA
// graphs against the stream. Skipped when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include <fmt/format.h>

#include "base/error.hpp"
#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "runtime/engine.hpp"
#include "runtime/forward_cuda.hpp"
#include "runtime/perplexity.hpp"
#include "tests/gpu_util.hpp"
#include "tests/test_util.hpp"

namespace ferry {
namespace {

const ProgressFn kQuiet = [](std::string_view, uint64_t, uint64_t) {};

std::filesystem::path synthesized(const test::ScratchDir& tmp, const std::string& preset) {
  const std::filesystem::path hf = tmp / preset, out = tmp / (preset + ".ferry");
  SynthOptions s;
  s.preset = preset;
  synth_checkpoint(hf, s, kQuiet);
  convert_checkpoint(hf, out, {}, kQuiet);
  return out;
}

// Every logit of the last token of each forward call, one vector per call.
std::vector<std::vector<float>> run_tokens(Engine& e) {
  const std::vector<int32_t> prompt = {1, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77};
  std::vector<std::vector<float>> out;
  e.eval(prompt, 0);
  out.emplace_back(e.logits().begin(), e.logits().end());
  for (uint64_t i = 0; i < 4; ++i) {
    const int32_t t = int32_t(100 + i);
    e.eval(std::span(&t, 1), prompt.size() + i);
    out.emplace_back(e.logits().begin(), e.logits().end());
  }
  return out;
}

// max |a - b| / max |b| of one logits vector.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return diff / scale;
}

EngineOptions options(const CacheOptions& c, bool gpu, uint64_t batch = 8) {
  EngineOptions o{.model = {}, .ctx = 32, .batch = batch, .threads = 2, .cache = c};
  if (gpu) o.device = cuda_forward_factory({.bf16_cache = c.format == CacheFormat::bf16});
  // The CPU reference in fp32 activations, as the CUDA GEMV reads them (bounds of 1e-4 below).
  o.cpu_int8_activations = false;
  return o;
}

// The CPU reference of a format: the same cache format on the CPU backend (bf16 entries: the
// CPU runs the bf16 product on the same dequantized weights).
void expect_gpu_matches_cpu(const std::filesystem::path& model, const std::string& name) {
  const PackedFile f = PackedFile::open(model);
  const ModelWeights w = bind_weights(f);
  for (const CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const CacheOptions all{.enabled = true, .budget_fraction = 1.0, .format = format};
    Engine cpu(PackedFile::from_mapping(f.file.mapping()), options(all, false));
    const auto reference = run_tokens(cpu);
    // int4 up to 8 tokens: the fused GEMV reads x in fp32, as the CPU does (order of sums only:
    // ~1e-6); bf16, and int4 prefill above 8 tokens (dequantized, then the GEMM): cuBLASLt
    // rounds x to bf16 (8 bits of mantissa) before the tensor cores.
    const double gemv_bound = 1e-4, gemm_bound = 3e-2;
    const Schedule s = paging_schedule(f, w, format);
    // Batch 8: the 11-token prompt runs as 8 + 3 (GEMV); batch 16: as 11 (GEMM for int4).
    for (const uint64_t batch : {8, 16}) {
      std::vector<std::vector<float>> first;
      for (const double t : {0.0, 0.25, 0.5, 1.0})
        for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
          const CacheOptions c{
              .enabled = true,
              .budget_bytes =
                  s.minimum_budget() + uint64_t(t * double(s.whole_bytes() - s.minimum_budget())),
              .policy = policy,
              .format = format};
          Engine gpu(PackedFile::from_mapping(f.file.mapping()), options(c, true, batch));
          const auto got = run_tokens(gpu);
          const std::string what =
              fmt::format("{} {} batch {} budget {} {}", name, format_name(format), batch,
                          c.budget_bytes, policy_name(policy));
          for (size_t call = 0; call < got.size(); ++call) {
            const bool gemm = format == CacheFormat::bf16 || batch > 8;  // the KV cache too
            const double bound = gemm ? gemm_bound : gemv_bound;
            const double err = relative_error(got[call], reference[call]);
            EXPECT_LT(err, bound) << what << " call " << call;
            if (call <= 1 && t == 0 && policy == CachePolicy::lru)
              std::printf("%s %s batch %llu call %zu: relative logits error %.2e (bound %.0e)\n",
                          name.c_str(), format_name(format), (unsigned long long)batch, call, err,
                          bound);
          }
          if (first.empty())
            first = got;
          else
            EXPECT_EQ(got, first) << what
                                  << ": paging (or, at the whole budget, the fused q/k/v and "
                                     "gate+up launches) changed the GPU's logits";
          EXPECT_LE(gpu.cache_stats()->high_water, c.budget_bytes) << what;
        }
    }
  }
}

// Batched decode on the device. Three sequences of different prompt lengths in their own KV slots,
// prefilled one by one, then decoded together (one token of each a step, the GEMV over 3 rows):
// every row of every step against the CPU's batched pass and against the GPU running that sequence
// alone in one slot. Even steps return logits; odd steps ask for the argmax only, which a device
// computes there and copies back alone (its logits are then left as they were).
struct SlotRun {
  std::vector<std::vector<float>> logits;   // [even step][seq * vocab]
  std::vector<std::vector<int32_t>> picks;  // [odd step][seq]
};

SlotRun run_slots(Engine& e, const std::vector<uint64_t>& slots) {
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 5, 9, 14, 20}, {3, 8, 13, 21, 34, 55, 89, 144, 233, 377, 61}, {7, 2}};
  const uint64_t vocab = e.config().vocab;
  std::vector<float> logits(slots.size() * vocab);
  std::vector<int32_t> argmax(slots.size());
  // Prompts in pieces of at most 8 tokens, the engines' batch (slot 1's has 11).
  for (size_t i = 0; i < slots.size(); ++i) {
    const std::span<const int32_t> p = prompts[slots[i]];
    for (size_t at = 0; at < p.size(); at += 8) {
      const SeqChunk c{slots[i], at, p.subspan(at, std::min<size_t>(8, p.size() - at))};
      e.eval_seqs(std::span(&c, 1), std::span(logits).first(vocab), std::span(argmax).first(1));
    }
  }
  SlotRun run;
  for (uint64_t step = 0; step < 4; ++step) {
    std::vector<int32_t> tokens(slots.size());
    std::vector<SeqChunk> seqs;
    for (size_t i = 0; i < slots.size(); ++i) {
      tokens[i] = int32_t(100 + 7 * slots[i] + step);
      seqs.push_back({slots[i], prompts[slots[i]].size() + step, std::span(&tokens[i], 1)});
    }
    if (step % 2 == 0) {
      e.eval_seqs(seqs, logits, {});
      run.logits.push_back(logits);
    } else {
      e.eval_seqs(seqs, logits, argmax);
      run.picks.push_back(argmax);
    }
  }
  return run;
}

TEST(GpuForward, BatchedSequencesMatchTheCpuAndThemselvesAlone) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-tiny"));
  const CacheOptions c{.enabled = true, .budget_fraction = 0.3, .policy = CachePolicy::pin};
  EngineOptions cpu_o = options(c, false), gpu_o = options(c, true);
  cpu_o.parallel = gpu_o.parallel = 3;
  Engine cpu(PackedFile::from_mapping(f.file.mapping()), cpu_o);
  Engine gpu(PackedFile::from_mapping(f.file.mapping()), gpu_o);
  const SlotRun reference = run_slots(cpu, {0, 1, 2}), got = run_slots(gpu, {0, 1, 2});
  for (size_t step = 0; step < got.logits.size(); ++step)
    EXPECT_LT(relative_error(got.logits[step], reference.logits[step]), 1e-4) << "step " << step;
  EXPECT_EQ(got.picks, reference.picks);  // the device's argmax, the CPU's over its logits
  const uint64_t vocab = f.config.vocab;
  for (uint64_t slot = 0; slot < 3; ++slot) {
    // Alone on an engine of its own (run_slots picks the prompt by slot number, so the engine
    // has 3 slots and only this one runs).
    EngineOptions o = options(c, true);
    o.parallel = 3;
    Engine solo(PackedFile::from_mapping(f.file.mapping()), o);
    const SlotRun one = run_slots(solo, {slot});
    for (size_t step = 0; step < one.logits.size(); ++step) {
      const std::vector<float> batched(got.logits[step].begin() + slot * vocab,
                                       got.logits[step].begin() + (slot + 1) * vocab);
      EXPECT_LT(relative_error(one.logits[step], batched), 1e-4)
          << "slot " << slot << " step " << step;
    }
    for (size_t step = 0; step < one.picks.size(); ++step)
      EXPECT_EQ(one.picks[step][0], got.picks[step][slot]) << "slot " << slot << " step " << step;
  }
}

// --cuda-graph (kernels/cuda_graph.hpp): once every weight is resident, each pass of up to 8
// tokens is recorded and launched as one graph, updated in place as positions change. Its
// results must equal the stream's bit for bit (the same launches, only replayed): prompt chunks,
// single-sequence decode and three sequences decoded together, logits and the device's argmax,
// for Qwen2 (biases) and Qwen3 (per-head norms), the whole model under lru and every weight
// pinned, the f16 KV cache and the f32 one (whose store is a copy node, its address moving).
// A shape (tokens, greedy or not) runs on the stream the first time, so the kernels are loaded.
TEST(GpuForward, CudaGraphStepsEqualTheStreamsBitForBit) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  for (const std::string preset : {"qwen2-tiny", "qwen3-tiny"}) {
    const PackedFile f = PackedFile::open(synthesized(tmp, preset));
    for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin})
      for (const KvType kv : {KvType::f16, KvType::f32}) {
        const CacheOptions all{.enabled = true, .budget_fraction = 1.0, .policy = policy};
        EngineOptions stream_o = options(all, true), graph_o = options(all, true);
        graph_o.device = cuda_forward_factory({.cuda_graph = true});
        stream_o.parallel = graph_o.parallel = 3;
        stream_o.kv = graph_o.kv = kv;
        Engine stream(PackedFile::from_mapping(f.file.mapping()), stream_o);
        Engine graph(PackedFile::from_mapping(f.file.mapping()), graph_o);
        const std::string what = fmt::format("{} {} kv {}", preset, policy_name(policy),
                                             kv == KvType::f16 ? "f16" : "f32");
        for (int round = 0; round < 2; ++round) {  // under lru the first fills the cache
          EXPECT_EQ(run_tokens(graph), run_tokens(stream)) << what << " round " << round;
          const SlotRun a = run_slots(stream, {0, 1, 2}), b = run_slots(graph, {0, 1, 2});
          EXPECT_EQ(b.logits, a.logits) << what << " round " << round;
          EXPECT_EQ(b.picks, a.picks) << what << " round " << round;
        }
        // The second round alone is 14 passes: 2 + 4 of run_tokens, 4 + 4 of run_slots.
        const PassStats g = graph.pass_stats();
        EXPECT_GE(g.graph_launches, 14u) << what;
        EXPECT_GT(g.graph_updates, 0u) << what;
        EXPECT_LT(g.graph_builds, g.graph_launches) << what;
        EXPECT_EQ(g.graph_failures, 0u) << what << ": " << g.graph_error;
        EXPECT_EQ(stream.pass_stats().graph_launches, 0u) << what;
      }
  }
}

TEST(GpuForward, TinyStoriesMatchesTheCpu) {
  FERRY_REQUIRE_GPU();
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "t.ferry", {}, kQuiet);
  expect_gpu_matches_cpu(tmp / "t.ferry", "tinystories");
}

// `ferry perplexity --device cuda` (issue 15): TinyStories (the default INT8 k and v, fused in
// one launch at decode widths) over the perplexity fixture in chunks of 128, batch 8 (the GEMV
// path, fp32 x as on the CPU: logits within 1e-4), the GPU's log-probabilities against the
// CPU's as the KL base.
TEST(GpuForward, PerplexityMatchesTheCpu) {
  FERRY_REQUIRE_GPU();
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "t.ferry", {}, kQuiet);
  std::ifstream in(std::filesystem::path(FERRY_SOURCE_DIR) / "tests/fixtures/perplexity/story.txt");
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  const CacheOptions all{.enabled = true, .budget_fraction = 1.0};
  EngineOptions cpu_o = options(all, false), gpu_o = options(all, true);
  cpu_o.model = gpu_o.model = tmp / "t.ferry";
  cpu_o.ctx = gpu_o.ctx = 128;
  Engine cpu(cpu_o), gpu(gpu_o);
  const PerplexityPlan plan = plan_perplexity(cpu, text, 128, 3);
  const PerplexityResult want = run_perplexity(cpu, plan, {});
  const auto base = base_from_engine(cpu, plan);
  PerplexityRun with_base;
  with_base.base = base.get();
  const PerplexityResult got = run_perplexity(gpu, plan, with_base);
  ASSERT_TRUE(got.kl.has_value());
  std::printf("perplexity cpu %.4f gpu %.4f, KL mean %.3g max %.3g, top-1 %.4f\n", want.ppl,
              got.ppl, got.kl->mean, got.kl->max, got.kl->top1);
  EXPECT_EQ(got.scored, want.scored);
  EXPECT_NEAR(got.ppl, want.ppl, 1e-3 * want.ppl);
  EXPECT_LT(got.kl->mean, 1e-5);
  EXPECT_GE(got.kl->top1, 0.99);
}

TEST(GpuForward, SynthesizedQwen2AndLlama3MatchTheCpu) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  for (const std::string preset : {"qwen2-tiny", "llama3-tiny"})
    expect_gpu_matches_cpu(synthesized(tmp, preset), preset);
}

// Greedy decoding on the GPU picks the CPU's tokens on the real model, whether the device or
// the host takes the argmax.
TEST(GpuForward, TinyStoriesGreedyTokensEqualTheCpus) {
  FERRY_REQUIRE_GPU();
  FERRY_REQUIRE_SHARED_MODEL(dir, "tinystories-656k");
  test::ScratchDir tmp;
  convert_checkpoint(dir, tmp / "t.ferry", {}, kQuiet);
  const PackedFile f = PackedFile::open(tmp / "t.ferry");
  const CacheOptions half{.enabled = true, .budget_fraction = 0.5, .policy = CachePolicy::pin};
  Engine cpu(PackedFile::from_mapping(f.file.mapping()), options(half, false));
  Engine gpu(PackedFile::from_mapping(f.file.mapping()), options(half, true));
  int32_t a = 1, b = 1;
  for (uint64_t pos = 0; pos < 30; ++pos) {
    a = cpu.eval_greedy(std::span(&a, 1), pos);
    if (pos % 2) {  // the device's argmax (4 bytes back) and the host's over copied logits
      b = gpu.eval_greedy(std::span(&b, 1), pos);
    } else {
      gpu.eval(std::span(&b, 1), pos);
      b = int32_t(std::max_element(gpu.logits().begin(), gpu.logits().end()) -
                  gpu.logits().begin());
    }
    ASSERT_EQ(b, a) << "position " << pos;
  }
}

// The f32 KV cache (--kv-type f32) on the GPU against the CPU with the same cache: the whole model
// resident, batches of 8 (GEMV) and 16 (GEMM), with the bounds above.
TEST(GpuForward, F32KvCacheMatchesTheCpu) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-tiny"));
  const CacheOptions all{.enabled = true, .budget_fraction = 1.0};
  EngineOptions cpu_options = options(all, false);
  cpu_options.kv = KvType::f32;
  Engine cpu(PackedFile::from_mapping(f.file.mapping()), cpu_options);
  const auto reference = run_tokens(cpu);
  for (const uint64_t batch : {8, 16}) {
    EngineOptions o = options(all, true, batch);
    o.kv = KvType::f32;
    Engine gpu(PackedFile::from_mapping(f.file.mapping()), o);
    const auto got = run_tokens(gpu);
    for (size_t call = 0; call < got.size(); ++call)
      EXPECT_LT(relative_error(got[call], reference[call]), batch > 8 ? 3e-2 : 1e-4)
          << "batch " << batch << " call " << call;
  }
}

// Past several attention chunks and one round of queries (64): a 600-token prompt in
// batches of 512 (the GPU's default: GEMM, rounds of the chunked attention) and of 8 (GEMV), then
// decode steps over the KV cache they wrote, against the CPU at batch 64, half the model cached.
TEST(GpuForward, LongPromptMatchesTheCpu) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-tiny"));
  // 600 ids below qwen2-tiny's vocabulary of 512
  const std::vector<int32_t> prompt = test::spread_prompt(600, 500);
  const CacheOptions half{.enabled = true, .budget_fraction = 0.5, .policy = CachePolicy::pin};
  auto run = [&](bool gpu, uint64_t batch) {
    EngineOptions o = options(half, gpu, batch);
    o.ctx = 640;
    Engine e(PackedFile::from_mapping(f.file.mapping()), o);
    return test::logits_after_prompt(e, prompt, 3);
  };
  const auto reference = run(false, 64);
  for (const uint64_t batch : {512, 8}) {
    const auto got = run(true, batch);
    for (size_t call = 0; call < got.size(); ++call) {
      const double err = relative_error(got[call], reference[call]);
      std::printf("qwen2-tiny 600 tokens batch %llu call %zu: relative logits error %.2e\n",
                  (unsigned long long)batch, call, err);
      // batch 512: the KV cache was written from GEMM outputs (x rounded to bf16), as above.
      EXPECT_LT(err, batch > 8 ? 3e-2 : 1e-4) << "batch " << batch << " call " << call;
    }
  }
}

// The compute stream's waits on uploads still in flight count in the cache's wait time: none once
// every weight is resident, and never more than the wall time of the calls.
TEST(GpuForward, DeviceWaitsAreCounted) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-tiny"));
  const ModelWeights w = bind_weights(f);
  const Schedule s = paging_schedule(f, w, CacheFormat::int4);
  for (const bool whole : {true, false}) {
    const CacheOptions c{.enabled = true,
                         .budget_bytes = whole ? s.whole_bytes() : s.minimum_budget()};
    Engine gpu(PackedFile::from_mapping(f.file.mapping()), options(c, true));
    run_tokens(gpu);  // the first uploads
    const CacheStats before = *gpu.cache_stats();
    const auto t0 = std::chrono::steady_clock::now();
    run_tokens(gpu);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const CacheStats after = *gpu.cache_stats();
    const double waited = after.wait_seconds - before.wait_seconds;
    const double on_device = after.device_wait_seconds - before.device_wait_seconds;
    std::printf("qwen2-tiny budget %s: waited %.3f ms of %.3f ms\n", whole ? "all" : "minimum",
                1e3 * waited, 1e3 * elapsed);
    if (whole) {
      EXPECT_EQ(waited, 0.0);
    } else {
      // At the minimum budget each upload waits for the previous weight's last use, which the
      // host has not seen happen when it enqueues the next product: the stream waits on it.
      EXPECT_GT(on_device, 0.0);
      EXPECT_LT(on_device, elapsed);
    }
  }
}

// The stress modes (cache/backend.hpp) on the device: a 200 us spin kernel before every upload on
// the copy stream and before every last-use event on the compute stream, and every evicted entry
// memset to 0xFF on the copy stream. A forgotten wait then reads NaNs or the wrong weight; with
// the waits right, the logits at the minimum budget equal the all-resident run's bit for bit.
// The resident run also takes the fused decode launches (q/k/v in one grid, gate+up paired, with
// the weights held together: runtime/forward_cuda.cpp), the minimum budget the separate ones, so
// equal bits hold the fusion to the unfused steps too.
// qwen2-small streams uploads long enough to overlap kernels for real.
TEST(GpuForward, RaceAndPoisonStressLeavesLogitsBitIdentical) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  for (const std::string preset : {"qwen2-tiny", "qwen2-small"}) {
    const PackedFile f = PackedFile::open(synthesized(tmp, preset));
    const ModelWeights w = bind_weights(f);
    for (const CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
      const CacheOptions all{.enabled = true, .budget_fraction = 1.0, .format = format};
      Engine resident(PackedFile::from_mapping(f.file.mapping()), options(all, true));
      const auto reference = run_tokens(resident);
      for (const CachePolicy policy : {CachePolicy::lru, CachePolicy::pin}) {
        const CacheOptions c{.enabled = true,
                             .budget_bytes = paging_schedule(f, w, format).minimum_budget(),
                             .policy = policy,
                             .format = format,
                             .stress = {.race = true, .poison = true}};
        Engine gpu(PackedFile::from_mapping(f.file.mapping()), options(c, true));
        const std::string what =
            fmt::format("{} {} {}", preset, format_name(format), policy_name(policy));
        EXPECT_EQ(run_tokens(gpu), reference) << what;
        EXPECT_GT(gpu.cache_stats()->evictions, 0u) << what;
      }
    }
  }
}

// A host store that could not be pinned (here: asked not to be) uploads through the pinned bounce
// ring (cache/bounce_ring_cuda.hpp), 8 MB chunks through 4 slots, each enqueued under the copy
// stream's lock: at the minimum budget, with the race stress delaying every upload, the logits
// equal the pinned, all-resident run's bit for bit.
TEST(GpuForward, PageableHostStoreUploadsThroughTheBounceRing) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-small"));
  const ModelWeights w = bind_weights(f);
  for (const CacheFormat format : {CacheFormat::int4, CacheFormat::bf16}) {
    const CacheOptions all{.enabled = true, .budget_fraction = 1.0, .format = format};
    Engine resident(PackedFile::from_mapping(f.file.mapping()), options(all, true));
    const auto reference = run_tokens(resident);
    const CacheOptions c{.enabled = true,
                         .budget_bytes = paging_schedule(f, w, format).minimum_budget(),
                         .format = format,
                         .stress = {.race = true}};
    EngineOptions o = options(c, true);
    o.device = cuda_forward_factory({.bf16_cache = format == CacheFormat::bf16, .pin_host = false});
    Engine pageable(PackedFile::from_mapping(f.file.mapping()), o);
    EXPECT_EQ(run_tokens(pageable), reference) << format_name(format);
    EXPECT_GT(pageable.cache_stats()->evictions, 0u) << format_name(format);
  }
}

// A budget above what --vram-limit leaves is a clear error, not an out-of-memory crash.
TEST(GpuForward, VramLimitCapsTheBudget) {
  FERRY_REQUIRE_GPU();
  test::ScratchDir tmp;
  const PackedFile f = PackedFile::open(synthesized(tmp, "qwen2-tiny"));
  EngineOptions o = options({.enabled = true, .budget_bytes = 1ull << 40}, false);
  o.device = cuda_forward_factory({.vram_limit = 1ull << 30});
  EXPECT_THROW(Engine(PackedFile::from_mapping(f.file.mapping()), o), Error);
}

}  // namespace
}  // namespace ferry
