#include "runtime/machine/bandwidth.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>

namespace ferry {
namespace {

template <class F>
double best_seconds(int repeats, F&& f) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

HostBandwidth measure_host_bandwidth(CpuPool& pool, uint64_t bytes, int repeats) {
  const uint64_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> a(new uint64_t[n]), b(new uint64_t[n]);
  pool.parallel_for(n, 1 << 16, [&](uint64_t s, uint64_t e) {  // fault the pages in
    for (uint64_t i = s; i < e; ++i) a[i] = i, b[i] = 0;
  });
  std::atomic<uint64_t> sink = 0;  // keeps the sums alive
  HostBandwidth bw;
  bw.read_gbps = double(bytes) / 1e9 / best_seconds(repeats, [&] {
                   pool.parallel_for(n, 1 << 16, [&](uint64_t s, uint64_t e) {
                     uint64_t acc0 = 0, acc1 = 0, acc2 = 0,
                              acc3 = 0;  // four chains: loads, not adds, bind
                     uint64_t i = s;
                     for (; i + 4 <= e; i += 4)
                       acc0 += a[i], acc1 += a[i + 1], acc2 += a[i + 2], acc3 += a[i + 3];
                     for (; i < e; ++i) acc0 += a[i];
                     sink += acc0 + acc1 + acc2 + acc3;
                   });
                 });
  bw.memcpy_gbps = double(bytes) / 1e9 / best_seconds(repeats, [&] {
                     pool.parallel_for(n, 1 << 16, [&](uint64_t s, uint64_t e) {
                       std::memcpy(b.get() + s, a.get() + s, (e - s) * sizeof(uint64_t));
                     });
                   });
  return bw;
}

}  // namespace ferry
