#include "tools/bench_sweep.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <span>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"
#include "runtime/machine/bandwidth.hpp"
#include "runtime/machine/host_memory.hpp"
#include "runtime/perf_model.hpp"
#include "tools/commands.hpp"
#include "tools/option_names.hpp"
#ifdef FERRY_HAVE_CUDA
#include "runtime/machine/cuda_device.hpp"
#endif

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

Bandwidths measure_host(unsigned threads) {
  Bandwidths bw;
  CpuPool pool(threads);
  const HostBandwidth h = measure_host_bandwidth(pool);
  bw.read_gbps = h.read_gbps;
  bw.upload_gbps = bw.memcpy_gbps = h.memcpy_gbps;
  std::fprintf(stderr, "host memory: read %.1f GB/s, memcpy %.1f GB/s (%u threads)\n", h.read_gbps,
               h.memcpy_gbps, pool.size());
  return bw;
}

Bandwidths measure_gpu() {
#ifdef FERRY_HAVE_CUDA
  Bandwidths bw;
  const GpuInfo g = probe_gpu();
  bw.device = fmt::format("cuda: {} (sm_{}{})", g.name, g.major, g.minor);
  // The prefetcher uploads one weight part per call: 1 to 64 MB covers a 7B's smallest (k_proj,
  // ~0.3 MB) to a 32B's largest (gate/up, 75 MB packed) within a factor of two.
  std::vector<uint64_t> chunks;
  for (uint64_t mb = 1; mb <= 64; mb *= 2) chunks.push_back(mb << 20);
  for (const CopyBandwidth& c : measure_h2d(chunks, 256ull << 20))
    bw.h2d.push_back({c.chunk_bytes, c.pinned_gbps, c.pageable_gbps});
  bw.memcpy_gbps = measure_d2d_gbps(1ull << 30);
  bw.read_gbps = bw.memcpy_gbps;  // a copy reads and writes: the same bus traffic as reading
  bw.upload_gbps = bw.h2d.back().pinned_gbps;
  std::fprintf(stderr, "%s\nhost to device by chunk:   pinned  pageable (GB/s)\n",
               bw.device.c_str());
  for (const Bandwidths::Chunk& c : bw.h2d)
    std::fprintf(stderr, "  %6llu MB %16.1f %9.1f\n", (unsigned long long)(c.bytes >> 20),
                 c.pinned_gbps, c.pageable_gbps);
  std::fprintf(stderr, "device to device: %.0f GB/s\n", bw.memcpy_gbps);
  return bw;
#else
  throw Error("this build of ferry has no CUDA backend; use --device cpu");
#endif
}

// The cache's counters over the decode steps, into r; returns the bytes streamed per step.
double record_cache(const Engine& e, const CacheStats& before, uint64_t gen, double decode_s,
                    BenchRow& r) {
  const CacheStats s = e.paged()->stats();
  r.budget_gb = double(s.arena_bytes) / 1e9;
  const double streamed = double(s.uploaded_bytes - before.uploaded_bytes) / double(gen);
  r.upload_gb_per_step = streamed / 1e9;
  r.upload_gb_per_token = r.upload_gb_per_step / double(r.config.parallel);
  const uint64_t uses = s.acquires - before.acquires;
  r.hit_rate = uses ? double(s.hits - before.hits) / double(uses) : 0;
  r.wait_fraction = (s.wait_seconds - before.wait_seconds) / decode_s;
  return streamed;
}

}  // namespace

Bandwidths measure_bandwidths(bool gpu, unsigned threads) {
  return gpu ? measure_gpu() : measure_host(threads);
}

std::vector<BenchConfig> sweep_configs(const std::vector<std::string>& budgets,
                                       const std::vector<std::string>& policies,
                                       const std::vector<std::string>& formats,
                                       const std::vector<uint64_t>& parallels, bool gpu) {
  std::vector<BenchConfig> configs;
  for (const auto& b : budgets) {
    if (b == "none" && !gpu) {  // one run per parallel: policy and format do not apply
      for (uint64_t n : parallels) configs.push_back({b, "-", "-", n});
      continue;
    }
    for (const auto& p : policies)
      for (const auto& f : formats)
        for (uint64_t n : parallels) configs.push_back({b == "none" ? "auto" : b, p, f, n});
  }
  return configs;
}

EngineOptions config_options(const BenchConfig& c, const SweepSetup& s) {
  EngineOptions o = s.base;
  o.parallel = c.parallel;
  if (c.budget != "none") {
    o.cache = parse_cache_options(c.budget, c.policy, c.format, s.lookahead);
    o.cache.verify = s.verify;
  }
  if (s.device) o.device = s.device(o.cache);
  return o;
}

void check_sweep_memory(const PackedFile& file, const std::vector<BenchConfig>& configs,
                        const SweepSetup& s) {
  const uint64_t have = host_memory_available();
  if (have == 0) return;
  for (const BenchConfig& c : configs) {
    const EngineOptions o = config_options(c, s);
    // The decode logits of every sequence, [parallel, vocab] floats, beside what the engine holds.
    const uint64_t need =
        host_bytes_needed(file, o) + c.parallel * file.config.vocab * sizeof(float);
    if (need > have)
      throw Error(fmt::format(
          "the run budget {}, policy {}, format {}, parallel {} needs {} of host memory (KV "
          "slots, activations, the cache's copy of the weights and a CPU arena) and {} is "
          "available with the model loaded: drop it from --budgets or --parallel, or lower "
          "--prompt/--gen/--ctx",
          c.budget, c.policy, c.format, c.parallel, human_bytes(double(need)),
          human_bytes(double(have))));
  }
}

namespace {

// Each slot's prompt in chunks of the prefill batch; returns the seconds it took.
double prefill_slots(Engine& e, const std::vector<int32_t>& ids, std::span<float> logits,
                     std::span<int32_t> next) {
  const auto t0 = Clock::now();
  for (uint64_t slot = 0; slot < e.parallel(); ++slot)
    for (uint64_t i = 0; i < ids.size(); i += e.batch()) {
      const uint64_t n = std::min<uint64_t>(e.batch(), ids.size() - i);
      const SeqChunk c{slot, i, std::span(ids).subspan(i, n)};
      e.eval_seqs(std::span(&c, 1), logits.first(e.config().vocab), next.subspan(slot, 1));
    }
  return seconds_since(t0);
}

// `gen` greedy steps, each one token of every slot (chosen on the device where there is one);
// returns the seconds they took.
double decode_slots(Engine& e, uint64_t prompt, uint64_t gen, std::span<float> logits,
                    std::span<int32_t> next) {
  std::vector<int32_t> token(next.begin(), next.end());  // [parallel] each slot's input
  std::vector<SeqChunk> step(e.parallel());
  const auto t0 = Clock::now();
  for (uint64_t i = 0; i < gen; ++i) {
    for (uint64_t slot = 0; slot < step.size(); ++slot)
      step[slot] = {slot, prompt + i, std::span(&token[slot], 1)};
    e.eval_seqs(step, logits, next);
    std::copy(next.begin(), next.end(), token.begin());
  }
  return seconds_since(t0);
}

// One untimed prefill chunk and decode step in slot 0 before the timed runs: a process's first
// pass loads its CUDA modules and cuBLASLt plans and faults the weights' pages in, which the
// first H200 sweep's first row paid inside its prefill (686 tokens/s, against 1442 for the same
// model in the next row). The timed prefill starts at position 0 and rewrites those KV rows.
void warm_up(Engine& e, const std::vector<int32_t>& ids, std::span<float> logits,
             std::span<int32_t> next) {
  const uint64_t n = std::min<uint64_t>(e.batch(), ids.size() - 1);
  const SeqChunk chunk{0, 0, std::span(ids).first(n)};
  e.eval_seqs(std::span(&chunk, 1), logits.first(e.config().vocab), next.first(1));
  const SeqChunk step{0, n, std::span(ids).subspan(n, 1)};
  e.eval_seqs(std::span(&step, 1), logits.first(e.config().vocab), next.first(1));
}

}  // namespace

BenchRow run_config(const PackedFile& file, const BenchConfig& c, const SweepSetup& s,
                    const Bandwidths& bw) {
  const EngineOptions o = config_options(c, s);
  Engine e(PackedFile::from_mapping(file.file.mapping()), o);
  warn_about_context(e);
  std::mt19937 rng(1);
  std::vector<int32_t> ids(s.prompt);
  for (int32_t& t : ids) t = int32_t(rng() % e.config().vocab);
  std::vector<float> logits(c.parallel * e.config().vocab);  // [parallel, vocab]
  std::vector<int32_t> next(c.parallel);                     // [parallel] greedy choices
  if (ids.size() > 1) warm_up(e, ids, logits, next);
  // Each pass rewrites the same KV rows: every prefill from position 0, every decode from the
  // prompt's end with the same first tokens.
  double prefill_s = 0, decode_s = 0;
  for (uint64_t i = 0; i < s.repeat; ++i) prefill_s += prefill_slots(e, ids, logits, next);
  const CacheStats before = e.paged() ? e.paged()->stats() : CacheStats{};
  const uint64_t graphs_before = e.pass_stats().graph_launches;
  const std::vector<int32_t> first(next);
  for (uint64_t i = 0; i < s.repeat; ++i) {
    std::copy(first.begin(), first.end(), next.begin());
    decode_s += decode_slots(e, s.prompt, s.gen, logits, next);
  }
  const double batch = double(c.parallel);
  const double prompt_tokens = double(s.prompt * s.repeat), gen_tokens = double(s.gen * s.repeat);
  BenchRow r{.config = c,
             .prefill_tps = batch * prompt_tokens / prefill_s,
             .decode_tps = batch * gen_tokens / decode_s,
             .seq_decode_tps = gen_tokens / decode_s,
             .graph_fraction = double(e.pass_stats().graph_launches - graphs_before) / gen_tokens};
  // bf16 entries are read at 2 bytes a weight instead of ~0.53: count what the kernels read.
  double w = weight_bytes_per_token(file);
  if (e.paged())
    w += double(e.paged()->weight_bytes()) -
         double(paging_schedule(e.file(), e.weights(), CacheFormat::int4).whole_bytes());
  r.gb_per_step = w / 1e9;
  r.gb_per_token = r.gb_per_step / batch;
  r.budget_gb = w / 1e9;
  const double streamed = e.paged() ? record_cache(e, before, s.gen * s.repeat, decode_s, r) : 0;
  // Attention reads every layer's k and v rows once per token too: small at short contexts, but
  // Qwen2-32B at 4k positions reads 1.1 GB of f16 cache a token beside its 17 GB of weights, and
  // at 32k 8.6 GB, half the weights' bytes. The batch's arithmetic is priced at this run's own
  // prefill rate (tokens/s at --batch tokens a pass, where compute rather than reading bounds).
  const TokenTraffic t{.weight_bytes = w,
                       .kv_bytes = mean_kv_bytes_per_token(kv_bytes_per_position(e.config(), o.kv),
                                                           double(s.prompt), double(s.gen)),
                       .streamed_bytes = streamed,
                       .read_bw = bw.read_gbps * 1e9,
                       .copy_bw = bw.upload_gbps * 1e9,
                       .batch = batch,
                       .compute_seconds = prefill_s / (batch * prompt_tokens)};
  r.bound_tps = tokens_per_second_bound(t);
  r.ratio = r.bound_tps / r.decode_tps;
  return r;
}

std::vector<BenchRow> run_sweep(const PackedFile& file, const std::vector<BenchConfig>& configs,
                                const SweepSetup& s, const Bandwidths& bw,
                                const std::function<void(const BenchRow&)>& on_row) {
  std::vector<BenchRow> rows;
  for (size_t i = 0; i < configs.size(); ++i) {
    const BenchConfig& c = configs[i];
    std::fprintf(stderr, "[%zu/%zu] budget %s, policy %s, format %s, parallel %llu\n", i + 1,
                 configs.size(), c.budget.c_str(), c.policy.c_str(), c.format.c_str(),
                 (unsigned long long)c.parallel);
    try {
      rows.push_back(run_config(file, c, s, bw));
    } catch (const Error& e) {  // e.g. a budget below the minimum: the sweep goes on
      std::fprintf(stderr, "  skipped: %s\n", cli_message(e, "bench").c_str());
      continue;
    }
    on_row(rows.back());
  }
  return rows;
}

}  // namespace ferry
