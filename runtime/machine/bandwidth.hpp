// Host memory bandwidths measured on the machine itself, for the performance model of
// `ferry bench` and the benchmarks: decode at batch 1 reads every weight once per token, so the
// read bandwidth of the cores is its bound on the CPU backend.
#pragma once
#include <cstdint>

#include "kernels/cpu_pool.hpp"

namespace ferry {

struct HostBandwidth {
  double read_gbps = 0;    // sum over a buffer far larger than the caches, all pool threads
  double memcpy_gbps = 0;  // bytes copied per second (each read once and written once), all
                           // pool threads
};

// Best of `repeats` passes over buffers of `bytes` (256 MB or more keeps the last-level cache
// out of the figure). Allocates and touches 2 x bytes.
HostBandwidth measure_host_bandwidth(CpuPool& pool, uint64_t bytes = 512ull << 20, int repeats = 3);

}  // namespace ferry
