// End-to-end CPU generation benchmark on a synthesized model of a few hundred MB: prefill
// tokens/s and decode tokens/s, with the GB/s of weights decode reads beside the machine's memory
// copy bandwidth measured in the same run (decode at batch 1 streams every weight once per
// token, so the host read bandwidth over packed bytes per token is its bound).
//
//   bench_decode                     qwen2-small (~307 MB bf16, ~90 MB packed), asym-clip and bf16
// FERRY_BENCH_DIR chooses the scratch directory (default /tmp), FERRY_THREADS the thread count.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "quantizer/convert.hpp"
#include "quantizer/synth.hpp"
#include "runtime/engine.hpp"
#include "runtime/machine/bandwidth.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path scratch() {
  const char* d = std::getenv("FERRY_BENCH_DIR");
  return fs::path(d ? d : "/tmp") / "ferry-bench-decode";
}

unsigned threads() {
  const char* t = std::getenv("FERRY_THREADS");
  return t ? unsigned(std::atoi(t)) : 0;
}

// Synthesizes (once) and converts (once per scheme) the benchmark model.
fs::path packed_model(const std::string& scheme) {
  const fs::path hf = scratch() / "qwen2-small";
  if (!fs::exists(hf / "config.json")) {
    ferry::SynthOptions o;
    o.preset = "qwen2-small";
    ferry::synth_checkpoint(hf, o, [](std::string_view, uint64_t, uint64_t) {});
  }
  const fs::path out = scratch() / ("qwen2-small-" + scheme + ".ferry");
  if (!fs::exists(out)) {
    ferry::ConvertOptions o;
    o.scheme = *ferry::parse_scheme(scheme);
    ferry::convert_checkpoint(hf, out, o, [](std::string_view, uint64_t, uint64_t) {});
  }
  return out;
}

void decode(benchmark::State& state, const char* scheme) {
  const fs::path model = packed_model(scheme);
  ferry::Engine e({.model = model, .ctx = 512, .batch = 64, .threads = threads()});
  const std::vector<int32_t> prompt(128, 100);
  const double bytes = ferry::weight_bytes_per_token(e.file());
  const uint64_t gen = 32;
  double prefill_s = 0, decode_s = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    e.eval(prompt, 0);
    const auto t1 = Clock::now();
    for (uint64_t i = 0; i < gen; ++i) {
      const int32_t tok = int32_t(100 + i);
      e.eval(std::span(&tok, 1), prompt.size() + i);
    }
    prefill_s += std::chrono::duration<double>(t1 - t0).count();
    decode_s += std::chrono::duration<double>(Clock::now() - t1).count();
  }
  const double iters = double(state.iterations());
  const double decode_tps = double(gen) * iters / decode_s;
  const ferry::HostBandwidth bw = ferry::measure_host_bandwidth(e.pool());
  state.counters["prefill_tok/s"] = double(prompt.size()) * iters / prefill_s;
  state.counters["decode_tok/s"] = decode_tps;
  state.counters["decode_GB/s"] = decode_tps * bytes / 1e9;
  state.counters["host_read_GB/s"] = bw.read_gbps;
  state.counters["host_memcpy_GB/s"] = bw.memcpy_gbps;
  state.counters["frac_of_read"] = decode_tps * bytes / 1e9 / bw.read_gbps;
  state.counters["packed_MB/token"] = bytes / 1e6;
}

BENCHMARK_CAPTURE(decode, qwen2_small_asym_clip, "asym-clip")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);
BENCHMARK_CAPTURE(decode, qwen2_small_bf16, "bf16")->Unit(benchmark::kMillisecond)->Iterations(2);

}  // namespace

BENCHMARK_MAIN();
