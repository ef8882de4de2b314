// INT4 quantization and CPU dequantization throughput on one 4096 x 4096 weight (a 7-8B model's
// attention projection). bytes_per_second counts the weight in bf16, 2 bytes per element, the
// size of the checkpoint being converted: an 8 GB checkpoint takes 8 GB / (this rate) per core.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/dequant.hpp"
#include "quantizer/int4_quantize.hpp"

namespace ferry {
namespace {

constexpr uint64_t kRows = 4096, kCols = 4096;

// Gaussian weights (std 0.02) with 0.2% outliers at 8x, like a trained linear layer.
std::vector<float> make_weights() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> w(kRows * kCols);
  for (float& x : w) {
    x = normal(rng);
    if (u(rng) < 0.002f) x *= 8.0f;
  }
  return w;
}

struct Quantized {
  std::vector<uint8_t> q;        // [rows, blocks * 64]
  std::vector<uint16_t> scales;  // [rows, blocks]
  std::vector<uint16_t> mins;    // [rows, blocks]
  explicit Quantized(uint64_t rows, uint64_t cols)
      : q(rows * int4_blocks_per_row(cols) * kBlockBytes),
        scales(rows * int4_blocks_per_row(cols)),
        mins(rows * int4_blocks_per_row(cols)) {}
};

void set_rate(benchmark::State& state) {
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kRows * kCols * 2));
}

void bm_quantize(benchmark::State& state, Scheme scheme) {
  const std::vector<float> w = make_weights();
  Quantized out(kRows, kCols);
  double rms = 0;
  for (auto _ : state) {
    const QuantError e = quantize_int4(w.data(), kRows, kCols, scheme, out.q.data(),
                                       out.scales.data(), out.mins.data());
    rms = e.relative_rms();
    benchmark::DoNotOptimize(out.q.data());
  }
  set_rate(state);
  state.counters["rel_rms"] = rms;
}

void bm_dequant_bf16_cpu(benchmark::State& state, Scheme scheme) {
  const std::vector<float> w = make_weights();
  Quantized in(kRows, kCols);
  quantize_int4(w.data(), kRows, kCols, scheme, in.q.data(), in.scales.data(), in.mins.data());
  const uint16_t* mins = scheme_has_mins(scheme) ? in.mins.data() : nullptr;
  std::vector<uint16_t> out(kRows * kCols);  // [rows, cols] bf16
  for (auto _ : state) {
    dequant_int4_bf16_cpu({in.q.data(), in.scales.data(), mins, kRows, kCols}, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_rate(state);
}

BENCHMARK_CAPTURE(bm_quantize, sym, Scheme::sym)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_quantize, sym_clip, Scheme::sym_clip)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_quantize, asym, Scheme::asym)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_quantize, asym_clip, Scheme::asym_clip)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_dequant_bf16_cpu, sym, Scheme::sym)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(bm_dequant_bf16_cpu, asym, Scheme::asym)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace ferry

BENCHMARK_MAIN();
