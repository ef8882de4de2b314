// The paging cache's own costs, on the CPU backend (cache/backend_cpu.hpp), apart from the
// kernels: what acquire + release costs per weight use when every entry is resident (the hit
// path: a lock, a state check, the backend's two signals), and the streaming path, where every
// use is an upload, as GB/s of entries filled by the prefetch thread for entry sizes 1 to 64 MB
// (a 7B's k_proj is ~0.3 MB packed, a 32B's gate/up ~75 MB). On a GPU the same fills are
// cudaMemcpyAsync calls; `ferry bench --device cuda` measures those by chunk size.
#include <benchmark/benchmark.h>

#include <cstring>

#include "cache/backend_cpu.hpp"
#include "cache/device_cache.hpp"
#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cache/backend_cuda.hpp"
#include "kernels/cuda_check.hpp"
#endif

namespace ferry {
namespace {

// A decoder-like schedule: `layers` x 7 weights of `bytes` each.
Schedule uniform_schedule(uint32_t layers, uint64_t bytes) {
  Schedule s;
  for (uint32_t i = 0; i < layers * 7; ++i) s.weights.push_back({bytes, i / 7, "w"});
  return s;
}

// Every weight resident (budget all): the per-use overhead of the hit path.
void BM_AcquireReleaseHit(benchmark::State& state) {
  const auto policy = state.range(0) ? CachePolicy::pin : CachePolicy::lru;
  const Schedule s = uniform_schedule(8, 4096);
  CpuBackend backend;
  DeviceCache cache(backend, s,
                    {.budget = s.whole_bytes(), .policy = policy, .lookahead = 2, .on_evict = {}},
                    [](uint32_t, uint8_t* dst) { std::memset(dst, 1, 64); });
  uint32_t id = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(cache.acquire(id));
    cache.release(id);
    id = (id + 1) % uint32_t(s.size());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(policy == CachePolicy::pin ? "pin" : "lru");
}
BENCHMARK(BM_AcquireReleaseHit)->Arg(0)->Arg(1);

// A budget of a quarter of the model under lru: every use streams its entry (0% hits), filled
// by the prefetch thread (a memcpy from the host store) while the compute holds the previous.
void BM_StreamedFills(benchmark::State& state) {
  const uint64_t bytes = uint64_t(state.range(0)) << 20;
  const Schedule s = uniform_schedule(2, bytes);
  std::vector<uint8_t> store(bytes, 0x5a);
  CpuBackend backend;
  DeviceCache cache(
      backend, s,
      {.budget = s.whole_bytes() / 4, .policy = CachePolicy::lru, .lookahead = 2, .on_evict = {}},
      [&](uint32_t, uint8_t* dst) { backend.copy(dst, store.data(), bytes); });
  uint32_t id = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(cache.acquire(id));
    cache.release(id);
    id = (id + 1) % uint32_t(s.size());
  }
  const CacheStats st = cache.stats();
  state.SetBytesProcessed(int64_t(st.uploaded_bytes));
  state.counters["hit_rate"] = st.acquires ? double(st.hits) / double(st.acquires) : 0;
  state.counters["wait_s"] = st.wait_seconds;
}
BENCHMARK(BM_StreamedFills)->RangeMultiplier(4)->Range(1, 64)->UseRealTime();

#ifdef FERRY_HAVE_CUDA
// The CUDA upload path as the prefetcher drives it: CudaBackend::copy (cudaMemcpyAsync on the
// copy stream) from the host store into the arena, one call per chunk of 1 to 64 MB, 256 MB per
// iteration; the store pinned (argument 1) or pageable, through the bounce ring (0). Skipped
// without a GPU.
void BM_CudaUploadByChunk(benchmark::State& state) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    state.SkipWithError("no CUDA GPU present");
    return;
  }
  const uint64_t chunk = uint64_t(state.range(0)) << 20, total = 256ull << 20;
  cudaStream_t compute = nullptr;
  CUDA_CHECK(cudaStreamCreate(&compute));
  {
    CudaBackend b(0, compute, 0, total + (64ull << 20), 0, state.range(1) != 0);
    Memory host = b.allocate_host(total, "the benchmark's store");
    Memory device = b.allocate_device(total, "the benchmark's arena");
    for (auto _ : state) {
      for (uint64_t at = 0; at < total; at += chunk)
        b.copy(device.get() + at, host.get() + at, chunk);
      CUDA_CHECK(cudaStreamSynchronize(b.copy_stream()));
    }
    state.SetBytesProcessed(int64_t(state.iterations() * total));
    state.SetLabel(b.host_fallback_used() ? "pageable, bounce ring" : "pinned");
  }
  cudaStreamDestroy(compute);
}
BENCHMARK(BM_CudaUploadByChunk)
    ->ArgsProduct({{1, 4, 16, 64}, {1, 0}})
    ->ArgNames({"MB", "pinned"})
    ->UseRealTime();
#endif

}  // namespace
}  // namespace ferry

BENCHMARK_MAIN();
