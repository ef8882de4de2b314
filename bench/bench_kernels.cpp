// The CPU matrix kernels (kernels/matmul.hpp) in GB/s of weight bytes read, beside the host's
// memory bandwidth measured in the same run (runtime/bandwidth.hpp): decode (n = 1) reads each
// weight once per token, so read bandwidth bounds it; prefill (n = 64) reuses each weight for 64
// tokens and is bound by arithmetic instead.
//   bench_kernels                    every core; FERRY_THREADS=1 for one
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/matmul.hpp"
#include "quantizer/int4.hpp"
#include "runtime/bandwidth.hpp"

namespace {

using namespace ferry;

unsigned threads() {
  const char* t = std::getenv("FERRY_THREADS");
  return t ? unsigned(std::atoi(t)) : 0;
}

CpuPool& pool() {
  static CpuPool p(threads());  // one pool for the whole benchmark binary
  return p;
}

const HostBandwidth& host() {
  static const HostBandwidth bw = measure_host_bandwidth(pool());
  return bw;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Weights {
  std::vector<uint8_t> q;              // [rows, blocks * 64]
  std::vector<uint16_t> scales, mins;  // [rows, blocks]
  std::vector<uint16_t> bf16;          // [rows, cols]
};

Weights make(uint64_t rows, uint64_t cols, bool int4) {
  std::mt19937 rng(7);
  Weights w;
  if (int4) {
    const uint64_t blocks = int4_blocks_per_row(cols);
    w.q.resize(rows * blocks * kBlockBytes);
    for (auto& b : w.q) b = uint8_t(rng());
    w.scales.assign(rows * blocks, 0x2000);  // f16 0.0078
    w.mins.assign(rows * blocks, 0xa000);    // f16 -0.0078
  } else {
    w.bf16.resize(rows * cols);
    for (auto& v : w.bf16) v = uint16_t(0x3c00 + (rng() & 0xff));
  }
  return w;
}

// seconds: wall time of the timed loop (the pool's threads do the work, so CPU time of the
// benchmark thread would overstate the rate).
void report(benchmark::State& state, double weight_bytes, double seconds) {
  const double gbps = seconds > 0 ? weight_bytes * double(state.iterations()) / seconds / 1e9 : 0;
  state.counters["weights_GB/s"] = gbps;
  state.counters["frac_of_read"] = gbps / host().read_gbps;
  state.counters["host_read_GB/s"] = host().read_gbps;
  state.counters["host_memcpy_GB/s"] = host().memcpy_gbps;
  state.counters["threads"] = pool().size();
}

// args: rows, cols, n, mins (asym) 0/1
void int4(benchmark::State& state) {
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const bool asym = state.range(3) != 0;
  const Weights w = make(rows, cols, true);
  std::vector<float> x(n * cols, 0.25f), y(n * rows);
  host();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state)
    matmul_int4_cpu(pool(), w.q.data(), w.scales.data(), asym ? w.mins.data() : nullptr, rows, cols,
                    x.data(), n, y.data());
  report(state, double(w.q.size() + 2 * w.scales.size() * (asym ? 2 : 1)), since(t0));
}

void bf16(benchmark::State& state) {
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const Weights w = make(rows, cols, false);
  std::vector<float> x(n * cols, 0.25f), y(n * rows);
  host();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) matmul_bf16_cpu(pool(), w.bf16.data(), rows, cols, x.data(), n, y.data());
  report(state, double(w.bf16.size() * 2), since(t0));
}

void host_bandwidth(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(host());
  report(state, 0, 0);
}

BENCHMARK(host_bandwidth)->Iterations(1);
BENCHMARK(int4)
    ->ArgNames({"rows", "cols", "n", "asym"})
    ->Args({4096, 4096, 1, 1})
    ->Args({4096, 4096, 1, 0})
    ->Args({11008, 4096, 1, 1})
    ->Args({4096, 11008, 1, 1})
    ->Args({4096, 4096, 64, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(bf16)
    ->ArgNames({"rows", "cols", "n"})
    ->Args({4096, 4096, 1})
    ->Args({11008, 4096, 1})
    ->Args({4096, 4096, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
