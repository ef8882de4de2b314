// End-to-end conversion benchmark: synthesizes a bf16 checkpoint, runs `ferry quantize` on it as
// a child process and reports input GB/s and the child's peak resident memory (wait4 rusage).
//
//   bench_convert                                  qwen2-small (~300 MB), every scheme
//   FERRY_BENCH_LARGE=1 bench_convert --benchmark_filter=8GB
//                                                  llama3-8b shapes cut to 14 layers (8.2 GB)
// FERRY_BENCH_DIR chooses the scratch directory (default /tmp; the 8 GB case needs ~11 GB free).
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "quantizer/checkpoint.hpp"
#include "quantizer/synth.hpp"

namespace {

std::filesystem::path scratch() {
  const char* d = std::getenv("FERRY_BENCH_DIR");
  return std::filesystem::path(d ? d : "/tmp") / "ferry-bench-convert";
}

// Runs `ferry quantize` and returns {seconds, peak RSS bytes}; -1 seconds on failure.
std::pair<double, double> run_quantize(const std::filesystem::path& hf,
                                       const std::filesystem::path& out,
                                       const std::string& scheme) {
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    execl(FERRY_BINARY, FERRY_BINARY, "quantize", hf.c_str(), "-o", out.c_str(), "-s",
          scheme.c_str(), "-q", nullptr);
    _exit(127);
  }
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {WIFEXITED(status) && WEXITSTATUS(status) == 0 ? s : -1.0, double(ru.ru_maxrss) * 1024.0};
}

void convert(benchmark::State& state, const char* preset, int layers, const std::string& scheme) {
  const std::filesystem::path hf = scratch() / (std::string(preset) + "-" + std::to_string(layers));
  if (!std::filesystem::exists(hf / "config.json")) {
    ferry::SynthOptions o;
    o.preset = preset;
    if (layers > 0) o.layers = uint64_t(layers);
    ferry::synth_checkpoint(hf, o, [](std::string_view, uint64_t, uint64_t) {});
  }
  const double input = double(ferry::Checkpoint::open(hf).total_bytes());
  for (auto _ : state) {
    const auto [seconds, rss] = run_quantize(hf, scratch() / "out.ferry", scheme);
    if (seconds < 0) {
      state.SkipWithError("ferry quantize failed");
      return;
    }
    state.SetIterationTime(seconds);
    state.counters["input_GB"] = input / 1e9;
    state.counters["GB_per_s"] = input / seconds / 1e9;
    state.counters["peak_rss_MB"] = rss / 1e6;
  }
  std::filesystem::remove(scratch() / "out.ferry");
}

}  // namespace

BENCHMARK_CAPTURE(convert, small_sym, "qwen2-small", 0, "sym")
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(convert, small_asym, "qwen2-small", 0, "asym")
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kSecond);
BENCHMARK_CAPTURE(convert, small_asym_clip, "qwen2-small", 0, "asym-clip")
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kSecond);
// The 8 GB case takes minutes and ~11 GB of disk: only with FERRY_BENCH_LARGE=1.
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (std::getenv("FERRY_BENCH_LARGE"))
    benchmark::RegisterBenchmark("convert/8GB_asym_clip", convert, "llama3-8b", 14,
                                 std::string("asym-clip"))
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kSecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
