// The CUDA kernels of decode and prefill on the GPU they run on, beside the card's HBM bandwidth
// measured in the same run (a device-to-device copy, read + write counted): decode's INT4 GEMV
// and attention only read (weights, the KV cache), so that copy rate is their bound and
// frac_of_hbm is how close they come; prefill's dequantization + cuBLASLt GEMM is bound by
// arithmetic instead and reports TFLOP/s. Shapes are Qwen2-32B's (hidden 5120, intermediate
// 27648, 40 heads, 8 kv heads, head_dim 128, vocab 152064). Each timed iteration runs the kernel
// over enough copies of its operands to pass the L2 (50 MB on an H200) several times, back to
// back on one stream as decode issues them, timed with CUDA events.
//   bench_gpu_kernels        (every benchmark skips where no GPU is present)
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <vector>

#include "cache/schedule.hpp"
#include "format/int4.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/cuda_memory.hpp"
#include "kernels/cuda_timer.hpp"
#include "kernels/dequant.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemv_fused.hpp"
#include "kernels/matmul.hpp"
#include "kernels/spin.hpp"
#include "runtime/machine/cuda_device.hpp"

namespace {

using namespace ferry;

constexpr uint64_t kWorkingSet = 512ull << 20;  // 10x the L2 of an H200

bool have_gpu(benchmark::State& state) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return true;
  state.SkipWithError("no CUDA GPU present");
  return false;
}

double hbm_gbps() {
  static const double gbps = measure_d2d_gbps(1ull << 30);
  return gbps;
}

// One device allocation filled with a byte pattern (the kernels' timing does not depend on the
// values; 0x22 gives f16 scales of 0.0067 and small finite products).
// n bytes of device memory (held as everywhere, kernels/cuda_memory.hpp), filled with `fill`,
// viewed as any type at a byte offset.
struct DeviceBytes {
  explicit DeviceBytes(uint64_t n, int fill = 0x22) : bytes(n ? n : 1, "a benchmark buffer") {
    CUDA_CHECK(cudaMemset(bytes.get(), fill, n));
  }
  template <class T>
  T* as(uint64_t byte_offset = 0) const {
    return reinterpret_cast<T*>(bytes.get() + byte_offset);
  }
  DeviceArray<uint8_t> bytes;
};

// Times `pass` (which enqueues work on `stream`) with events, as the benchmark's manual time;
// returns the seconds of all iterations.
template <class Fn>
double timed(benchmark::State& state, cudaStream_t stream, Fn pass) {
  const CudaTimer timer;
  pass();  // warm-up: module load, cuBLASLt plans
  CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0;
  for (auto _ : state) {
    CUDA_CHECK(cudaEventRecord(timer.start, stream));
    pass();
    CUDA_CHECK(cudaEventRecord(timer.stop, stream));
    CUDA_CHECK(cudaEventSynchronize(timer.stop));
    state.SetIterationTime(timer.seconds());
    total += timer.seconds();
  }
  return total;
}

// Bytes read per second over the event-timed seconds, and as a fraction of the HBM bound.
void report_bytes(benchmark::State& state, double bytes_per_iteration, double seconds) {
  const double gbps =
      seconds > 0 ? bytes_per_iteration * double(state.iterations()) / seconds / 1e9 : 0;
  state.counters["GB/s"] = gbps;
  state.counters["hbm_GB/s"] = hbm_gbps();
  state.counters["frac_of_hbm"] = gbps / hbm_gbps();
}

// args: rows, cols, n, asym, q8 (1: activations quantized to INT8 in the kernel, GemvX::q8, as
// the forward pass runs it by default; 0: fp32), full (1: one CTA per row group, kGemvGridFull,
// each staging x; 0: the default grid, on the one-token deep path as many CTAs as the card holds
// at once, each staging x once and looping over row groups). Weight bytes as the cache holds
// them: codes, scales, mins.
void gemv_int4(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const bool asym = state.range(3) != 0, q8 = state.range(4) != 0;
  const uint32_t max_ctas = state.range(5) != 0 ? kGemvGridFull : kGemvGridResident;
  const uint64_t blocks = int4_blocks_per_row(cols);
  const uint64_t q_bytes = rows * blocks * kBlockBytes, s_bytes = rows * blocks * 2;
  // Each copy starts as a cache entry does (256-byte aligned), as the kernel sees it in decode.
  const uint64_t one = entry_aligned(q_bytes + s_bytes * (asym ? 2 : 1));
  const uint64_t copies = (kWorkingSet + one - 1) / one;
  DeviceBytes w(copies * one), x(n * cols * sizeof(float), 0), y(n * rows * sizeof(float));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const double seconds = timed(state, stream, [&] {
    for (uint64_t c = 0; c < copies; ++c) {
      const uint64_t at = c * one;
      const Int4View v{w.as<uint8_t>(at), w.as<uint16_t>(at + q_bytes),
                       asym ? w.as<uint16_t>(at + q_bytes + s_bytes) : nullptr, rows, cols};
      const GemvOut out{v, y.as<float>(), nullptr};
      gemv_int4_fused_cuda(&out, 1, x.as<float>(), n, GemvStore::set, q8 ? GemvX::q8 : GemvX::f32,
                           stream, max_ctas);
    }
  });
  report_bytes(state, double(copies * one), seconds);
  cudaStreamDestroy(stream);
}

// args: context length, f16 (1: the default f16 KV cache, 0: f32). Decode (one query) of
// Qwen2-32B's attention over one layer's KV cache.
void attention_decode(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const uint64_t ctx = state.range(0), heads = 40, kv_heads = 8, hd = 128, pos = ctx - 1;
  const bool f16 = state.range(1) != 0;
  const uint64_t kv_bytes = ctx * kv_heads * hd * (f16 ? 2 : 4);
  const uint64_t copies = (kWorkingSet + 2 * kv_bytes - 1) / (2 * kv_bytes);
  DeviceBytes k(copies * kv_bytes, 0), v(copies * kv_bytes, 0), q(heads * hd * sizeof(float), 0);
  DeviceBytes partials(attention_scratch_floats(1, ctx, heads, hd) * sizeof(float), 0);
  DeviceBytes out(heads * hd * sizeof(float));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const double seconds = timed(state, stream, [&] {
    for (uint64_t c = 0; c < copies; ++c)
      if (f16)
        attention_cuda(q.as<float>(), k.as<uint16_t>(c * kv_bytes), v.as<uint16_t>(c * kv_bytes), 1,
                       pos, heads, kv_heads, hd, partials.as<float>(), out.as<float>(), stream);
      else
        attention_cuda(q.as<float>(), k.as<float>(c * kv_bytes), v.as<float>(c * kv_bytes), 1, pos,
                       heads, kv_heads, hd, partials.as<float>(), out.as<float>(), stream);
  });
  report_bytes(state, double(copies * 2 * kv_bytes), seconds);
  cudaStreamDestroy(stream);
}

// args: prompt length n, tiled (1: attention_tiled_cuda, 0: the chunked GQA group kernel that
// attention_cuda ran before it). Prefill of a whole n-token prompt through one layer of
// Qwen2-32B's attention (40 heads over 8 kv heads of 128, f16 cache), from position 0.
// TFLOP/s counts the causal half of QK^T and PV (2 x 2 x n^2 / 2 x heads x head_dim); GB/s the
// KV bytes read from L2 or HBM as the kernel's design reads them: each K/V tile once per block of
// Bq queries (tiled), each chunk once per query (chunked).
void attention_prefill(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const uint64_t n = state.range(0), heads = 40, kv_heads = 8, hd = 128;
  const bool tiled = state.range(1) != 0;
  const uint64_t kv_bytes = n * kv_heads * hd * 2;
  DeviceBytes k(kv_bytes, 0), v(kv_bytes, 0), q(n * heads * hd * sizeof(float), 0);
  DeviceBytes partials(attention_scratch_floats(n, n, heads, hd) * sizeof(float), 0);
  DeviceBytes out(n * heads * hd * sizeof(float));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const double seconds = timed(state, stream, [&] {
    if (tiled)
      attention_tiled_cuda(q.as<float>(), k.as<uint16_t>(), v.as<uint16_t>(), n, 0, heads, kv_heads,
                           hd, out.as<float>(), stream);
    else  // the rounds of 64 queries attention_cuda runs below its tiling threshold
      for (uint64_t t0 = 0; t0 < n; t0 += 64)
        attention_cuda(q.as<float>(t0 * heads * hd * 4), k.as<uint16_t>(), v.as<uint16_t>(), 64, t0,
                       heads, kv_heads, hd, partials.as<float>(),
                       out.as<float>(t0 * heads * hd * 4), stream);
  });
  const double flops = 2.0 * 2.0 * double(n) * double(n) / 2 * double(heads * hd);
  const double reads =
      tiled ? double(n) / double(attention_tile_queries(hd, heads / kv_heads)) : double(n);
  const double it = double(state.iterations());
  state.counters["TFLOP/s"] = seconds > 0 ? flops * it / seconds / 1e12 : 0;
  // Each pass reads half the K and V rows on average (causal): kv_bytes.
  state.counters["kv_GB/s"] = seconds > 0 ? reads * double(kv_bytes) * it / seconds / 1e9 : 0;
  cudaStreamDestroy(stream);
}

// args: rows, cols, n. Prefill's product of a batch with an INT4 weight: dequantization to a
// bf16 scratch, then the cuBLASLt GEMM, as runtime/forward_cuda.cpp runs it above 8 tokens.
void prefill_int4(benchmark::State& state) {
  if (!have_gpu(state)) return;
  const uint64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const uint64_t blocks = int4_blocks_per_row(cols);
  const uint64_t q_bytes = rows * blocks * kBlockBytes, s_bytes = rows * blocks * 2;
  DeviceBytes w(q_bytes + 2 * s_bytes), scratch(rows * cols * 2), x(n * cols * sizeof(float), 0);
  DeviceBytes y(n * rows * sizeof(float));
  CublasLt blas(n * cols);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const double seconds = timed(state, stream, [&] {
    dequant_int4_bf16_cuda(
        {w.as<uint8_t>(), w.as<uint16_t>(q_bytes), w.as<uint16_t>(q_bytes + s_bytes), rows, cols},
        scratch.as<uint16_t>(), stream);
    blas.matmul_bf16(scratch.as<uint16_t>(), rows, cols, x.as<float>(), n, y.as<float>(), stream);
  });
  state.counters["TFLOP/s"] =
      seconds > 0 ? 2.0 * double(rows * cols * n) * double(state.iterations()) / seconds / 1e12 : 0;
  cudaStreamDestroy(stream);
}

// The floor under every small kernel: back-to-back launches of a one-thread kernel that returns
// at once (spin_cuda(0)), timed with events as decode issues its kernels. On the first H200 runs
// (a Firecracker VM) a 2.8 MB GEMV took 10.5 us a launch and decode attention over 512 positions
// 21 us, far above their bytes' worth; this says how much of that the launch itself costs.
void launch_floor(benchmark::State& state) {
  if (!have_gpu(state)) return;
  constexpr int kLaunches = 256;
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  const double seconds = timed(state, stream, [&] {
    for (int i = 0; i < kLaunches; ++i) spin_cuda(0, stream);
  });
  const double launches = double(state.iterations()) * kLaunches;
  state.counters["us_per_launch"] = seconds > 0 ? seconds / launches * 1e6 : 0;
  cudaStreamDestroy(stream);
}

BENCHMARK(launch_floor)->UseManualTime()->Unit(benchmark::kMicrosecond);
// Qwen2-32B's shapes, and Qwen2-7B's q+k+v (one launch), o and down; each with fp32 and with
// INT8 activations, side by side, and one token with INT8 activations also on a grid of one CTA
// per row group (full = 1: the grid before CTAs looped), to read what the loop gains, for the
// shapes of the deep path.
void gemv_shapes(benchmark::internal::Benchmark* b) {
  const int64_t shapes[][4] = {
      {5120, 5120, 1, 1},    // q, o
      {1024, 5120, 1, 1},    // k, v
      {27648, 5120, 1, 1},   // gate, up
      {5120, 27648, 1, 1},   // down
      {27648, 5120, 1, 0},   // gate, sym
      {152064, 5120, 1, 1},  // lm_head
      {27648, 5120, 8, 1},   // a batch of 8
      {4608, 3584, 1, 1},    // 7B q+k+v
      {3584, 3584, 1, 1},    // 7B o
      {3584, 18944, 1, 1},   // 7B down
  };
  for (const auto& s : shapes) {
    for (int64_t q8 : {0, 1}) b->Args({s[0], s[1], s[2], s[3], q8, 0});
    // Only where the one-token deep path runs (R <= 2: gemv_int4_kernel.cuh's launch_rows); the
    // chunked path (R = 4: gate/up alone, lm_head) keeps one CTA a group either way.
    if (s[2] == 1 && gemv_rows_per_warp(uint64_t(s[0])) <= 2)
      b->Args({s[0], s[1], s[2], s[3], 1, 1});
  }
}
BENCHMARK(gemv_int4)
    ->ArgNames({"rows", "cols", "n", "asym", "q8", "full"})
    ->Apply(gemv_shapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(attention_decode)
    ->ArgNames({"ctx", "f16"})
    ->Args({512, 1})
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Args({32768, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(attention_prefill)
    ->ArgNames({"n", "tiled"})
    ->Args({512, 0})
    ->Args({512, 1})
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(prefill_int4)
    ->ArgNames({"rows", "cols", "n"})
    ->Args({5120, 5120, 64})
    ->Args({27648, 5120, 512})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
