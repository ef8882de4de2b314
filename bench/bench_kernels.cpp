// The CPU matrix kernels (kernels/matmul.hpp) in GB/s of weight bytes read, beside the host's
// memory bandwidth measured in the same run (runtime/bandwidth.hpp) on one thread and on the
// pool: decode (n = 1) reads each weight once per token, so read bandwidth bounds it (memcpy
// bandwidth, bytes copied per second, moves each byte twice and is the lower figure); prefill
// (n = 64) reuses each weight for 64 tokens and is bound by arithmetic instead. attention reads
// the KV cache (weights_GB/s there counts the k and v rows each query sees, once per kv head).
// pool_dispatch is the round trip of an empty parallel_for over every thread.
//   bench_kernels                    every core; FERRY_THREADS=1 for one
#include <benchmark/benchmark.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "format/int4.hpp"
#include "kernels/attention.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/matmul.hpp"
#include "kernels/matmul_int8.hpp"
#include "runtime/machine/bandwidth.hpp"

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

const HostBandwidth& host_one_thread() {
  static const HostBandwidth bw = [] {
    CpuPool one(1);
    return measure_host_bandwidth(one, 256ull << 20);  // 8x the 32 MB L3
  }();
  return bw;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Enough copies of one matrix that a pass over them all is far larger than the last-level cache
// (32 MB here): a 4096 x 4096 INT4 matrix (8.9 MB) alone would be served from L3, not DRAM.
constexpr uint64_t kWorkingSet = 256ull << 20;

struct Weights {
  uint64_t copies = 1;
  std::vector<uint8_t> q;              // [copies, rows, blocks * 64]
  std::vector<uint16_t> scales, mins;  // [copies, rows, blocks]
  std::vector<uint16_t> bf16;          // [copies, rows, cols]
  uint64_t bytes = 0;                  // weight bytes of one copy (mins counted only if asym)
};

template <class T>
void replicate(std::vector<T>& v, uint64_t copies) {
  const uint64_t one = v.size();
  v.resize(one * copies);
  for (uint64_t c = 1; c < copies; ++c) std::copy(v.begin(), v.begin() + one, v.begin() + c * one);
}

Weights make(uint64_t rows, uint64_t cols, bool int4, bool asym) {
  std::mt19937 rng(7);
  Weights w;
  if (int4) {
    const uint64_t blocks = int4_blocks_per_row(cols);
    w.q.resize(rows * blocks * kBlockBytes);
    for (auto& b : w.q) b = uint8_t(rng());
    w.scales.assign(rows * blocks, 0x2000);  // f16 0.0078
    w.mins.assign(rows * blocks, 0xa000);    // f16 -0.0078
    w.bytes = w.q.size() + 2 * w.scales.size() * (asym ? 2 : 1);
  } else {
    w.bf16.resize(rows * cols);
    for (auto& v : w.bf16) v = uint16_t(0x3c00 + (rng() & 0xff));
    w.bytes = 2 * w.bf16.size();
  }
  w.copies = (kWorkingSet + w.bytes - 1) / w.bytes;
  replicate(w.q, w.copies);
  replicate(w.scales, w.copies);
  replicate(w.mins, w.copies);
  replicate(w.bf16, w.copies);
  return w;
}

// seconds: wall time of the timed loop (the pool's threads do the work, so CPU time of the
// benchmark thread would overstate the rate).
void report(benchmark::State& state, double weight_bytes, double seconds) {
  const double gbps = seconds > 0 ? weight_bytes * double(state.iterations()) / seconds / 1e9 : 0;
  state.counters["weights_GB/s"] = gbps;
  state.counters["frac_of_read"] = gbps / host().read_gbps;
  state.counters["frac_of_memcpy"] = gbps / host().memcpy_gbps;
  state.counters["threads"] = pool().size();
}

// args: rows, cols, n, mins (asym) 0/1, q8: 1 for matmul_int4_q8_cpu (activations in INT8,
// integer SIMD), 0 for matmul_int4_cpu (fp32 activations). GMAC/s: weight-token products.
void int4(benchmark::State& state) {
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  // q8: 0 the fp32-activation path; 1 INT4 x INT8 on the best ISA (the AVX-512 tile where the CPU
  // has AVX-512 VNNI); 2 INT4 x INT8 held to AVX2, to compare the two tiles on one machine.
  const bool asym = state.range(3) != 0;
  const int64_t q8 = state.range(4);
  const KernelIsa isa = q8 == 2 ? KernelIsa::avx2 : best_kernel_isa();
  const Weights w = make(rows, cols, true, asym);
  const uint64_t q_size = w.q.size() / w.copies, s_size = w.scales.size() / w.copies;
  std::vector<float> x(n * cols, 0.25f), y(n * rows);
  host();
  uint64_t c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const uint64_t s_at = c * s_size;
    const Int4View v{w.q.data() + c * q_size, w.scales.data() + s_at,
                     asym ? w.mins.data() + s_at : nullptr, rows, cols};
    q8 ? matmul_int4_q8_cpu(pool(), v, x.data(), n, y.data(), isa)
       : matmul_int4_cpu(pool(), v, x.data(), n, y.data());
    c = (c + 1) % w.copies;
  }
  const double seconds = since(t0);
  report(state, double(w.bytes), seconds);
  state.counters["GMAC/s"] = double(rows * cols * n) * double(state.iterations()) / seconds / 1e9;
}

void bf16(benchmark::State& state) {
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const Weights w = make(rows, cols, false, false);
  std::vector<float> x(n * cols, 0.25f), y(n * rows);
  host();
  uint64_t c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    matmul_bf16_cpu(pool(), w.bf16.data() + c * rows * cols, rows, cols, x.data(), n, y.data());
    c = (c + 1) % w.copies;
  }
  report(state, double(w.bytes), since(t0));
}

// args: rows, cols, n, q8: 1 for matmul_int8_q8_cpu (activations in INT8, integer SIMD, the
// best ISA), 2 the same on the AVX2 tile (for comparison on an AVX-512 CPU), 0 for
// matmul_int8_cpu (codes widened to fp32). INT8 block-128 weights: the lm_head's default format.
void int8(benchmark::State& state) {
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const int64_t q8 = state.range(3);
  const KernelIsa isa = q8 == 2 ? KernelIsa::avx2 : best_kernel_isa();
  const uint64_t blocks = int4_blocks_per_row(cols), one = rows * blocks * kBlock;
  const uint64_t copies = (kWorkingSet + one - 1) / one;
  std::vector<int8_t> q(one);
  std::mt19937 rng(7);
  for (auto& b : q) b = int8_t(int(rng() % 255) - 127);
  replicate(q, copies);
  std::vector<uint16_t> scales(rows * blocks * copies, 0x2000);
  std::vector<float> x(n * cols, 0.25f), y(n * rows);
  host();
  uint64_t c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const Int8View v{q.data() + c * one, scales.data() + c * rows * blocks, rows, cols};
    q8 ? matmul_int8_q8_cpu(pool(), v, x.data(), n, y.data(), isa)
       : matmul_int8_cpu(pool(), v, x.data(), n, y.data());
    c = (c + 1) % copies;
  }
  report(state, double(one + 2 * rows * blocks), since(t0));
}

// args: context length, queries, f16 (1: the default f16 KV cache, 0: f32). Qwen2-32B's attention
// (40 heads, 8 kv heads, head_dim 128) over one layer's KV cache: GB/s of the cache read, each
// visible k and v row counted once per query (the 5 query heads of a kv head share its rows
// through the caches).
void attention(benchmark::State& state) {
  const uint64_t ctx = state.range(0), n = state.range(1), heads = 40, kv_heads = 8, hd = 128;
  const bool f16 = state.range(2) != 0;
  const uint64_t pos = ctx - n;
  std::vector<float> q(n * heads * hd, 0.1f), out(n * heads * hd);
  std::vector<float> k(ctx * kv_heads * hd, 0.01f), v(ctx * kv_heads * hd, 0.02f);
  std::vector<uint16_t> k16(f16 ? k.size() : 0), v16(f16 ? v.size() : 0);
  store_f16_cpu(k.data(), k16.size(), k16.data());
  store_f16_cpu(v.data(), v16.size(), v16.data());
  std::vector<float> partials(attention_scratch_floats(n, ctx, heads, hd));
  host();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state)
    if (f16)
      attention_cpu(pool(), q.data(), k16.data(), v16.data(), n, pos, heads, kv_heads, hd,
                    partials.data(), out.data());
    else
      attention_cpu(pool(), q.data(), k.data(), v.data(), n, pos, heads, kv_heads, hd,
                    partials.data(), out.data());
  double bytes = 0;
  const double element = f16 ? 2 : 4;
  for (uint64_t t = 0; t < n; ++t)
    bytes += 2.0 * double(pos + t + 1) * double(kv_heads * hd) * element;
  report(state, bytes, since(t0));
}

void host_bandwidth(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(host());
    benchmark::DoNotOptimize(host_one_thread());
  }
  state.counters["read_GB/s"] = host().read_gbps;
  state.counters["memcpy_GB/s"] = host().memcpy_gbps;
  state.counters["read_1t_GB/s"] = host_one_thread().read_gbps;
  state.counters["memcpy_1t_GB/s"] = host_one_thread().memcpy_gbps;
  state.counters["threads"] = pool().size();
}

void pool_dispatch(benchmark::State& state) {
  const uint64_t n = pool().size();
  std::atomic<uint64_t> sum = 0;
  for (auto _ : state) pool().parallel_for(n, 1, [&](uint64_t b, uint64_t e) { sum += e - b; });
  state.counters["threads"] = pool().size();
}

// args: n tokens, fused 0/1. The seven INT4 x INT8 products of SmolLM2-135M's 30 layers (hidden
// 576, q 576, k and v 192, MLP 1536), a layer per iteration over the 30 layers' weights (70 MB,
// past the L3 as in decode): unfused as 7 parallel regions per layer (q, k, v, o, gate, up, down
// and a serial SiLU * up), fused as 4 (q/k/v, o, gate/up with the epilogue, down), what the CPU
// forward pass runs. Reports regions per layer and us per layer; the difference over 3 regions
// is the per-region cost at this size.
void smollm2_layer(benchmark::State& state) {
  const uint64_t n = state.range(0), hidden = 576, kv = 192, inter = 1536, layers = 30;
  const bool fused = state.range(1) != 0;
  struct Mat {
    uint64_t rows, cols;
    std::vector<uint8_t> q;
    std::vector<uint16_t> scales, mins;
    Int4View view() const { return {q.data(), scales.data(), mins.data(), rows, cols}; }
  };
  std::mt19937 rng(7);
  auto mat = [&](uint64_t rows, uint64_t cols) {
    const uint64_t blocks = int4_blocks_per_row(cols);
    Mat m{rows, cols, std::vector<uint8_t>(rows * blocks * kBlockBytes), {}, {}};
    for (auto& b : m.q) b = uint8_t(rng());
    m.scales.assign(rows * blocks, 0x2000);  // f16 0.0078
    m.mins.assign(rows * blocks, 0xa000);    // f16 -0.0078
    return m;
  };
  std::vector<std::array<Mat, 7>> w;  // [layers] q k v o gate up down
  for (uint64_t l = 0; l < layers; ++l)
    w.push_back({mat(hidden, hidden), mat(kv, hidden), mat(kv, hidden), mat(hidden, hidden),
                 mat(inter, hidden), mat(inter, hidden), mat(hidden, inter)});
  std::vector<float> x(n * hidden, 0.25f), q(n * hidden), k(n * kv), v(n * kv), o(n * hidden);
  std::vector<float> g(n * inter), u(n * inter);
  const KernelIsa isa = best_kernel_isa();
  host();
  uint64_t l = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const std::array<Mat, 7>& m = w[l];
    if (fused) {
      const FusedPart qkv[3] = {{.q4 = m[0].view(), .q8 = {}, .y = q.data()},
                                {.q4 = m[1].view(), .q8 = {}, .y = k.data()},
                                {.q4 = m[2].view(), .q8 = {}, .y = v.data()}};
      matmul_q8_fused_cpu(pool(), qkv, 3, x.data(), n, isa);
    } else {
      matmul_int4_q8_cpu(pool(), m[0].view(), x.data(), n, q.data(), isa);
      matmul_int4_q8_cpu(pool(), m[1].view(), x.data(), n, k.data(), isa);
      matmul_int4_q8_cpu(pool(), m[2].view(), x.data(), n, v.data(), isa);
    }
    matmul_int4_q8_cpu(pool(), m[3].view(), q.data(), n, o.data(), isa);
    if (fused) {
      matmul_int4_q8_gate_up_cpu(pool(), m[4].view(), m[5].view(), x.data(), n, g.data(), u.data(),
                                 g.data(), isa);
    } else {
      matmul_int4_q8_cpu(pool(), m[4].view(), x.data(), n, g.data(), isa);
      matmul_int4_q8_cpu(pool(), m[5].view(), x.data(), n, u.data(), isa);
      silu_mul_cpu(g.data(), u.data(), n * inter, g.data());
    }
    matmul_int4_q8_cpu(pool(), m[6].view(), g.data(), n, o.data(), isa);
    l = (l + 1) % layers;
  }
  const double seconds = since(t0), per_layer = seconds / double(state.iterations());
  state.counters["regions"] = fused ? 4 : 7;
  state.counters["us_per_layer"] = per_layer * 1e6;
  state.counters["tokens/s_30_layers"] = double(n) / (per_layer * double(layers));
  state.counters["threads"] = pool().size();
}

BENCHMARK(host_bandwidth)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(pool_dispatch)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(int4)
    ->ArgNames({"rows", "cols", "n", "asym", "q8"})
    ->ArgsProduct({{4096}, {4096}, {1, 64}, {1}, {0, 1, 2}})
    ->Args({4096, 4096, 1, 0, 1})
    ->Args({11008, 4096, 1, 1, 1})
    ->Args({4096, 11008, 1, 1, 1})
    // SmolLM2-135M's MLP up projection, decode and a 128-token prompt
    ->ArgsProduct({{1536}, {576}, {1, 128}, {1}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(int8)
    ->ArgNames({"rows", "cols", "n", "q8"})
    // SmolLM2's tied lm_head (49,152 x 576) and a slice of Qwen2-32B's (152,064 x 5,120)
    ->ArgsProduct({{49152}, {576}, {1}, {0, 1, 2}})
    ->ArgsProduct({{16384}, {5120}, {1, 8}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(smollm2_layer)
    ->ArgNames({"n", "fused"})
    ->ArgsProduct({{1, 128}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(attention)
    ->ArgNames({"ctx", "n", "f16"})
    ->Args({2048, 1, 0})
    ->Args({2048, 1, 1})
    ->Args({8192, 1, 0})
    ->Args({8192, 1, 1})
    ->Args({512, 64, 0})
    ->Args({512, 64, 1})
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
